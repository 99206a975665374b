"""funcnn.layers: every layer's hand-written backward pass against jax.grad, on NumPy and
jax, under jit and vmap; forward values against lax; BatchNorm's state; max-pool ties;
the errors; check_layer and the bugs it must catch; the layers' blocks of
docs/backprop.md."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from test_docs import BUGS, FORMULAS, assert_close, rel_error, run
from test_testing_api import NO_JAX, assert_prints_ok_without_jax

import funcnn
from funcnn.activations import ACTIVATIONS
from funcnn.activations import Activation as ActivationPair
from funcnn.layers import (
    Activation,
    AvgPool2D,
    BatchNorm,
    BatchNormState,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    MaxPool2D,
    Residual,
    Serial,
    ShapeError,
)
from funcnn.layers._base import broadcast_last
from funcnn.layers._windows import fold, windows
from funcnn.testing import GradientMismatch, check_layer
from funcnn.tree import tree_leaves

CUBE = ActivationPair("cube", lambda z: z**3, lambda z, a: 3 * z**2)

EVERY_LAYER = Serial([
    Conv2D(4, 3, padding="same", bias=False), BatchNorm(), Activation("relu"), MaxPool2D(2),
    Conv2D(6, 3, stride=2, padding="same"),
    Residual([Conv2D(6, 3, padding="same"), LayerNorm(), Activation("gelu")]),
    AvgPool2D(2), Flatten(), Dropout(0.25), Dense(8), Activation(CUBE), Dense(3, bias=False),
])  # (16, 16, 2) -> (16, 16, 4) -> (8, 8, 4) -> (4, 4, 6) -> (2, 2, 6) -> (24,) -> (3,)

CASES = [  # (layer, in_shape, train)
    (Dense(5), (4,), True),
    (Dense(3, bias=False), (6,), True),
    *[(Activation(name), (3, 4), True) for name in ACTIVATIONS],
    (Activation(CUBE), (5,), True),
    (Dropout(0.4), (5, 3), True),
    (Dropout(0.4), (5, 3), False),
    (Conv2D(4, 3), (7, 6, 2), True),
    (Conv2D(3, (3, 2), stride=2, padding="same"), (7, 8, 3), True),
    (Conv2D(5, 3, stride=(2, 1), bias=False), (9, 7, 2), True),
    (Conv2D(2, 5, padding="same"), (4, 3, 1), True),            # kernel wider than the image
    (Conv2D(3, 2, stride=3, padding="same"), (8, 7, 2), True),
    (Conv2D(2, 1), (3, 3, 4), True),
    (MaxPool2D(2), (6, 4, 3), True),
    (MaxPool2D(3, 2), (7, 7, 2), True),
    (MaxPool2D((2, 3), (1, 2)), (5, 7, 1), True),
    (MaxPool2D(2, drop_remainder=True), (5, 7, 2), True),
    (AvgPool2D(2), (6, 4, 3), True),
    (AvgPool2D(3, 2), (7, 7, 2), True),
    (AvgPool2D((1, 3), (1, 1)), (2, 5, 2), True),
    (Flatten(), (3, 4, 2), True),
    (LayerNorm(), (6,), True),
    (LayerNorm(eps=1e-3), (4, 4, 3), True),
    (BatchNorm(), (5,), True),
    (BatchNorm(momentum=0.5), (4, 4, 3), True),
    (BatchNorm(), (4, 4, 3), False),
    (Residual([Dense(4), Activation("tanh")]), (4,), True),
    (Residual([Conv2D(3, 3, padding="same"), Activation("relu"), Conv2D(3, 1)]), (5, 4, 3), True),
    (Serial([Dense(6), Activation("elu"), Dropout(0.5), Dense(2)]), (3,), True),
    (EVERY_LAYER, (16, 16, 2), True),
    (EVERY_LAYER, (16, 16, 2), False),
]


def case_id(case) -> str:
    layer, shape, train = case
    name = type(layer).__name__ if isinstance(layer, Serial) else repr(layer)
    name = re.sub(r" at 0x[0-9a-f]+", "", name)  # the same id in every process (pytest -n)
    return f"{name}-{shape}-{'train' if train else 'eval'}"


def slow_if_big(case):
    """The net of every layer compiles for seconds: marked slow (deselect with -m 'not slow')."""
    marks = [pytest.mark.slow] if case[0] is EVERY_LAYER else []
    return pytest.param(case, id=case_id(case), marks=marks)


def draw(rng, shape, backend="numpy", dtype="float64"):
    return funcnn.to_backend(rng.normal(size=shape), backend, dtype=dtype)


def moved(tree, rng):
    """Params with every leaf moved off its initial value (no scale at 1, no bias at 0)."""
    return jax.tree_util.tree_map(lambda v: v + 0.5 * rng.normal(size=v.shape), tree)


# ---------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("case", [slow_if_big(c) for c in CASES])
def test_backward_equals_jax_grad(case, backend):
    layer, in_shape, train = case
    reports = check_layer(layer, in_shape, backend=backend, train=train, key=len(in_shape))
    n_params = len(tree_leaves(layer.init(0, in_shape, "float64")[0]))
    assert len(reports) == 2 * (n_params + 1)  # every leaf and x, at a drawn and a tied input
    assert all(r.rel_error <= 1e-7 or r.max_abs_error < 1e-9 for r in reports)


@pytest.mark.parametrize("layer, in_shape", [
    (Conv2D(3, 3, stride=2, padding="same"), (6, 5, 2)), (MaxPool2D(2), (4, 4, 2)),
    (BatchNorm(), (3, 3, 2)), pytest.param(EVERY_LAYER, (16, 16, 2), marks=pytest.mark.slow),
], ids=lambda v: type(v).__name__ if not isinstance(v, tuple) else str(v))
def test_backward_equals_finite_differences_without_jax(layer, in_shape):
    reports = check_layer(layer, in_shape, reference="finite_differences", max_per_leaf=12)
    assert reports and all(r.rel_error <= 1e-5 or r.max_abs_error < 1e-7 for r in reports)


def run_layer(layer, params, state, x, dy, *, train=True, key=7):
    y, cache, new_state = layer.forward(params, state, x, train=train, key=key)
    grads, dx = layer.backward(params, cache, dy)
    return y, grads, dx, new_state


@pytest.mark.slow
def test_jit_gives_numpys_numbers_and_compiles_once_for_equal_specs():
    rng = np.random.default_rng(1)
    params, state, out = EVERY_LAYER.init(3, (16, 16, 2), "float64")
    x, dy = rng.normal(size=(5, 16, 16, 2)), rng.normal(size=(5, *out))
    on_numpy = run_layer(EVERY_LAYER, params, state, x, dy)
    step = jax.jit(run_layer, static_argnums=0)
    on_jax = funcnn.to_backend((params, state, x, dy), "jax")
    jitted = step(EVERY_LAYER, *on_jax)
    for got, want in zip(tree_leaves(jitted), tree_leaves(on_numpy), strict=True):
        assert_close(got, want, "jitted jax vs NumPy", rtol=1e-12)
    twin = Serial(list(EVERY_LAYER.layers))  # an equal spec, another object
    assert twin == EVERY_LAYER and hash(twin) == hash(EVERY_LAYER)
    step(twin, *on_jax)
    assert step._cache_size() == 1


@pytest.mark.parametrize("layer, in_shape", [
    (Dense(3), (4,)), (Conv2D(3, 3, stride=2, padding="same"), (5, 6, 2)),
    (MaxPool2D(2), (4, 4, 2)), (AvgPool2D(2), (4, 4, 2)), (LayerNorm(), (3, 3, 4)),
    (BatchNorm(), (3, 3, 2)), (Residual([Conv2D(2, 3, padding="same"), Activation("tanh")]),
                               (4, 4, 2)),
], ids=lambda v: type(v).__name__ if not isinstance(v, tuple) else str(v))
def test_vmap_over_examples_gives_per_example_gradients(layer, in_shape):
    """Without batch statistics (BatchNorm in evaluation) every layer's gradients are sums
    of per-example ones: jax.vmap of the hand-written pass over single examples sums to
    the batch's."""
    rng = np.random.default_rng(2)
    params, state, out = layer.init(4, in_shape, "float64", backend="jax")
    params, state = moved(params, rng), jax.tree_util.tree_map(lambda v: v + 0.5, state)
    x, dy = draw(rng, (6, *in_shape), "jax"), draw(rng, (6, *out), "jax")

    def one(xi, dyi):
        _, grads, dx, _ = run_layer(layer, params, state, xi[None], dyi[None], train=False)
        return grads, dx[0]

    each, dx_each = jax.jit(jax.vmap(one))(x, dy)
    on_numpy = funcnn.to_backend((params, state, x, dy), "numpy")
    _, grads, dx, _ = run_layer(layer, *on_numpy, train=False)
    assert_close(dx_each, dx, "per-example dx vs the batch's")
    for e, g in zip(tree_leaves(each), tree_leaves(grads), strict=True):
        assert_close(e.sum(axis=0), g, "sum of per-example grads vs the batch's")


