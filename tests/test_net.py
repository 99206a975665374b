"""funcnn.Net held to the MLP's contract: the hand-written backward pass of random nets that
combine every layer equals ``jax.grad`` of ``funcnn.loss`` (float64, 1e-7 relative, both
backends, every output/loss pair, also under jit, vmap and lax.scan and at the kinks);
dtypes kept; clear errors naming the layer, its index and the shapes; model state
(BatchNorm's running statistics) through forward, the train step, fit, evaluate and
data-parallel fit; and an MLP written as a Net giving the MLP's numbers bit for bit.

Every net here reads ``(6, 6, 2)`` images (or small flat rows) in batches of 4, so that
jax's eager ops compile for few shapes; the matrix samples two rows in the quick tier.
"""

from __future__ import annotations

import itertools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiers import sample_quick
from conftest import leaves_close
from test_grads import PAIRS
from test_parallel import SETUP, _check_ok, _run

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
from funcnn.testing import check_grads
from funcnn.tree import tree_leaves, tree_map

RTOL = 1e-7
HIDDEN = tuple(ACTIVATIONS)
CUBE = ActivationPair("cube", lambda z: z**3, lambda z, a: 3 * z**2)  # a custom activation
IN_SHAPE = (6, 6, 2)
M = 4
# jax's eager ops compile once per shape (seconds on a shared CPU): the jax variant of the
# tests below that run many of them is slow-tier, the NumPy one quick.
NUMPY_QUICK = pytest.mark.parametrize(
    "backend", ["numpy", pytest.param("jax", marks=pytest.mark.slow)])


def assert_grads_close(got, want, label, rtol=RTOL):
    bad = leaves_close(got, want, rtol=rtol)
    assert not bad, f"{label}: leaves disagree beyond rtol={rtol}:\n  " + "\n  ".join(bad)


# ---------------------------------------------------------------------------- random nets

# Image blocks (H, W, C) -> (H', W', C'); a block that does not fit the shape is not drawn.
# No block ends in a biased linear layer: before a BatchNorm its bias would have a zero
# gradient, and a relative check of rounding noise (1e-17) against zero means nothing.
IMAGE_BLOCKS = {
    "conv-same-relu": lambda c: [Conv2D(3, 3, padding="same"), Activation("relu")],
    "conv-valid": lambda c: [Conv2D(3, 3, padding="valid"), Activation("tanh")],
    "conv-stride": lambda c: [Conv2D(2, 3, stride=2, padding="same"), Activation("softplus")],
    "conv-nobias-bn": lambda c: [Conv2D(3, 2, bias=False), BatchNorm()],
    "maxpool": lambda c: [MaxPool2D(2)],
    "maxpool-drop": lambda c: [MaxPool2D(2, drop_remainder=True)],
    "avgpool": lambda c: [AvgPool2D(2, stride=1)],
    "residual": lambda c: [Residual([Conv2D(c, 3, padding="same"), LayerNorm(),
                                     Activation("gelu")])],
    "nested": lambda c: [Serial([BatchNorm(momentum=0.7),
                                 Serial([Activation(CUBE), Dropout(0.25)])])],
    "layernorm": lambda c: [LayerNorm(), Activation("elu")],
}
# Flat blocks (n,) -> (n',), given the row's hidden activation.
FLAT_BLOCKS = {
    "dense-bn": lambda n, g: [Dense(5, bias=False), BatchNorm(momentum=0.5), Activation(g)],
    "layernorm": lambda n, g: [LayerNorm()],
    "dropout": lambda n, g: [Dropout(0.3)],
    "residual": lambda n, g: [Residual([Dense(n, activation=g), Dense(n, bias=False)])],
    "activation": lambda n, g: [Activation(CUBE)],
}


def random_net(seed: int, pair: str) -> funcnn.Net:
    """Two image blocks drawn from ``seed``, Flatten, a Dense with the row's activation
    (and dropout every other row), one flat block, and the logits."""
    rng = np.random.default_rng([seed, 0x4E37])
    layers, shape = [], IN_SHAPE
    for _ in range(2):
        for name in rng.permutation(sorted(IMAGE_BLOCKS)):
            block = IMAGE_BLOCKS[name](shape[-1])
            try:
                out = Serial(block).output_shape(shape)
            except ShapeError:
                continue
            layers += block
            shape = out
            break
    hidden = HIDDEN[seed % len(HIDDEN)]
    layers += [Flatten(), Dense(6, activation=hidden, dropout=0.2 * (seed % 2))]
    layers += FLAT_BLOCKS[sorted(FLAT_BLOCKS)[rng.integers(len(FLAT_BLOCKS))]](6, hidden)
    output, loss, kind = PAIRS[pair]
    layers.append(Dense(1 if kind == "binary_vector" else 3))
    return funcnn.Net(layers, in_shape=IN_SHAPE, output=output, loss=loss)


def targets(kind: str, m: int, k: int, rng) -> np.ndarray:
    if kind == "labels":
        return rng.integers(0, k, size=m)
    if kind == "onehot":
        return np.eye(k)[rng.integers(0, k, size=m)]
    if kind == "binary_vector":
        return rng.integers(0, 2, size=m).astype(np.float64)
    if kind in ("soft_matrix", "unit"):
        return rng.uniform(0.0, 1.0, size=(m, k))
    return rng.normal(size=(m, k))


