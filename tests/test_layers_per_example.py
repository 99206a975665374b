"""funcnn.layers' per-example gradients (``backward_per_example``): on random stacks of
every layer, on NumPy and jax, each example's gradients equal ``jax.vmap(jax.grad)`` of
that example's own loss through the layers' own forward pass; they sum to ``backward``'s;
they run under ``jax.jit``; float32 stays float32; BatchNorm in training refuses them."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_docs import assert_close

import funcnn
from funcnn.activations import Activation as ActivationPair
from funcnn.layers import (
    Activation,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    LayerNorm,
    MaxPool2D,
    PerExampleError,
    Residual,
    Serial,
)
from funcnn.tree import tree_leaves

CUBE = ActivationPair("cube", lambda z: z**3, lambda z, a: 3 * z**2)
KEY = 7

# Stacks run in evaluation (train=False): BatchNorm on its running statistics, Dropout the
# identity. Every example's loss is computed on a batch of one.
EVAL_STACKS = {
    "conv-same-bn-pools-residual-layernorm": (Serial([
        Conv2D(3, 3, padding="same"), BatchNorm(), Activation("relu"), MaxPool2D(2),
        Conv2D(4, 3, stride=2, padding="same", bias=False),
        Residual([Conv2D(4, 3, padding="same"), LayerNorm(), Activation("gelu")]),
        AvgPool2D(2), Flatten(), Dropout(0.3), Dense(5), Activation(CUBE), LayerNorm(),
        Dense(3, bias=False),
    ]), (8, 8, 2)),  # (8, 8, 3) -> (4, 4, 3) -> (2, 2, 4) -> (1, 1, 4) -> (4,) -> (5,) -> (3,)
    "conv-valid-strides-bn-inside-residual": (Serial([
        Conv2D(4, (3, 2), stride=(2, 1)), Activation("tanh"),
        Residual([BatchNorm(momentum=0.5), Conv2D(4, 1), Activation("sigmoid")]),
        MaxPool2D(2, drop_remainder=True), Conv2D(2, 2, stride=2, padding="same"),
        Flatten(), BatchNorm(), Dense(4),
    ]), (9, 7, 2)),  # (4, 6, 4) -> (2, 3, 4) -> (1, 2, 2) -> (4,) -> (4,)
    "dense-only": (Serial([Dense(6), Activation("elu"), LayerNorm(), Dense(2)]), (5,)),
}

# Stacks run in training with dropout masks from a fixed key (no BatchNorm: it has no
# per-example gradients in training). A batch of one would draw another mask, so every
# example's loss is its own row of the batch's output: rows are independent, so that is
# the same function of its own input and the params.
TRAIN_STACKS = {
    "conv-dropout-residual-dense": (Serial([
        Conv2D(3, 3), Activation("elu"), Dropout(0.25), AvgPool2D(2), Flatten(),
        Residual([Dense(6), Activation("tanh"), Dropout(0.5), Dense(12)]),
        LayerNorm(), Dense(2),
    ]), (6, 6, 2)),  # (4, 4, 3) -> (2, 2, 3) -> (12,) -> ... -> (2,)
    "conv-strided-maxpool-dropout": (Serial([
        Conv2D(4, 2, stride=2, padding="same"), Activation("relu"), Dropout(0.4),
        MaxPool2D(3, 1), Flatten(), Dense(3, bias=False), Activation(CUBE),
    ]), (7, 9, 1)),  # (4, 5, 4) -> (2, 3, 4) -> (24,) -> (3,)
}

STACKS = {**{k: (*v, False) for k, v in EVAL_STACKS.items()},
          **{k: (*v, True) for k, v in TRAIN_STACKS.items()}}
M = 5


def setup(name, backend, dtype="float64", seed=0):
    """``(layer, params, state, x, dy, train)`` for the stack ``name``."""
    layer, in_shape, train = STACKS[name]
    return (layer, *draw(layer, in_shape, backend, dtype, [seed, len(name)]), train)


def draw(layer, in_shape, backend, dtype, seed, m=M):
    """``(params, state, x, dy)``: params and running statistics moved off their initial
    values (no scale at 1, no bias at 0, no variance at 1), ``x`` and ``dy`` normal."""
    rng = np.random.default_rng(seed)
    params, state, out = layer.init(0, in_shape, "float64")
    params = jax.tree_util.tree_map(lambda v: v + 0.5 * rng.normal(size=v.shape), params)
    state = jax.tree_util.tree_map(lambda v: v + rng.uniform(0.3, 1.0, v.shape), state)
    x, dy = rng.normal(size=(m, *in_shape)), rng.normal(size=(m, *out))
    return funcnn.to_backend((params, state, x, dy), backend, dtype=dtype)


def per_example(layer, params, state, x, dy, train):
    """``(per-example grads, dx)`` of the hand-written pass."""
    _, cache, _ = layer.forward(params, state, x, train=train, key=KEY)
    return layer.backward_per_example(params, cache, dy)


def reference(layer, params, state, x, dy, train):
    """``jax.vmap(jax.grad)`` of each example's loss ``sum(f(x_i) * dy_i)`` with respect
    to the params and ``x_i``: on a batch of one in evaluation, as row ``i`` of the
    batch's output in training (the same dropout masks)."""
    params, state, x, dy = funcnn.to_backend((params, state, x, dy), "jax")

    def alone(p, xi, dyi):
        y, _, _ = layer.forward(p, state, xi[None], train=False)
        return jnp.sum(y[0] * dyi)

    def row(p, xi, i):
        xs = x.at[i].set(xi)
        y, _, _ = layer.forward(p, state, xs, train=True, key=KEY)
        return jnp.sum(y[i] * dy[i])

    if train:
        return jax.vmap(jax.grad(row, argnums=(0, 1)), in_axes=(None, 0, 0))(
            params, x, jnp.arange(x.shape[0]))
    return jax.vmap(jax.grad(alone, argnums=(0, 1)), in_axes=(None, 0, 0))(params, x, dy)