# ---------------------------------------------------------------------------- forward values


@pytest.mark.parametrize("conv, in_shape", [
    (Conv2D(4, 3), (7, 6, 2)), (Conv2D(3, (3, 2), stride=2, padding="same"), (7, 8, 3)),
    (Conv2D(5, (2, 3), stride=(2, 1)), (9, 7, 2)), (Conv2D(2, 4, padding="same"), (5, 6, 1)),
    (Conv2D(3, 2, stride=3, padding="same"), (8, 7, 2)),
], ids=repr)
def test_conv_forward_is_lax_conv_general_dilated(conv, in_shape, backend):
    rng = np.random.default_rng(3)
    params, state, out = conv.init(5, in_shape, "float64", backend=backend)
    params = moved(params, rng)
    x = draw(rng, (3, *in_shape), backend)
    y = conv.forward(params, state, x, train=False)[0]
    ref = lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(params.W), conv.stride,
                                   conv.padding.upper(), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = ref + jnp.asarray(params.b).reshape(1, 1, 1, -1)
    assert y.shape == (3, *out) == ref.shape
    assert_close(y, ref, "patch-form conv vs lax.conv_general_dilated", rtol=1e-13)


@pytest.mark.parametrize("window, stride, in_shape", [
    (2, None, (6, 4, 3)), (3, 2, (7, 7, 2)), ((2, 3), (1, 2), (5, 7, 1)), (1, None, (3, 2, 2)),
])
def test_pooling_forward_is_lax_reduce_window(window, stride, in_shape, backend):
    rng = np.random.default_rng(4)
    x = draw(rng, (3, *in_shape), backend)
    for pool, op, init in ((MaxPool2D(window, stride), lax.max, -jnp.inf),
                           (AvgPool2D(window, stride), lax.add, 0.0)):
        dims, strides = (1, *pool.window, 1), (1, *pool.stride, 1)
        ref = lax.reduce_window(jnp.asarray(x), init, op, dims, strides, "VALID")
        if isinstance(pool, AvgPool2D):
            ref = ref / (pool.window[0] * pool.window[1])
        y = pool.forward((), (), x, train=False)[0]
        assert_close(y, ref, f"{pool!r} vs lax.reduce_window", rtol=1e-15)