def random_params_and_state(net, seed: int, dtype="float64"):
    """Params with every leaf moved off its initial value (nonzero biases and shifts, scales
    not 1) and a state with running statistics away from (0, 1), on NumPy."""
    rng = np.random.default_rng([seed, 0x9A7A])
    params = tree_map(lambda a: (a + rng.normal(scale=0.3, size=a.shape)).astype(dtype),
                      funcnn.init_params(net, seed, dtype=dtype))
    state = tree_map(lambda a: (a * rng.uniform(0.5, 2.0, size=a.shape)
                                + rng.normal(scale=0.2, size=a.shape)).astype(dtype),
                     funcnn.init_state(net, dtype=dtype))
    return params, state


def data_for(net, kind: str, seed: int, m: int = M):
    rng = np.random.default_rng([seed, 0xDA7A])
    return rng.normal(size=(m, *net.in_shape)), targets(kind, m, net.n_out, rng)


def with_state(net, state) -> dict:
    return {"state": state} if net.keeps_state else {}


def check_net_both_backends(net, kind, seed, train):
    """check_grads on NumPy and on jax, and backprop/value_and_grad on each backend against
    ``jax.grad`` of ``funcnn.loss`` with the same key and state."""
    params, state = random_params_and_state(net, seed)
    x, y = data_for(net, kind, seed)
    n_leaves = len(tree_leaves(params))
    st = with_state(net, state)

    # NumPy: check_grads differentiates funcnn.loss with the masks the NumPy key draws.
    key_np = funcnn.random.key(seed + 7, "numpy")
    reports = check_grads(net, params, x, y, key=key_np, train=train, **st)
    assert len(reports) == n_leaves
    assert max(r.rel_error for r in reports) < RTOL
    result = funcnn.value_and_grad(net, params, x, y, key=key_np, train=train, **st)
    grads_np = result[1]
    assert all(isinstance(g, np.ndarray) for g in tree_leaves(grads_np))
    reports = check_grads(net, params, x, y, key=key_np, train=train, **st,
                          grad_fn=lambda *_: grads_np)
    assert max(r.rel_error for r in reports) < RTOL

    # jax: the referee is jax.grad of funcnn.loss itself, with the same key and state.
    pj, sj, xj, yj = funcnn.to_backend((params, state, x, y), "jax")
    key_j = funcnn.random.key(seed + 7, "jax")
    stj = with_state(net, sj)

    def loss_of(p):
        value = funcnn.loss(net, p, xj, yj, key=key_j, train=train, **stj)
        return value if not net.keeps_state else value[0]

    ref_value, ref = jax.value_and_grad(loss_of)(pj)
    out = funcnn.forward(net, pj, xj, key=key_j, train=train, **stj)
    assert_grads_close(funcnn.backprop(net, pj, out[1], yj), ref, "jax forward+backprop")
    result = funcnn.value_and_grad(net, pj, xj, yj, key=key_j, train=train, **stj)
    assert_grads_close(result[1], ref, "jax value_and_grad")
    np.testing.assert_allclose(float(result[0]), float(ref_value), rtol=1e-12)
    reports = check_grads(net, pj, xj, yj, key=key_j, train=train, **stj)
    assert max(r.rel_error for r in reports) < RTOL
    if net.keeps_state:  # the state of the pass: the same from forward and value_and_grad
        assert_grads_close(result[2], out[2], "new state", rtol=1e-12)
    if not (train and net.draws):  # no dropout drawn: NumPy's pass is jax's
        assert_grads_close(grads_np, ref, "numpy value_and_grad vs jax.grad")


MATRIX = [(pair, seed, seed % 3 != 2)  # seed: the row's own net, activation and dropout
          for i, pair in enumerate(PAIRS) for seed in range(4 * i, 4 * i + 4)]
MATRIX_IDS = [f"{p}-s{s}-{'train' if t else 'eval'}" for p, s, t in MATRIX]


@pytest.mark.parametrize(("pair", "seed", "train"),
                         sample_quick(MATRIX, 32, ids=MATRIX_IDS))
def test_backprop_of_random_nets_matches_jax_grad(pair, seed, train):
    net = random_net(seed, pair)
    assert net.output == PAIRS[pair][0] and net.loss == PAIRS[pair][1]
    check_net_both_backends(net, PAIRS[pair][2], seed, train)


def variants(layers) -> set[str]:
    """What each layer of a stack is, nested stacks included, as the guard names it."""
    found = set()
    for layer in layers:
        name = type(layer).__name__
        if isinstance(layer, Conv2D):
            found |= {f"Conv2D/{layer.padding}"}
            found |= {"Conv2D/stride"} if layer.stride != (1, 1) else set()
            found |= {"Conv2D/nobias"} if not layer.bias else set()
        elif isinstance(layer, MaxPool2D):
            found.add("MaxPool2D/drop_remainder" if layer.drop_remainder else name)
        elif isinstance(layer, Dense):
            found.add(f"Dense/{layer.activation}")
            found |= {"Dense/dropout"} if layer.dropout else set()
        elif isinstance(layer, Activation):
            custom = not isinstance(layer.activation, str)
            found.add("Activation/custom" if custom else "Activation")
        else:
            found.add(name)
        if isinstance(layer, Serial):
            found |= {f"{name}/nested"} if any(isinstance(s, Serial) for s in layer.layers) \
                else set()
            found |= variants(layer.layers)
    return found