def assert_each_example_close(got, want, what, rtol=1e-7, *, per_leaf=True):
    """Leaf by leaf and example by example, relative to the largest element of that
    example's leaf; with ``per_leaf=False`` of that example's whole gradient (for float32:
    a leaf of 1e-9 beside leaves of 1 is rounded at the scale of 1)."""
    got_leaves, want_leaves = tree_leaves(got), tree_leaves(want)
    assert len(got_leaves) == len(want_leaves), f"{what}: leaf counts differ"
    tops = [np.max(np.abs(np.asarray(w)).reshape(w.shape[0], -1), axis=1, initial=0)
            for w in want_leaves]                                         # (m,) per leaf
    for k, (g, w) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        assert g.shape == w.shape, f"{what}, leaf {k}: shape {g.shape} vs {w.shape}"
        scale = tops[k] if per_leaf else np.max(tops, axis=0)
        for i in range(g.shape[0]):
            err = np.max(np.abs(np.asarray(g[i], np.float64) - np.asarray(w[i])), initial=0)
            assert err <= rtol * (scale[i] or 1.0), (
                f"{what}, leaf {k}, example {i}: error {err:.3g} > {rtol:g} x {scale[i]:.3g}")


# ---------------------------------------------------------------------------- the contract


def slow_unless_small(name):
    """The conv stacks compile for seconds: marked slow (deselect with -m 'not slow')."""
    return pytest.param(name, marks=[] if name == "dense-only" else [pytest.mark.slow])


def check_against_reference(layer, params, state, x, dy, train, got, what, rtol=1e-7,
                            per_leaf=True):
    """``got = (grads, dx)`` has params' structure, leaves ``(m, *leaf.shape)`` of the
    params' dtype, and equals the jitted :func:`reference` example by example."""
    grads, dx = got
    assert (jax.tree_util.tree_structure(grads)
            == jax.tree_util.tree_structure(params))  # None where a layer has no bias
    for g, p in zip(tree_leaves(grads), tree_leaves(params), strict=True):
        assert g.shape == (x.shape[0], *p.shape) and g.dtype == p.dtype
    on_jax = funcnn.to_backend((params, state, x, dy), "jax", dtype="float64")
    ref_grads, ref_dx = REFERENCE(layer, *on_jax, train)
    assert_each_example_close(grads, ref_grads, f"{what}: per-example grads vs jax", rtol,
                              per_leaf=per_leaf)
    assert_each_example_close(dx, ref_dx, f"{what}: dx vs jax", rtol, per_leaf=per_leaf)


REFERENCE = jax.jit(reference, static_argnums=(0, 5))


@pytest.mark.parametrize("name", [slow_unless_small(n) for n in STACKS])
def test_per_example_grads_equal_vmap_of_jax_grad_on_numpy_and_jitted_jax(name):
    layer, params, state, x, dy, train = setup(name, "numpy")
    on_numpy = per_example(layer, params, state, x, dy, train)
    check_against_reference(layer, params, state, x, dy, train, on_numpy, name)
    def run(*args):  # a function of this test's own: jax shares compilations by function
        return per_example(*args)

    step = jax.jit(run, static_argnums=(0, 5))
    on_jax = funcnn.to_backend((params, state, x, dy), "jax")
    jitted = step(layer, *on_jax, train)
    assert all(funcnn.backend.is_jax_array(v) for v in tree_leaves(jitted))
    for got, want in zip(tree_leaves(jitted), tree_leaves(on_numpy), strict=True):
        assert_close(got, want, f"{name}: jitted jax vs NumPy", rtol=1e-12)
    step(type(layer)(list(layer.layers)), *on_jax, train)  # an equal spec, another object
    assert step._cache_size() == 1