# ---------------------------------------------------------------------------- max-pool ties


def test_max_pool_gives_a_constant_images_gradient_to_each_windows_first_element(backend):
    rng = np.random.default_rng(5)
    x = funcnn.to_backend(np.full((2, 6, 4, 3), 0.7), backend)
    dy = draw(rng, (2, 3, 2, 3), backend)
    y, cache, _ = MaxPool2D(2).forward((), (), x, train=True)
    dx = np.asarray(MaxPool2D(2).backward((), cache, dy)[1])
    want = np.zeros((2, 6, 4, 3))
    want[:, ::2, ::2, :] = np.asarray(dy)  # the top-left element of every window
    assert_close(y, np.full((2, 3, 2, 3), 0.7), "the max of a constant")
    assert_close(dx, want, "all of each window's gradient to its first element", rtol=0.0)
    check_layer(MaxPool2D(2), (6, 4, 3), backend=backend, x=np.asarray(x))


def test_max_pool_routes_ties_as_jax_grad_of_lax_reduce_window(backend):
    rng = np.random.default_rng(6)
    x = rng.integers(0, 3, size=(3, 7, 7, 2)).astype(np.float64)  # ties in most windows
    dy = rng.normal(size=(3, 3, 3, 2))
    pool = MaxPool2D(3, 2)

    def reduce_max(xj):
        y = lax.reduce_window(xj, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
        return jnp.sum(jnp.asarray(dy) * y)

    ref = jax.grad(reduce_max)(jnp.asarray(x))
    xb, dyb = funcnn.to_backend((x, dy), backend)
    dx = pool.backward((), pool.forward((), (), xb, train=True)[1], dyb)[1]
    assert_close(dx, ref, "max-pool dx vs jax.grad of lax.reduce_window", rtol=0.0)


# ---------------------------------------------------------------------------- dtypes and keys


FLOAT32_CASES = list({type(c[0]): c for c in reversed(CASES) if c[2]}.values())  # one a type


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=case_id)
def test_float32_stays_float32(case, backend):
    layer, in_shape, _ = case
    params, state, out = layer.init(1, in_shape, backend=backend)  # float32 by default
    assert all(leaf.dtype == np.float32 for leaf in tree_leaves((params, state)))
    rng = np.random.default_rng(7)
    x, dy = draw(rng, (3, *in_shape), backend, "float32"), draw(rng, (3, *out), backend,
                                                                  "float32")
    y, grads, dx, new_state = run_layer(layer, params, state, x, dy)
    for leaf in tree_leaves((y, grads, dx, new_state)):
        assert leaf.dtype == np.float32, f"{layer!r}: a {leaf.dtype} leaf"
    assert dx.shape == x.shape and y.shape == (3, *out)