EVERY_VARIANT = {
    "Conv2D/same", "Conv2D/valid", "Conv2D/stride", "Conv2D/nobias", "MaxPool2D",
    "MaxPool2D/drop_remainder", "AvgPool2D", "Flatten", "Dense/dropout", "Activation",
    "Activation/custom", "Dropout", "LayerNorm", "BatchNorm", "Residual", "Serial/nested",
    *(f"Dense/{g}" for g in HIDDEN),
}


def test_matrix_covers_every_layer_pair_and_mode():
    """The matrix above may not shrink silently (a count floor), and its random nets must
    combine every layer variant, every hidden activation in a Dense, every output/loss
    pair, training and evaluation, and nets with and without state and dropout."""
    assert len(MATRIX) >= 32
    nets = [random_net(seed, pair) for pair, seed, _ in MATRIX]
    covered = set().union(*(variants(net.layers) for net in nets))
    assert covered >= EVERY_VARIANT, sorted(EVERY_VARIANT - covered)
    assert {p for p, _, _ in MATRIX} == set(PAIRS)
    assert {(p, t) for p, _, t in MATRIX} == set(itertools.product(PAIRS, (True, False)))
    assert {(net.keeps_state, net.draws) for net in nets} == set(
        itertools.product((True, False), (True, False)))
    assert {loss for _, loss, _ in PAIRS.values()} == set(funcnn.losses.LOSSES)


# ---------------------------------------------------------------------------- one big net

EVERY_LAYER_NET = funcnn.Net([
    Conv2D(3, 3, padding="same", bias=False), BatchNorm(), Activation("relu"), MaxPool2D(2),
    Residual([Conv2D(3, 3, padding="same"), LayerNorm(), Activation("gelu")]),
    Conv2D(4, 2, stride=1), AvgPool2D(2), Flatten(), Dropout(0.25),
    Dense(6, activation="tanh", dropout=0.2), Serial([Activation(CUBE), LayerNorm()]),
    Dense(3),
], in_shape=IN_SHAPE)  # (6, 6, 2) -> (6, 6, 3) -> (3, 3, 3) -> (2, 2, 4) -> (1, 1, 4) -> (4,)


def _every_layer_problem(seed=0):
    net = EVERY_LAYER_NET
    params, state = random_params_and_state(net, seed)
    x, y = data_for(net, "labels", seed)
    return net, funcnn.to_backend((params, state, x, y), "jax")


def _ref_grads(net, p, s, x, y, key):
    return jax.grad(lambda q: funcnn.loss(net, q, x, y, key=key, train=True, state=s)[0])(p)


@pytest.mark.slow
def test_jit_of_value_and_grad_matches_jax_grad_and_eager():
    net, (p, s, x, y) = _every_layer_problem()
    key = funcnn.random.key(3, "jax")
    eager = funcnn.value_and_grad(net, p, x, y, key=key, train=True, state=s)
    jitted = jax.jit(lambda q, s_, k: funcnn.value_and_grad(net, q, x, y, key=k, train=True,
                                                          state=s_))(p, s, key)
    assert_grads_close(jitted[1], _ref_grads(net, p, s, x, y, key), "jit vs jax.grad")
    assert_grads_close(jitted[1], eager[1], "jit vs eager", rtol=1e-12)
    assert_grads_close(jitted[2], eager[2], "jit state vs eager", rtol=1e-12)
    jit_ref = jax.jit(lambda q: _ref_grads(net, q, s, x, y, key))(p)
    assert_grads_close(jitted[1], jit_ref, "jit vs jit of jax.grad")


@pytest.mark.slow
def test_vmap_over_parameter_sets_and_over_inputs_matches_jax_grad():
    net, (p, s, x, y) = _every_layer_problem()
    key = funcnn.random.key(4, "jax")
    sets = [funcnn.to_backend(random_params_and_state(net, seed)[0], "jax") for seed in (1, 2)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *sets)
    grads = jax.vmap(lambda q: funcnn.value_and_grad(net, q, x, y, key=key, train=True,
                                                     state=s)[1])(stacked)
    for i, q in enumerate(sets):
        assert_grads_close(jax.tree.map(lambda g, i=i: g[i], grads),
                           _ref_grads(net, q, s, x, y, key), f"vmap over params, set {i}")
    xs = jnp.stack([x, -x, 0.5 * x])  # three batches of inputs
    grads = jax.vmap(lambda xb: funcnn.value_and_grad(net, p, xb, y, key=key, train=True,
                                                      state=s)[1])(xs)
    for i in range(3):
        assert_grads_close(jax.tree.map(lambda g, i=i: g[i], grads),
                           _ref_grads(net, p, s, xs[i], y, key), f"vmap over inputs, batch {i}")