SMALL = [  # (layer, in_shape, train): each layer with params alone, and two small stacks
    (Dense(3), (4,), False), (Dense(2, bias=False), (3,), False),
    (Conv2D(2, 3, stride=2, padding="same"), (5, 4, 3), False),
    (Conv2D(3, (2, 3), bias=False), (4, 5, 2), False),
    (LayerNorm(), (6,), False), (LayerNorm(), (3, 2, 4), False),
    (BatchNorm(), (6,), False), (BatchNorm(), (3, 3, 2), False),
    (Serial([Conv2D(2, 3, padding="same"), BatchNorm(), Activation("relu"), MaxPool2D(2),
             Flatten(), Dense(3), LayerNorm()]), (4, 4, 1), False),
    (Serial([Conv2D(3, 2, stride=2), Activation("tanh"), Dropout(0.5), AvgPool2D(2),
             Flatten(), Residual([Dense(3), Activation(CUBE)])]), (4, 4, 1), True),
]


def small_case(case):
    """An id for the case; the stacks compile for seconds: marked slow."""
    layer, in_shape, train = case
    name = "stack" if isinstance(layer, Serial) else repr(layer)
    marks = [pytest.mark.slow] if isinstance(layer, Serial) else []
    return pytest.param(case, id=f"{name}-{in_shape}-{'train' if train else 'eval'}",
                        marks=marks)


@pytest.mark.parametrize("case", [small_case(c) for c in SMALL])
def test_small_cases_equal_vmap_of_jax_grad_and_keep_float32(case, backend):
    """Each layer with params on its own, and small stacks, on NumPy and eager jax:
    in float64 to 1e-7, and in float32 (float32 out) to 1e-4 of jax's float64."""
    layer, in_shape, train = case
    args = draw(layer, in_shape, backend, "float64", len(in_shape))
    check_against_reference(layer, *args, train, per_example(layer, *args, train), "float64")
    args32 = draw(layer, in_shape, backend, "float32", len(in_shape))
    grads, dx = per_example(layer, *args32, train)
    assert dx.dtype == np.float32
    assert all(funcnn.backend.is_jax_array(g) == (backend == "jax") for g in tree_leaves(grads))
    check_against_reference(layer, *args32, train, (grads, dx), "float32", rtol=1e-4,
                            per_leaf=False)


# ---------------------------------------------------------------------------- squared norms


def squares(grads):
    """``(m,)``: each example's sum of squares over every leaf of per-example ``grads``."""
    return sum(np.sum(np.asarray(g).reshape(g.shape[0], -1) ** 2, axis=1)
               for g in tree_leaves(grads))


@pytest.mark.parametrize("name", list(STACKS))
def test_per_example_grads_sum_to_backwards_and_square_to_the_sq_norms(name):
    layer, params, state, x, dy, train = setup(name, "numpy", seed=1)
    _, cache, _ = layer.forward(params, state, x, train=train, key=KEY)
    each, dx_each = layer.backward_per_example(params, cache, dy)
    grads, dx = layer.backward(params, cache, dy)
    assert_close(dx_each, dx, f"{name}: dx", rtol=1e-12)
    for e, g in zip(tree_leaves(each), tree_leaves(grads), strict=True):
        assert_close(e.sum(axis=0), g, f"{name}: sum of per-example grads vs backward's",
                     rtol=1e-12)
    sq, dx_sq = layer.backward_sq_norms(params, cache, dy)
    assert sq.shape == (M,) and sq.dtype == np.float64
    assert_close(sq, squares(each), f"{name}: squared norms", rtol=1e-12)
    assert_close(dx_sq, dx, f"{name}: dx of backward_sq_norms", rtol=1e-12)


@pytest.mark.parametrize("layer, in_shape, gram", [
    (Conv2D(8, 3, stride=2), (5, 5, 4), True),       # p = 4 patches, K = 36, F = 8
    (Conv2D(6, 2, bias=False), (3, 3, 5), True),     # p = 4, K = 20, F = 6
    (Conv2D(2, 3, padding="same"), (6, 6, 1), False),  # p = 36, K = 9, F = 2
    (Dense(3), (4,), None), (LayerNorm(), (2, 2, 3), None), (BatchNorm(), (3,), None),
], ids=repr)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sq_norms_of_each_layer_on_both_backends(layer, in_shape, gram, dtype, backend):
    """Conv2D's Gram form (few patches per image) and its direct one, Dense's
    ``(||x_i||^2 + 1) ||dy_i||^2``, the generic sum of squares; float32 stays float32."""
    if gram is not None:
        k, f = layer.kernel_size[0] * layer.kernel_size[1] * in_shape[2], layer.filters
        p = np.prod(layer.output_shape(in_shape)[:2])
        assert (p * (k + f) < k * f) == gram  # the form this case exercises
    params, state, x, dy = draw(layer, in_shape, backend, dtype, 6)
    _, cache, _ = layer.forward(params, state, x, train=False)
    sq, dx = layer.backward_sq_norms(params, cache, dy)
    grads, dx_each = layer.backward_per_example(params, cache, dy)
    assert sq.shape == (M,) and sq.dtype == np.dtype(dtype) and dx.dtype == np.dtype(dtype)
    assert funcnn.backend.is_jax_array(sq) == (backend == "jax")
    rtol = 1e-12 if dtype == "float64" else 1e-5
    assert_close(sq, squares(grads), f"{layer!r}: squared norms", rtol=rtol)
    assert_close(dx, dx_each, f"{layer!r}: dx", rtol=rtol)