@pytest.mark.slow
def test_float32_check_layer_passes_at_float32_tolerance(backend):
    reports = check_layer(EVERY_LAYER, (16, 16, 2), backend=backend, dtype="float32")
    assert max(r.rel_error for r in reports) < 1e-4


@pytest.mark.slow
def test_one_key_gives_the_same_params_and_dropout_on_both_backends():
    rng = np.random.default_rng(8)
    on = {b: EVERY_LAYER.init(11, (16, 16, 2), "float64", backend=b) for b in ("numpy", "jax")}
    for a, b in zip(tree_leaves(on["numpy"]), tree_leaves(on["jax"]), strict=True):
        assert_close(a, b, "numpy vs jax init", rtol=1e-14)
    x = rng.normal(size=(4, 5, 3))
    ys = [Dropout(0.5).forward((), (), funcnn.to_backend(x, b), train=True, key=9)[0]
          for b in ("numpy", "jax")]
    assert_close(ys[0], ys[1], "the same dropout mask on both backends", rtol=0.0)
    kept = np.asarray(ys[0]) != 0
    assert 0 < kept.mean() < 1 and np.allclose(np.asarray(ys[0])[kept], 2 * x[kept])


# ---------------------------------------------------------------------------- BatchNorm state


def test_batch_norm_train_updates_the_running_statistics_and_eval_uses_them(backend):
    rng = np.random.default_rng(9)
    layer = BatchNorm(momentum=0.8, eps=1e-3)
    params, _, _ = layer.init(0, (3, 4, 2), "float64", backend=backend)
    params = moved(params, rng)
    state = BatchNormState(*funcnn.to_backend((rng.normal(size=2), rng.uniform(1, 2, 2)),
                                              backend))
    x = draw(rng, (5, 3, 4, 2), backend) * 3 + 1
    xn = np.asarray(x)
    mean, var = xn.mean(axis=(0, 1, 2)), xn.var(axis=(0, 1, 2))  # the biased variance
    y, _, new = layer.forward(params, state, x, train=True)
    assert_close(new.mean, 0.8 * np.asarray(state.mean) + 0.2 * mean, "running mean")
    assert_close(new.var, 0.8 * np.asarray(state.var) + 0.2 * var, "running var")
    scale, shift = (np.asarray(v) for v in params)
    assert_close(y, scale * (xn - mean) / np.sqrt(var + 1e-3) + shift, "train: batch stats")
    y_eval, _, same = layer.forward(params, new, x, train=False)
    want = scale * (xn - np.asarray(new.mean)) / np.sqrt(np.asarray(new.var) + 1e-3) + shift
    assert_close(y_eval, want, "eval: running stats")
    assert rel_error(y_eval, y) > 1e-3, "evaluation should differ from training here"
    for a, b in zip(same, new, strict=True):
        assert_close(a, b, "eval leaves the state as it was", rtol=0.0)