@pytest.mark.slow
def test_lax_scan_threads_params_and_state_as_jax_grad_does():
    """A scan of three SGD steps carrying params and state against the same loop of
    ``jax.grad`` steps written by hand."""
    net, (p, s, x, y) = _every_layer_problem()
    xs, keys = jnp.stack([x, -x, 0.5 * x]), jax.random.split(funcnn.random.key(5, "jax"), 3)

    def body(carry, inputs):
        q, s_ = carry
        xb, k = inputs
        loss, g, s_ = funcnn.value_and_grad(net, q, xb, y, key=k, train=True, state=s_)
        return (jax.tree.map(lambda a, b: a - 0.1 * b, q, g), s_), loss

    (q_scan, s_scan), losses = jax.lax.scan(body, (p, s), (xs, keys))
    q, s_ = p, s
    for i in range(3):
        g = _ref_grads(net, q, s_, xs[i], y, keys[i])
        loss, s_ = funcnn.loss(net, q, xs[i], y, key=keys[i], train=True, state=s_)
        np.testing.assert_allclose(float(losses[i]), float(loss), rtol=1e-12)
        q = jax.tree.map(lambda a, b: a - 0.1 * b, q, g)
    assert_grads_close(q_scan, q, "params after the scan", rtol=1e-10)
    assert_grads_close(s_scan, s_, "state after the scan", rtol=1e-10)


# ---------------------------------------------------------------------------- kinks


@NUMPY_QUICK
def test_jax_grad_at_relu_kinks_and_max_pool_ties_is_the_backward_pass(backend):
    """Zero biases and an all-zero image put the pre-activations of that example exactly
    on ReLU's kink, and integer pixels tie in many pooling windows: jax.grad of
    funcnn.loss still equals the hand-written pass there (as for the MLP's kinks)."""
    net = funcnn.Net([Conv2D(3, 2), Activation("relu"), MaxPool2D(2, drop_remainder=True),
                      Flatten(), Dense(4, activation="leaky_relu"), Dense(3)],
                     in_shape=IN_SHAPE)  # (6, 6, 2) -> (5, 5, 3) -> (2, 2, 3): a row dropped
    params = funcnn.init_params(net, 1, dtype="float64", backend=backend)
    rng = np.random.default_rng(6)
    x = rng.integers(0, 2, size=(M, *IN_SHAPE)).astype(np.float64)  # ties everywhere
    x[0] = 0.0  # on every kink
    y = rng.integers(0, 3, size=M)
    reports = check_grads(net, params, x, y)
    assert max(r.rel_error for r in reports) < RTOL
    _, grads = funcnn.value_and_grad(net, params, x, y)
    pj, xj, yj = funcnn.to_backend((params, x, y), "jax")
    ref = jax.grad(lambda q: funcnn.loss(net, q, xj, yj))(pj)
    assert all(np.isfinite(np.asarray(g)).all() for g in tree_leaves(ref))
    assert_grads_close(grads, ref, "at kinks and ties")


@NUMPY_QUICK
def test_max_pool_ties_send_the_gradient_to_the_first_maximum_through_a_net(backend):
    """A 1x1 convolution with W = (1, 1) maps the pixel pairs (1, 0) and (0, 1) to the same
    value: every pooling window ties, and the kernel's gradient tells which pixel got
    it. The rule (the first maximum in row-major order) is computed here by hand."""
    net = funcnn.Net([Conv2D(1, 1, bias=False), MaxPool2D(2), Flatten(), Dense(2)],
                     in_shape=(2, 2, 2), output="identity", loss="mse")
    rng = np.random.default_rng(7)
    x = np.zeros((3, 2, 2, 2))
    x[..., 0] = rng.integers(0, 2, size=(3, 2, 2))
    x[..., 1] = 1.0 - x[..., 0]  # every pixel sums to 1: the whole window ties
    W = np.ones((1, 1, 2, 1))
    dense = funcnn.Dense(rng.normal(size=(1, 2)), rng.normal(size=2))
    params = funcnn.to_backend((funcnn.layers.Conv2DParams(W, None), (), (), dense), backend)
    y = rng.normal(size=(3, 2))
    _, grads = funcnn.value_and_grad(net, params, x, y)
    # By hand: the pooled value is 1 for every image, z = 1 * W_d + b, dL/dz = 2 (z - y) / 6,
    # and its gradient reaches the first pixel of the window: dW[c] = sum_i x[i, 0, 0, c] dp_i.
    z = np.asarray(dense.W)[0] + np.asarray(dense.b)
    dp = (2 * (z[None, :] - y) / y.size) @ np.asarray(dense.W)[0]  # (3,)
    want = np.einsum("ic,i->c", x[:, 0, 0, :], dp)
    np.testing.assert_allclose(np.asarray(grads[0].W).reshape(2), want, rtol=1e-12)
    if backend == "numpy":
        return  # jax.grad is the referee of the jax variant (eager jax costs seconds here)
    pj, xj, yj = funcnn.to_backend((params, x, y), "jax")
    ref = jax.grad(lambda q: funcnn.loss(net, q, xj, yj))(pj)
    np.testing.assert_allclose(np.asarray(ref[0].W).reshape(2), want, rtol=1e-12)


# ---------------------------------------------------------------------------- dtypes