@pytest.mark.slow
def test_sq_norms_under_jit_equal_numpys():
    layer, params, state, x, dy, train = setup("conv-same-bn-pools-residual-layernorm", "numpy")

    def run(layer, params, state, x, dy):
        _, cache, _ = layer.forward(params, state, x, train=False)
        return layer.backward_sq_norms(params, cache, dy)

    on_numpy = run(layer, params, state, x, dy)
    jitted = jax.jit(run, static_argnums=0)(layer, *funcnn.to_backend((params, state, x, dy),
                                                                      "jax"))
    for got, want in zip(jitted, on_numpy, strict=True):
        assert_close(got, want, "jitted squared norms vs NumPy", rtol=1e-12)


# ---------------------------------------------------------------------------- the refusals


def bn_train_cache(layer, in_shape, backend):
    rng = np.random.default_rng(4)
    params, state, out = layer.init(0, in_shape, "float64", backend=backend)
    x = funcnn.to_backend(rng.normal(size=(3, *in_shape)), backend)
    dy = funcnn.to_backend(rng.normal(size=(3, *out)), backend)
    _, cache, _ = layer.forward(params, state, x, train=True, key=KEY)
    return params, cache, dy


def test_batch_norm_in_training_refuses_and_says_why_and_what_to_use(backend):
    layer = BatchNorm()
    params, cache, dy = bn_train_cache(layer, (3, 3, 2), backend)
    with pytest.raises(PerExampleError) as err:
        layer.backward_per_example(params, cache, dy)
    message = str(err.value)
    assert message.startswith(f"{layer!r} has no per-example gradients: in training")
    for words in ("batch's own mean and variance", "depends on the whole batch",
                  "train=False", "LayerNorm", "DP-SGD"):
        assert words in message, f"{words!r} not in {message!r}"
    assert isinstance(err.value, ValueError) and err.value.layer == layer
    layer.backward(params, cache, dy)  # the batch gradient still exists


def test_the_refusal_names_the_place_in_the_stack(backend):
    net = Serial([Dense(4), Residual([Dense(4), BatchNorm(), Activation("relu")]), Dense(2)])
    params, cache, dy = bn_train_cache(net, (3,), backend)
    for method in (net.backward_per_example, net.backward_sq_norms):
        with pytest.raises(PerExampleError,
                           match=r"^layers\[1\]\.layers\[1\]: BatchNorm\(") as err:
            method(params, cache, dy)
        assert err.value.path == "[1].layers[1]"


def test_the_refusal_comes_while_tracing_under_jit():
    net = Serial([Conv2D(2, 3), BatchNorm()])
    params, state, _ = net.init(0, (5, 5, 1), "float64", backend="jax")
    x = jnp.ones((2, 5, 5, 1))
    dy = jnp.ones((2, 3, 3, 2))

    @jax.jit
    def run(params, state, x, dy):
        _, cache, _ = net.forward(params, state, x, train=True)
        return net.backward_per_example(params, cache, dy)

    with pytest.raises(PerExampleError, match=r"^layers\[1\]: BatchNorm"):
        run(params, state, x, dy)


def test_a_custom_layer_with_params_and_no_per_example_pass_says_so():
    @dataclass(frozen=True)
    class Scale(Layer):
        def output_shape(self, in_shape):
            return tuple(in_shape)

        def init(self, key, in_shape, dtype="float32", *, backend=None):
            return (np.ones(in_shape, dtype),), (), tuple(in_shape)

        def forward(self, params, state, x, *, train, key=None):
            return x * params[0][None], x, state

        def backward(self, params, cache, dy):
            return ((dy * cache).sum(axis=0),), dy * params[0][None]

    layer = Scale()
    params, state, _ = layer.init(0, (3,))
    x = np.ones((2, 3), np.float32)
    _, cache, _ = layer.forward(params, state, x, train=False)
    with pytest.raises(NotImplementedError, match="has parameters but no backward_per_example"):
        layer.backward_per_example(params, cache, x)