def test_serial_threads_each_layers_state():
    rng = np.random.default_rng(10)
    net = Serial([Dense(3), BatchNorm(momentum=0.0), Activation("tanh"), BatchNorm()])
    params, state, _ = net.init(2, (4,), "float64")
    assert state[0] == () and state[2] == () and isinstance(state[1], BatchNormState)
    x = rng.normal(size=(6, 4))
    _, _, new = net.forward(params, state, x, train=True)
    h = x @ np.asarray(params[0].W)  # the first BatchNorm's input (zero bias)
    assert_close(new[1].mean, h.mean(axis=0), "momentum 0: the batch's mean")
    assert_close(new[1].var, h.var(axis=0), "momentum 0: the batch's variance")
    assert new[0] == () and rel_error(new[3].mean, state[3].mean) > 0


# ---------------------------------------------------------------------------- errors


def test_shape_errors_name_the_layer_its_place_and_the_shapes():
    with pytest.raises(ShapeError, match=r"layers\[1\]: Conv2D\(filters=4, kernel_size=\(5, 5\)"
                       r".* on inputs of shape \(m, 4, 4, 4\): the 5x5 kernel is larger than "
                       r"the 4x4 padded input"):
        Serial([Conv2D(4, 3), Conv2D(4, 5)]).init(0, (6, 6, 1))
    with pytest.raises(ShapeError, match=r"layers\[2\]: Dense.*\(m, 4, 4, 2\).*Flatten\(\)"):
        Serial([Conv2D(2, 3), Activation("relu"), Dense(4)]).init(0, (6, 6, 1))
    with pytest.raises(ShapeError, match=r"layers\[0\].layers\[1\]: MaxPool2D.*\(m, 2, 2, 2\): "
                       r"the 4x4 window is larger than the 2x2 input"):
        Serial([Residual([Conv2D(2, 3, padding="same"), MaxPool2D(4)])]).init(0, (2, 2, 2))
    with pytest.raises(ShapeError, match=r"do not tile 5 rows: the last 1 would be in no "
                       r"window.*drop_remainder=True"):
        MaxPool2D(2).init(0, (5, 4, 1))
    assert AvgPool2D(2, drop_remainder=True).init(0, (5, 4, 1))[2] == (2, 2, 1)
    with pytest.raises(ShapeError, match=r"layers\[1\]: Residual.*map \(5,\) to \(3,\)"):
        Serial([Dense(5), Residual([Dense(3)])]).init(0, (2,))


def test_forward_refuses_inputs_that_do_not_fit_the_params():
    rng = np.random.default_rng(11)
    conv = Conv2D(2, 3)
    params, state, _ = conv.init(0, (5, 5, 3), "float64")
    with pytest.raises(ShapeError, match=r"expects 3 input channels \(params.W has shape "
                       r"\(3, 3, 3, 2\)\); got 4"):
        conv.forward(params, state, rng.normal(size=(2, 5, 5, 4)), train=False)
    with pytest.raises(ShapeError, match=r"expects 4-D inputs of shape \(m, H, W, C\)"):
        conv.forward(params, state, rng.normal(size=(5, 5, 3)), train=False)
    with pytest.raises(ShapeError, match="x is float32 but params.W is float64"):
        conv.forward(params, state, rng.normal(size=(2, 5, 5, 3)).astype("float32"), train=False)
    dense_params = Dense(3).init(0, (4,), "float64")[0]
    with pytest.raises(ShapeError, match=r"expects 4 input features .* got 6"):
        Dense(3).forward(dense_params, (), rng.normal(size=(2, 6)), train=False)
    norm_params = LayerNorm().init(0, (4,), "float64")[0]
    with pytest.raises(ShapeError, match=r"expects 4 features on the last axis"):
        LayerNorm().forward(norm_params, (), rng.normal(size=(2, 5)), train=False)
    with pytest.raises(ValueError, match=r"Dropout\(p=0.5\) with train=True needs a key"):
        Serial([Dropout(0.5)]).forward(((),), ((),), rng.normal(size=(2, 3)), train=True)