@NUMPY_QUICK
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtypes_are_kept_through_every_layer(backend, dtype):
    net = EVERY_LAYER_NET
    params = funcnn.init_params(net, 2, dtype=dtype, backend=backend)
    state = funcnn.init_state(net, dtype=dtype, backend=backend)
    x, y = data_for(net, "labels", 2)
    x = x.astype(dtype)
    key = funcnn.random.key(1, backend)
    out, cache, new_state = funcnn.forward(net, params, x, state=state, train=True, key=key)
    value, grads, state2 = funcnn.value_and_grad(net, params, x, y, state=state, train=True,
                                                 key=key)
    bp = funcnn.backprop(net, params, cache, y)
    loss, _ = funcnn.loss(net, params, x, y, state=state)
    pred = funcnn.predict(net, params, x, state=state)
    for what, arr in [("out", out), ("loss", value), ("eval loss", loss), ("predict", pred),
                      *[(f"leaf {i}", a) for i, a in enumerate(tree_leaves(
                          (grads, bp, new_state, state2, cache.z)))]]:
        assert arr.dtype == np.dtype(dtype), (what, arr.dtype)
        assert isinstance(arr, np.ndarray | np.generic) == (backend == "numpy"), what


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("layers", "in_shape", "parts"), [
    ([Conv2D(2, 3), Dense(3)], (6, 6, 1),
     ["layers[1]", "Dense", "(m, 4, 4, 2)", "Flatten()"]),
    ([Conv2D(2, 5), Flatten(), Dense(3)], (3, 3, 1),
     ["layers[0]", "Conv2D", "(m, 3, 3, 1)", "5x5 kernel is larger than the 3x3 padded"]),
    ([Activation("relu"), Conv2D(2, (2, 7), padding="same", stride=2), Conv2D(2, 3),
      Flatten(), Dense(3)], (4, 4, 1),
     ["layers[2]", "Conv2D", "(m, 2, 2, 2)", "3x3 kernel is larger than the 2x2 padded"]),
    ([MaxPool2D(2), Flatten(), Dense(3)], (5, 5, 1),
     ["layers[0]", "MaxPool2D", "(m, 5, 5, 1)", "do not tile 5 rows", "drop_remainder"]),
    ([Activation("relu"), Serial([Conv2D(2, 1), AvgPool2D(3, stride=2)]), Flatten(),
      Dense(3)], (6, 6, 1),
     ["layers[1].layers[1]", "AvgPool2D", "(m, 6, 6, 2)", "do not tile 6 rows"]),
    ([Conv2D(2, 3)], (6, 6, 1), ["layers[0]", "Conv2D", "(m, 4, 4, 2)", "flat (m, k)"]),
    ([Flatten(), Residual([Dense(3)]), Dense(3)], (6, 6, 1),
     ["layers[1]", "Residual", "(m, 36)", "(36,) to (3,)"]),
], ids=["dense-after-4d", "kernel-too-large", "kernel-too-large-deeper", "pool-no-tile",
        "nested-pool-no-tile", "last-not-flat", "residual-changes-shape"])
def test_shape_errors_name_the_layer_its_index_and_the_shapes(layers, in_shape, parts):
    with pytest.raises(ShapeError) as info:
        funcnn.Net(layers, in_shape=in_shape)
    message = str(info.value)
    for part in parts:
        assert part in message, (part, message)


def test_pooling_that_does_not_tile_is_accepted_with_drop_remainder():
    net = funcnn.Net([MaxPool2D(2, drop_remainder=True), Flatten(), Dense(3)],
                     in_shape=(5, 5, 1))
    assert funcnn.network.layer_shapes(net)[1] == (2, 2, 1)


# A bias before BatchNorm has a zero gradient (the mean is taken out): its rounding noise,
# which Adam would scale up to full steps, would make the backends' numbers differ.
BN_NET = funcnn.Net([Conv2D(2, 3, bias=False), BatchNorm(momentum=0.8), Activation("relu"),
                     Flatten(), Dense(3)], in_shape=(5, 5, 1))  # -> (3, 3, 2) -> (18,) -> (3,)


def _bn_problem(backend="numpy", dtype="float64", seed=0, m=7):
    params = funcnn.init_params(BN_NET, seed, dtype=dtype, backend=backend)
    state = funcnn.init_state(BN_NET, dtype=dtype, backend=backend)
    rng = np.random.default_rng([seed, 5])
    x = rng.normal(loc=0.5, size=(m, 5, 5, 1)).astype(dtype)
    y = rng.integers(0, 3, size=m)
    return params, state, x, y


def test_wrong_state_is_refused_clearly(backend):
    params, state, x, y = _bn_problem(backend)
    with pytest.raises(ValueError, match=r"pass state=funcnn\.init_state\(net\)"):
        funcnn.forward(BN_NET, params, x)
    for call in (funcnn.loss, funcnn.value_and_grad):
        with pytest.raises(ValueError, match=r"init_state"):
            call(BN_NET, params, x, y)
    with pytest.raises(ValueError, match=r"init_state"):
        funcnn.evaluate(BN_NET, params, x, y)
    opt = funcnn.optim.sgd(0.1)
    with pytest.raises(ValueError, match=r"init_state"):
        funcnn.make_train_step(BN_NET, opt)(params, opt.init(params), x, y)
    with pytest.raises(ValueError, match=r"init_state"):
        funcnn.fit(BN_NET, params, opt, x, y, epochs=1, batch_size=4, key=0, progress=False)
    with pytest.raises(ValueError, match=r"state does not match .* first difference at "
                                         r"<root>"):
        funcnn.forward(BN_NET, params, x, state=state[:3])
    other = funcnn.Net([Conv2D(3, 3, bias=False), BatchNorm(), Activation("relu"), Flatten(),
                        Dense(3)], in_shape=(5, 5, 1))
    with pytest.raises(ValueError, match=r"first difference at \[1\]\.mean \(shape \(3,\) vs "
                                         r"\(2,\)\)"):
        funcnn.forward(BN_NET, params, x, state=funcnn.init_state(other, dtype="float64",
                                                                   backend=backend))
    with pytest.raises(TypeError, match=r"state\[1\]\.mean is float32; the params are float64"):
        funcnn.forward(BN_NET, params, x, state=funcnn.init_state(BN_NET, backend=backend))
    plain = funcnn.Net([Flatten(), Dense(3)], in_shape=(5, 5, 1))
    with pytest.raises(ValueError, match=r"keeps no model state"):
        funcnn.forward(plain, funcnn.init_params(plain, 0, dtype="float64", backend=backend),
                       x, state=state)


def test_params_of_another_net_are_refused_with_the_first_difference(backend):
    params, state, x, _ = _bn_problem(backend)
    other = funcnn.Net([Conv2D(3, 3, bias=False), BatchNorm(), Activation("relu"), Flatten(),
                        Dense(3)], in_shape=(5, 5, 1))
    with pytest.raises(ValueError, match=r"params does not match .* first difference at "
                                         r"\[0\]\.W \(shape \(3, 3, 1, 3\) vs \(3, 3, 1, 2\)\)"):
        funcnn.forward(BN_NET, funcnn.init_params(other, 0, dtype="float64", backend=backend),
                       x, state=state)
    mlp = funcnn.MLP((25, 3))
    with pytest.raises(ValueError, match=r"params does not match .* first difference at <root>"):
        funcnn.forward(BN_NET, funcnn.init_params(mlp, 0, dtype="float64", backend=backend),
                       x, state=state)


def test_a_net_with_a_block_and_no_batch_norm_runs():
    """A Residual (or Serial) block in a net without BatchNorm: the backward pass equals
    jax.grad of the loss, and fit runs."""
    block = funcnn.Net([Flatten(), Residual([Dense(4, activation="tanh")]), Dense(3)],
                       in_shape=(2, 2, 1))
    params = funcnn.init_params(block, 0, dtype="float64")
    x = np.random.default_rng(1).normal(size=(5, 2, 2, 1))
    y = np.array([0, 1, 2, 0, 1])
    assert not block.keeps_state and funcnn.init_state(block) == ()
    check_grads(block, params, x, y)
    funcnn.fit(block, params, funcnn.optim.sgd(0.1), x, y, epochs=1, batch_size=2, key=0,
               progress=False)


# ---------------------------------------------------------------------------- model state


def _bn_input(params, x):
    """The BatchNorm's input: the convolution's output, computed by the layer alone."""
    return BN_NET.layers[0].forward(params[0], (), x, train=True)[0]


@NUMPY_QUICK
def test_training_moves_the_running_statistics_by_momentum_and_evaluation_keeps_them(backend):
    params, state, x, _ = _bn_problem(backend)
    before = tree_map(np.array, state)
    out, cache, new = funcnn.forward(BN_NET, params, x, state=state, train=True)
    h = np.asarray(_bn_input(params, x))  # (m, 3, 3, 2): statistics per channel
    mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(new[1].mean), 0.8 * 0 + 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(new[1].var), 0.8 * 1 + 0.2 * var, rtol=1e-12)
    assert isinstance(new[1], BatchNormState) and new[0] == () and len(new) == 5
    assert_grads_close(cache.state, new, "cache.state", rtol=0)
    assert_grads_close(state, before, "the given state is not written into", rtol=0)

    # Evaluation: the running statistics normalise, and the state comes back unchanged.
    out_eval, _, same = funcnn.forward(BN_NET, params, x, state=new, train=False)
    assert_grads_close(same, new, "state after train=False", rtol=0)
    z = (h - np.asarray(new[1].mean)) / np.sqrt(np.asarray(new[1].var) + 1e-5)
    logits = np.maximum(z, 0).reshape(len(x), -1) @ np.asarray(params[4].W) \
        + np.asarray(params[4].b)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(np.asarray(out_eval), probs / probs.sum(axis=1, keepdims=True),
                               rtol=1e-10)
    np.testing.assert_allclose(np.asarray(funcnn.predict(BN_NET, params, x, state=new)),
                               np.asarray(out_eval), rtol=1e-12)
    assert not np.allclose(np.asarray(out_eval), np.asarray(out))  # batch vs running stats


@NUMPY_QUICK
def test_a_net_without_state_returns_what_it_always_did(backend):
    net = funcnn.Net([Conv2D(2, 3), Activation("relu"), Flatten(), Dense(3)], in_shape=(5, 5, 1))
    assert not net.keeps_state and funcnn.init_state(net, backend=backend) == ()
    params = funcnn.init_params(net, 0, dtype="float64", backend=backend)
    _, _, x, y = _bn_problem(backend, m=8)
    assert len(funcnn.forward(net, params, x)) == 2
    assert np.ndim(funcnn.loss(net, params, x, y)) == 0
    assert len(funcnn.value_and_grad(net, params, x, y)) == 2
    step = funcnn.make_train_step(net, funcnn.optim.sgd(0.1))
    assert len(step(params, funcnn.optim.sgd(0.1).init(params), x, y)) == 3
    assert len(funcnn.fit(net, params, funcnn.optim.sgd(0.1), x, y, epochs=1, batch_size=4,
                          key=0, progress=False)) == 3
    # Given state=(), the call follows the rule: the (empty) state comes back last.
    assert funcnn.forward(net, params, x, state=())[2] == ()