@pytest.mark.parametrize("make, message", [
    (lambda: Conv2D(0), "filters must be a positive int"),
    (lambda: Conv2D(2, padding="full"), "padding must be 'valid' or 'same'"),
    (lambda: Conv2D(2, (3, 0)), "kernel_size must be a positive int or a pair"),
    (lambda: MaxPool2D(2, stride=(1, 2, 3)), "stride must be a positive int or a pair"),
    (lambda: Dense(2.5), "n_out must be a positive int"),
    (lambda: Dropout(1.0), r"probability of dropping an element, in \[0, 1\)"),
    (lambda: BatchNorm(momentum=1.5), r"momentum must be in \[0, 1\]"),
    (lambda: LayerNorm(eps=0), "eps must be a positive number"),
    (lambda: Activation("softmax"), "unknown activation 'softmax'"),
    (lambda: Serial([]), "non-empty list or tuple of layers"),
    (lambda: Serial([Dense(2), len]), r"layers\[1\] is a builtin_function_or_method"),
    (lambda: Dense(2).init(0, 4), "in_shape must be a non-empty tuple of positive ints"),
])
def test_bad_arguments_are_refused_clearly(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_specs_are_hashable_and_canonical():
    assert Conv2D(4, 3) == Conv2D(4, (3, 3), stride=(1, 1)) and hash(Conv2D(4, 3)) == hash(
        Conv2D(4, (3, 3)))
    assert MaxPool2D(2) == MaxPool2D((2, 2), (2, 2)) and MaxPool2D(2) != AvgPool2D(2)
    assert Activation(ACTIVATIONS["tanh"]) == Activation("tanh")
    assert Activation(CUBE).activation is CUBE
    assert Serial([Dense(2)]) == Serial((Dense(2),)) and isinstance(Serial([Dense(2)]).layers,
                                                                    tuple)


# ---------------------------------------------------------------------------- planted bugs


@dataclass(frozen=True)
class UnflippedConv(Conv2D):
    """The kernel not flipped: each tap's gradient lands at the mirror offset."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        kh, kw, c, f = params.W.shape
        dpatches = dy.reshape(-1, f) @ params.W.reshape(-1, f).T
        dwin = dpatches.reshape(*dy.shape[:3], kh * kw, c)[:, :, :, ::-1, :]
        return grads, fold(dwin, cache.x.shape[1:3], self.kernel_size, self.stride)


@dataclass(frozen=True)
class UntransposedConv(Conv2D):
    """The kernel's channel axes not transposed (possible when C == F)."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        kh, kw, c, f = params.W.shape
        dpatches = dy.reshape(-1, f) @ params.W.swapaxes(2, 3).reshape(-1, f).T
        dwin = dpatches.reshape(*dy.shape[:3], kh * kw, c)
        return grads, fold(dwin, cache.x.shape[1:3], self.kernel_size, self.stride)


@dataclass(frozen=True)
class EveryTieMaxPool(MaxPool2D):
    """Max-pooling that sends a window's gradient to every element equal to its maximum."""

    def backward(self, params, cache, dy):
        x, _ = cache
        win = windows(x, self.window, self.stride)
        every = win == win.max(axis=3, keepdims=True)
        dwin = np.where(every, np.asarray(dy)[:, :, :, None, :], 0)
        return (), fold(dwin, x.shape[1:3], self.window, self.stride)


@dataclass(frozen=True)
class NoMeanTermsBatchNorm(BatchNorm):
    """BatchNorm's training backward pass without the paths through the mean and variance."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        return grads, dy * broadcast_last(params.scale * cache.inv.reshape(-1), dy.ndim)


@pytest.mark.parametrize("bug, in_shape, leaf", [
    (UnflippedConv(3, 3), (5, 5, 2), "x"),
    (UntransposedConv(3, 3), (5, 5, 3), "x"),
    (EveryTieMaxPool(2), (4, 4, 2), "x at the tied input"),
    (NoMeanTermsBatchNorm(), (3, 3, 2), "x"),
], ids=lambda v: type(v).__name__ if not isinstance(v, tuple | str) else str(v))
def test_check_layer_catches_the_planted_bugs(bug, in_shape, leaf):
    with pytest.raises(GradientMismatch, match=rf"check_layer of {type(bug).__name__}\(.*\n"
                       rf"  {leaf}: relative error"):
        check_layer(bug, in_shape)
    correct = type(bug).__mro__[1](**{f: getattr(bug, f) for f in bug.__dataclass_fields__})
    check_layer(correct, in_shape)  # the same layer with funcnn's backward passes


def test_every_tie_max_pool_is_caught_on_a_constant_image():
    with pytest.raises(GradientMismatch, match=r"\n  x: relative error 1 .*expected 0\)"):
        check_layer(EveryTieMaxPool(2), (4, 4, 1), x=np.ones((2, 4, 4, 1)))


@pytest.mark.slow
def test_layers_and_check_layer_work_without_jax():
    code = NO_JAX + textwrap.dedent("""
        import warnings
        from dataclasses import dataclass
        import numpy as np
        from funcnn.layers import BatchNorm, Conv2D, Flatten, MaxPool2D, Serial
        from funcnn.testing import GradientMismatch, check_layer

        net = Serial([Conv2D(3, 3, padding="same", bias=False), BatchNorm(), MaxPool2D(2),
                      Flatten()])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reports = check_layer(net, (4, 4, 2), max_per_leaf=8)  # jax asked for, not there
        assert any("jax is not installed" in str(w.message) for w in caught), caught
        assert len(reports) == 4 and max(r.rel_error for r in reports) < 1e-5, reports

        @dataclass(frozen=True)
        class Halved(Conv2D):
            def backward(self, params, cache, dy):
                grads, dx = super().backward(params, cache, dy)
                return grads, dx / 2
        try:
            check_layer(Halved(2, 3), (5, 5, 1), reference="finite_differences")
        except GradientMismatch as err:
            assert "\\n  x: relative error" in str(err) and "params.W" not in str(err), str(err)
        else:
            raise SystemExit("a halved input gradient passed")
        assert "jax" not in sys.modules
        print("ok")
    """)
    assert_prints_ok_without_jax(code, timeout=300)


# ---------------------------------------------------------------------------- docs/backprop.md

DOC_CASES = {  # title: (layer, in_shape, the page's names for the params, constants)
    "formula: layer Conv2D": (Conv2D(3, (3, 2)), (6, 5, 2), lambda p: {"W": p.W, "b": p.b},
                              lambda layer, state: {}),
    "formula: layer MaxPool2D": (MaxPool2D(2), (4, 6, 3), lambda p: {}, lambda layer, state: {}),
    "formula: layer AvgPool2D": (AvgPool2D(2), (4, 6, 3), lambda p: {}, lambda layer, state: {}),
    "formula: layer LayerNorm": (LayerNorm(), (5,), lambda p: dict(p._asdict()),
                                 lambda layer, state: {"eps": layer.eps}),
    "formula: layer BatchNorm": (BatchNorm(momentum=0.8), (3, 4, 2), lambda p: dict(p._asdict()),
                                 lambda layer, state: {"eps": layer.eps, "momentum": layer.momentum,
                                                       "running_mean": state.mean,
                                                       "running_var": state.var}),
    "formula: layer Residual": (Residual([Dense(4), Activation("tanh")]), (4,),
                                lambda p: {"W1": p[0].W, "b1": p[0].b}, lambda layer, state: {}),
}
DOC_BUGS = ["bug: layer Conv2D, kernel not flipped",
            "bug: layer MaxPool2D, gradient to every tied element",
            "bug: layer BatchNorm, no mean terms"]


def test_every_layer_block_on_the_page_is_checked_here():
    assert sorted(t for t in FORMULAS if t.startswith("formula: layer ")) == sorted(DOC_CASES)
    assert sorted(t for t in BUGS if t.startswith("bug: layer ")) == sorted(DOC_BUGS)


def doc_inputs(title, seed=12):
    layer, in_shape, names, constants = DOC_CASES[title]
    rng = np.random.default_rng([seed, len(title)])
    params, state, out = layer.init(seed, in_shape, "float64")
    params = moved(params, rng)
    state = jax.tree_util.tree_map(lambda v: v + rng.uniform(0.5, 1.0, v.shape), state)
    x, dy = rng.normal(size=(3, *in_shape)), rng.normal(size=(3, *out))
    return layer, params, state, x, dy, names, constants(layer, state)


def referee(code, x, dy, named, constants):
    """jax.grad of sum(dy * y), y from the block's own forward lines: (dx, {name: grad})."""
    def linearised(xj, pj):
        return jnp.sum(jnp.asarray(dy) * run(code, jnp, x=xj, dy=dy, **pj, **constants)["y"])

    return jax.grad(linearised, argnums=(0, 1))(jnp.asarray(x), named)


@pytest.mark.parametrize("title", list(DOC_CASES))
def test_layer_formula(title):
    code = FORMULAS[title]
    layer, params, state, x, dy, names, constants = doc_inputs(title)
    named = names(params)
    page = run(code, np, x=x, dy=dy, **named, **constants)
    ref_dx, ref = referee(code, x, dy, named, constants)
    assert_close(page["dx"], ref_dx, f"{title}: dx vs jax.grad")
    for name in named:
        assert_close(page[f"d{name}"], ref[name], f"{title}: d{name} vs jax.grad")
    y, grads, dx, new_state = run_layer(layer, params, state, x, dy)
    assert_close(page["y"], y, f"{title}: y vs funcnn")
    assert_close(page["dx"], dx, f"{title}: dx vs funcnn's backward")
    for name, grad in names(grads).items():
        assert_close(page[f"d{name}"], grad, f"{title}: d{name} vs funcnn's backward")
    if "running_mean" in page:
        assert_close(page["running_mean"], new_state.mean, f"{title}: running mean vs funcnn")
        assert_close(page["running_var"], new_state.var, f"{title}: running var vs funcnn")


def test_the_unflipped_kernel_bug_differentiates_the_flipped_kernel():
    title = "formula: layer Conv2D"
    _, params, _, x, dy, names, _ = doc_inputs(title)
    named = names(params)
    bug = run(BUGS["bug: layer Conv2D, kernel not flipped"], np, x=x, dy=dy, **named)
    assert rel_error(bug["dx"], referee(FORMULAS[title], x, dy, named, {})[0]) > 0.1
    flipped = run(FORMULAS[title], np, x=x, dy=dy, W=named["W"][::-1, ::-1], b=named["b"])
    assert_close(bug["dx"], flipped["dx"], "the bug's dx is the flipped kernel's")


def test_the_every_tie_bug_counts_the_gradient_once_per_tie():
    title = "formula: layer MaxPool2D"
    rng = np.random.default_rng(13)
    x, dy = np.ones((2, 4, 6, 3)), rng.normal(size=(2, 2, 3, 3))
    bug = run(BUGS["bug: layer MaxPool2D, gradient to every tied element"], np, x=x, dy=dy)
    page = run(FORMULAS[title], np, x=x, dy=dy)
    assert_close(page["dx"], referee(FORMULAS[title], x, dy, {}, {})[0], "ties: page vs jax")
    assert_close(page["dx"], run_layer(MaxPool2D(2), (), (), x, dy)[2], "ties: page vs funcnn")
    assert rel_error(bug["dx"], page["dx"]) > 0.5
    assert_close(bug["dx"].sum(), 4 * dy.sum(), "a constant image passes on 4 dy")


def test_the_batch_norm_bug_is_the_gradient_with_frozen_statistics():
    title = "formula: layer BatchNorm"
    layer, params, state, x, dy, names, constants = doc_inputs(title)
    named = names(params)
    bug = run(BUGS["bug: layer BatchNorm, no mean terms"], np, x=x, dy=dy, **named, **constants)
    assert rel_error(bug["dx"], referee(FORMULAS[title], x, dy, named, constants)[0]) > 0.1
    frozen = BatchNormState(x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)))
    dx_frozen = run_layer(layer, params, frozen, x, dy, train=False)[2]
    assert_close(bug["dx"], dx_frozen, "the bug's dx is that of eval mode at the batch's stats")