def _adam():
    return funcnn.optim.adam(1e-2)


@pytest.mark.slow
def test_the_train_step_carries_the_state_jitted_or_not_on_both_backends():
    results = {}
    for backend in ("numpy", "jax"):
        params, state, x, y = _bn_problem(backend)
        opt = _adam()
        step = funcnn.make_train_step(BN_NET, opt)
        runs = {"eager": step, "jit": jax.jit(step)} if backend == "jax" else {"eager": step}
        for name, fn in runs.items():
            p, o, s = params, opt.init(params), state
            for _ in range(2):
                p, o, loss, s = fn(p, o, x, y, None, state=s)
            results[backend, name] = (p, o, loss, s)
    want = results["numpy", "eager"]
    assert not np.allclose(np.asarray(want[3][1].mean), 0.0)  # the statistics moved
    for label, got in results.items():
        assert_grads_close(got, want, f"train step {label}", rtol=1e-10)


# The fit problem, as text: the 2-device subprocess runs the same code.
FIT_PROBLEM = r'''
import numpy as np
import funcnn
from funcnn.layers import Activation, BatchNorm, Conv2D, Dense, Flatten, MaxPool2D

def fit_problem(backend):
    net = funcnn.Net([Conv2D(3, 3, padding="same", bias=False), BatchNorm(),
                      Activation("relu"), MaxPool2D(2), Flatten(), Dense(3)], in_shape=(4, 4, 1))
    rng = np.random.default_rng(8)
    x = rng.normal(size=(22, 4, 4, 1))  # batches of 8: 8, 8 and a short last batch of 6
    y = rng.integers(0, 3, size=22)
    params = funcnn.init_params(net, 3, dtype="float64", backend=backend)
    state = funcnn.init_state(net, dtype="float64", backend=backend)
    return net, params, state, x, y
'''


def _fit_problem(backend):
    namespace: dict = {}
    exec(FIT_PROBLEM, namespace)
    return namespace["fit_problem"](backend)


@pytest.mark.slow
def test_fit_with_state_numpy_and_jax_agree_and_train_the_short_batch_unpadded():
    results = {}
    for backend in ("numpy", "jax"):
        net, params, state, x, y = _fit_problem(backend)
        opt = _adam()
        p, o, hist, s = funcnn.fit(net, params, opt, x, y, epochs=2, batch_size=8, key=1,
                                   state=state, shuffle=False, progress=False,
                                   validation=(x[:10], y[:10]))
        val = funcnn.evaluate(net, p, x[:10], y[:10], state=s)  # the running statistics
        np.testing.assert_allclose(hist["val_loss"][-1], val["loss"], rtol=1e-12)
        # A hand loop over the same batches, the short one as it is.
        hp, ho, hs, losses = params, opt.init(params), state, []
        step = funcnn.make_train_step(net, opt)
        xb, yb = funcnn.to_backend((x, y), backend)
        for _ in range(2):
            for start in range(0, 22, 8):
                hp, ho, loss, hs = step(hp, ho, xb[start:start + 8], yb[start:start + 8],
                                        state=hs)
                losses.append(float(loss))
        np.testing.assert_allclose(hist["loss"], losses, rtol=1e-10)
        assert_grads_close(s, hs, f"{backend}: fit's state vs the hand loop", rtol=1e-10)
        if backend == "numpy":  # the check tells: a padded short batch gives other statistics
            padded = step(params, opt.init(params), np.concatenate([x[16:], x[:2]]),
                          np.concatenate([y[16:], y[:2]]), state=state)[3]
            short = step(params, opt.init(params), x[16:], y[16:], state=state)[3]
            assert leaves_close(padded, short, rtol=1e-6)
        assert_grads_close(p, hp, f"{backend}: fit's params vs the hand loop", rtol=1e-10)
        assert len(hist["loss"]) == 6
        results[backend] = (p, o, s, hist)
    (pn, on, sn, hn), (pj, oj, sj, hj) = results["numpy"], results["jax"]
    assert_grads_close((pj, oj, sj), (pn, on, sn), "jax vs numpy fit", rtol=1e-9)
    for name in ("loss", "train_loss", "train_accuracy"):
        np.testing.assert_allclose(hj[name], hn[name], rtol=1e-9, err_msg=name)


@NUMPY_QUICK
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_train_step_and_fit_keep_the_states_dtype(backend, dtype):
    params, state, x, y = _bn_problem(backend, dtype)
    opt = funcnn.optim.sgd(0.1)
    out = funcnn.make_train_step(BN_NET, opt)(params, opt.init(params), x, y, state=state)
    _, _, _, new = funcnn.fit(BN_NET, params, opt, x, y, epochs=1, batch_size=4, key=0,
                              state=state, progress=False)  # batches of 4 and 3
    for leaf in tree_leaves((out[0], out[3], new)):
        assert leaf.dtype == np.dtype(dtype)
        assert isinstance(leaf, np.ndarray) == (backend == "numpy")
    assert leaves_close(new, state, rtol=1e-3)  # the statistics moved: the leaves differ


@NUMPY_QUICK
def test_evaluate_uses_the_running_statistics(backend):
    params, state, x, y = _bn_problem(backend)
    _, moved = funcnn.loss(BN_NET, params, x, y, state=state, train=True)
    got = funcnn.evaluate(BN_NET, params, x, y, state=moved, batch_size=3)
    want, same = funcnn.loss(BN_NET, params, x, y, state=moved)
    np.testing.assert_allclose(got["loss"], float(want), rtol=1e-12)
    assert_grads_close(same, moved, "evaluation keeps the state", rtol=0)
    out = np.asarray(funcnn.predict(BN_NET, params, x, state=moved))
    assert got["accuracy"] == pytest.approx(np.mean(out.argmax(axis=1) == y))
    other = funcnn.evaluate(BN_NET, params, x, y, state=state)
    assert other["loss"] != pytest.approx(got["loss"])  # other statistics, another loss


TWO_DEVICES_SCRIPT = SETUP + FIT_PROBLEM + r'''
net, params, state, x, y = fit_problem("jax")
x, y = x[:20], y[:20]  # batches of 8, 8 and 4: each splits over 2 devices
out = {"devices": len(jax.devices())}
for name, devices in (("one", None), ("two", jax.devices())):
    p, o, h, s = funcnn.fit(net, params, funcnn.optim.adam(1e-2), x, y, epochs=2,
                            batch_size=8, key=1, state=state, progress=False, devices=devices)
    out[name] = [np.asarray(a).tolist() for a in jax.tree.leaves((p, s))] + [h["loss"]]
json.dump(out, open(sys.argv[1], "w"))
'''


@pytest.mark.slow
def test_fit_on_two_devices_uses_batch_norm_statistics_of_the_global_batch(tmp_path):
    script, report = tmp_path / "two.py", tmp_path / "report.json"
    script.write_text(TWO_DEVICES_SCRIPT)
    proc = _run([sys.executable, str(script), str(report)], "the 2-device script",
                XLA_FLAGS="--xla_force_host_platform_device_count=2")
    _check_ok(proc, "the 2-device script")
    out = json.loads(report.read_text())
    assert out["devices"] == 2
    assert len(out["one"]) == len(out["two"])
    for one, two in zip(out["one"], out["two"], strict=True):
        np.testing.assert_allclose(np.asarray(two), np.asarray(one), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- MLP as a Net


def _mlp_and_net():
    mlp = funcnn.MLP((4, 8, 6, 3), hidden="tanh", dropout=0.2)
    return mlp, funcnn.Net(mlp.layers, in_shape=(4,), output=mlp.output, loss=mlp.loss)


def test_an_mlp_written_as_a_net_has_the_same_params_bit_for_bit(backend):
    mlp, net = _mlp_and_net()
    for dtype in ("float32", "float64"):
        a = funcnn.init_params(mlp, 7, dtype=dtype, backend=backend)
        b = funcnn.init_params(net, 7, dtype=dtype, backend=backend)
        assert_grads_close(b, a, f"init {dtype}", rtol=0)
        assert type(b[0]) is funcnn.Dense


@pytest.mark.parametrize("backend_", [
    "numpy", pytest.param("jax", marks=pytest.mark.slow)])
def test_an_mlp_written_as_a_net_trains_to_the_same_params_bit_for_bit(backend_):
    mlp, net = _mlp_and_net()
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(30, 4)).astype(np.float32), rng.integers(0, 3, size=30)
    got = {}
    for name, spec in (("mlp", mlp), ("net", net)):
        params = funcnn.init_params(spec, 7, backend=backend_)
        got[name] = funcnn.fit(spec, params, _adam(), x, y, epochs=3, batch_size=8, key=2,
                               progress=False)  # a short last batch of 6: padded on jax
    assert_grads_close(got["net"][:2], got["mlp"][:2], "params and optimizer state", rtol=0)
    assert got["net"][2]["loss"] == got["mlp"][2]["loss"]


# ---------------------------------------------------------------------------- tests of tests


def test_the_random_nets_are_valid_and_of_the_requested_head():
    for pair, seed, _ in MATRIX:
        net = random_net(seed, pair)
        assert net.n_out == (1 if PAIRS[pair][2] == "binary_vector" else 3)
        assert isinstance(net.layers[-1], Dense)
    assert random_net(1, "identity+mse") == random_net(1, "identity+mse")  # hashable specs
    assert hash(random_net(1, "identity+mse")) == hash(random_net(1, "identity+mse"))


def test_grad_norms_callback_reads_the_running_statistics():
    """callbacks.grad_norms on a BatchNorm net: each example's norm is that of
    per_example_grad_norms with the state fit has reached (evaluation mode)."""
    net = funcnn.Net([Conv2D(3, 3, bias=False), BatchNorm(), Activation("relu"), Flatten(),
                      Dense(3)], in_shape=(5, 5, 1))
    x = np.random.default_rng(3).normal(size=(24, 5, 5, 1))
    y = np.arange(24) % 3
    params = funcnn.init_params(net, 0, dtype="float64")
    state = funcnn.init_state(net, dtype="float64")
    params, _, history, state = funcnn.fit(
        net, params, funcnn.optim.sgd(0.1), x, y, epochs=1, batch_size=8, key=0, state=state,
        progress=False, callbacks=[funcnn.callbacks.grad_norms(x, y, batch_size=10)])
    want = funcnn.per_example.per_example_grad_norms(net, params, x, y, state=state)
    np.testing.assert_allclose(history["grad_norm_mean"][-1], np.mean(want), rtol=1e-12)
    assert history["grad_norm_top"][-1][0] == int(np.argmax(want))
