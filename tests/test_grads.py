"""The hand-written backward pass against autodiff and finite differences, in float64.

The referee is ``jax.grad(funcnn.loss)`` with the same dropout key (and, for NumPy with
dropout, whose key draws other masks than jax's, ``funcnn.testing.check_grads``, which
differentiates funcnn's loss with the masks the NumPy key draws). Every gradient leaf must
agree to a relative error below 1e-7, measured as ``max|g - r| / max|r|`` per leaf, the
metric of ``funcnn.testing``. That the loss itself is the textbook one is checked against
plain NumPy in test_mlp.py.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from _tiers import sample_quick
from conftest import leaves_close
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import funcnn
from funcnn.activations import ACTIVATIONS
from funcnn.testing import GradientMismatch, check_gradient, check_grads
from funcnn.tree import tree_leaves, tree_map

RTOL = 1e-7
HIDDEN = tuple(ACTIVATIONS)  # every hidden activation funcnn offers

# name -> (output, loss, kind of target)
PAIRS = {
    "softmax+ce/labels": ("softmax", "cross_entropy", "labels"),
    "softmax+ce/onehot": ("softmax", "cross_entropy", "onehot"),
    "sigmoid+bce/(m,)": ("sigmoid", "binary_cross_entropy", "binary_vector"),
    "sigmoid+bce/(m,k)": ("sigmoid", "binary_cross_entropy", "soft_matrix"),
    "identity+mse": ("identity", "mse", "real"),
    "sigmoid+mse": ("sigmoid", "mse", "unit"),
    "tanh+mse": ("tanh", "mse", "real"),
    "softmax+mse": ("softmax", "mse", "onehot"),
}
WIDTH = 5


def sizes_for(depth: int, kind: str) -> tuple[int, ...]:
    """Every width is 5 (one output for BCE with (m,) targets): jax compiles each eager op
    once per shape, and that compilation, not the arithmetic, is what costs here. Shape
    bugs (a transposed product) still change values, and the finite-difference and
    hypothesis tests below use ragged shapes."""
    k = 1 if kind == "binary_vector" else WIDTH
    return (WIDTH, *(WIDTH,) * (depth - 1), k)


def ragged_sizes(kind: str) -> tuple[int, ...]:
    """Three layers of different widths, for the NumPy-only (finite-difference) checks."""
    return (4, 6, 5, 1 if kind == "binary_vector" else 3)


def make_data(net: funcnn.MLP, kind: str, m: int, seed: int):
    """Float64 inputs and targets of the requested kind for ``net``."""
    rng = np.random.default_rng([seed, 0xDA7A])
    k = net.sizes[-1]
    x = rng.normal(size=(m, net.sizes[0]))
    if kind == "labels":
        y = rng.integers(0, k, size=m)
    elif kind == "onehot":
        y = np.eye(k)[rng.integers(0, k, size=m)]
    elif kind == "binary_vector":
        y = rng.integers(0, 2, size=m).astype(np.float64)
    elif kind in ("soft_matrix", "unit"):
        y = rng.uniform(0.0, 1.0, size=(m, k))
    else:
        y = rng.normal(size=(m, k))
    return x, y


def assert_grads_close(got, want, label):
    bad = leaves_close(got, want, rtol=RTOL)
    assert not bad, f"{label}: gradient leaves disagree beyond rtol={RTOL}:\n  " + "\n  ".join(bad)


def check_both_backends(net, kind, params64, m=6, seed=0):
    """forward+backprop and value_and_grad on NumPy and on jax against jax.grad references."""
    x, y = make_data(net, kind, m, seed)
    train = net.dropout > 0
    p_jax = funcnn.to_backend(params64, "jax")
    p_np = funcnn.to_backend(params64, "numpy")

    # jax backend: the referee differentiates funcnn.loss itself, with the same key.
    key_jax = funcnn.random.key(seed + 7, "jax") if train else None
    xj, yj = funcnn.to_backend((x, y), "jax")
    ref_value, ref = jax.value_and_grad(
        lambda p: funcnn.loss(net, p, xj, yj, key=key_jax, train=train)
    )(p_jax)
    _, cache = funcnn.forward(net, p_jax, xj, key=key_jax, train=train)
    assert_grads_close(funcnn.backprop(net, p_jax, cache, yj), ref, "jax forward+backprop")
    value, grads = funcnn.value_and_grad(net, p_jax, xj, yj, key=key_jax, train=train)
    assert_grads_close(grads, ref, "jax value_and_grad")
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-12)

    # NumPy backend: without dropout the referee is the same. With dropout the NumPy key
    # draws other masks; check_grads draws them from the same key and differentiates
    # funcnn's loss with them (jax.grad in float64).
    key_np = funcnn.random.key(seed + 7, "numpy") if train else None
    out, cache = funcnn.forward(net, p_np, x, key=key_np, train=train)
    assert isinstance(out, np.ndarray)
    grads_bp = funcnn.backprop(net, p_np, cache, y)
    value, grads_vg = funcnn.value_and_grad(net, p_np, x, y, key=key_np, train=train)
    assert all(isinstance(g, np.ndarray) for g in tree_leaves(grads_vg))
    if train:
        reports = check_grads(net, p_np, x, y, key=key_np, train=True,
                              grad_fn=lambda *_: grads_vg)
        assert max(r.rel_error for r in reports) < RTOL
        ref = grads_vg
        ref_value = funcnn.loss(net, p_np, x, y, key=key_np, train=True)
    assert_grads_close(grads_bp, ref, "numpy forward+backprop")
    assert_grads_close(grads_vg, ref, "numpy value_and_grad")
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-12)


# ------------------------------------------------------------------ the matrix
#
# Every hidden activation x every (output, loss) pair x depth 2, 3, 4 x with and without
# dropout, each on both backends and through both forward+backprop and value_and_grad.
# A depth-1 net has no hidden layer (so neither activation nor dropout) and runs once
# per pair.

MATRIX = [(pair, "relu", 1, 0.0) for pair in PAIRS] + [
    (pair, hidden, depth, dropout)
    for pair in PAIRS
    for hidden in HIDDEN
    for depth in (2, 3, 4)
    for dropout in (0.0, 0.4)
]


@pytest.mark.parametrize(
    ("pair", "hidden", "depth", "dropout"),
    sample_quick(MATRIX, 5, ids=[f"{p}-{h}-d{d}-p{q}" for p, h, d, q in MATRIX]),
)
def test_backprop_matches_jax_grad(make_params, pair, hidden, depth, dropout):
    output, loss, kind = PAIRS[pair]
    net = funcnn.MLP(sizes_for(depth, kind), hidden=hidden, output=output, loss=loss,
                     dropout=dropout)
    assert net.loss == loss and net.n_layers == depth
    seed = depth * 100 + HIDDEN.index(hidden)
    check_both_backends(net, kind, make_params(net, seed), seed=seed)


def test_matrix_covers_every_activation_pair_depth_and_dropout():
    """The matrix above may not shrink silently (e.g. when funcnn gains an activation)."""
    assert set(MATRIX) >= set(itertools.product(PAIRS, HIDDEN, (2, 3, 4), (0.0, 0.4)))
    assert {(p, d) for p, _, d, _ in MATRIX} == set(itertools.product(PAIRS, (1, 2, 3, 4)))
    assert {o for o, _, _ in PAIRS.values()} >= {"softmax", "sigmoid", "identity", "tanh"}
    assert {loss for _, loss, _ in PAIRS.values()} == set(funcnn.losses.LOSSES)


@settings(max_examples=25, deadline=None)
@given(
    n_in=st.integers(1, 5),
    widths=st.lists(st.integers(1, 6), min_size=0, max_size=3),
    m=st.integers(1, 7),
    hidden=st.sampled_from(HIDDEN),
    pair=st.sampled_from(sorted(PAIRS)),
    dropout=st.sampled_from([0.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_backprop_random_architectures(make_params, n_in, widths, m, hidden, pair, dropout,
                                       seed):
    """Random shapes on NumPy against finite differences (jax would compile every shape)."""
    output, loss, kind = PAIRS[pair]
    k = 1 if kind == "binary_vector" else 2 + seed % 3
    net = funcnn.MLP((n_in, *widths, k), hidden=hidden, output=output, loss=loss,
                     dropout=dropout)
    params = make_params(net, seed)
    x, y = make_data(net, kind, m, seed)
    key = funcnn.random.key(seed)
    if hidden in ("relu", "leaky_relu"):  # central differences straddling a kink disagree
        zs = funcnn.forward(net, params, x)[1].zs[:-1]
        assume(all(np.abs(z).min() > 1e-4 for z in zs))

    def grad_fn(net_, p, x_, y_):
        _, cache = funcnn.forward(net_, p, x_, key=key, train=dropout > 0)
        return funcnn.backprop(net_, p, cache, y_)

    reports = check_grads(net, params, x, y, key=key, train=dropout > 0, grad_fn=grad_fn,
                          reference="finite_differences", max_per_leaf=None, atol=1e-9)
    assert len(reports) == 2 * net.n_layers


# ------------------------------------------------------------ funcnn.testing as referee


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_check_grads_with_dropout_key(make_params, pair, backend):
    """check_grads draws the dropout masks from the key and checks the default backprop
    and a grad_fn using value_and_grad with the same key, on params of either backend."""
    output, loss, kind = PAIRS[pair]
    net = funcnn.MLP(sizes_for(3, kind), hidden="elu", output=output, loss=loss, dropout=0.3)
    params = make_params(net, 11, backend=backend)
    x, y = make_data(net, kind, 6, 11)
    key = funcnn.random.key(5, backend)
    reports = check_grads(net, params, x, y, key=key, train=True)
    assert len(reports) == 2 * net.n_layers
    assert max(r.rel_error for r in reports) < RTOL

    def grad_fn(net_, p, x_, y_):
        return funcnn.value_and_grad(net_, p, x_, y_, key=key, train=True)

    reports = check_grads(net, params, x, y, key=key, train=True, grad_fn=grad_fn)
    assert max(r.rel_error for r in reports) < RTOL


FD_CASES = [(hidden, sorted(PAIRS)[i % len(PAIRS)], 0.0) for i, hidden in enumerate(HIDDEN)] + [
    ("relu", pair, 0.0) for pair in sorted(PAIRS)
] + [("tanh", "softmax+ce/labels", 0.5), ("gelu", "sigmoid+bce/(m,k)", 0.5)]


@pytest.mark.parametrize(("hidden", "pair", "dropout"), FD_CASES)
def test_backprop_matches_finite_differences(make_params, hidden, pair, dropout):
    output, loss, kind = PAIRS[pair]
    net = funcnn.MLP(ragged_sizes(kind), hidden=hidden, output=output, loss=loss,
                     dropout=dropout)
    params = make_params(net, 3)
    x, y = make_data(net, kind, 4, 3)
    key = funcnn.random.key(9) if dropout else None
    reports = check_grads(net, params, x, y, key=key, train=dropout > 0,
                          reference="finite_differences", max_per_leaf=None)
    assert [r.path for r in reports] == [
        f"params[{i}].{f}" for i in range(net.n_layers) for f in ("W", "b")
    ]
    assert max(r.rel_error for r in reports) < 1e-5


# ------------------------------------------------------------------ stable fused losses


def single_layer(logits: np.ndarray, n_in: int = WIDTH):
    """A one-layer net's params whose logits are ``logits`` for every input row."""
    k = logits.shape[0]
    return (funcnn.Dense(np.zeros((n_in, k)), np.asarray(logits, dtype=np.float64)),)


X_ONES = np.ones((6, WIDTH))  # the matrix's shapes: jax compiles nothing new


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_cross_entropy_extreme_logits_are_finite_and_exact(backend, scale):
    net = funcnn.MLP((WIDTH, 5))
    z = np.array([scale, -scale, 0.0, 1.0, -2.0])
    params = funcnn.to_backend(single_layer(z), backend)
    y = np.array([0, 1, 2, 0, 1, 4])
    value, grads = funcnn.value_and_grad(net, params, X_ONES, y)
    # Closed form: loss_i = logsumexp(z) - z[y_i], with logsumexp(z) = |scale| to double
    # precision; p is one-hot on the largest logit.
    expected = np.mean([abs(scale) - z[c] for c in y])
    assert np.isfinite(float(value))
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)
    p = np.eye(5)[np.argmax(z)]
    expected_db = np.mean([p - np.eye(5)[c] for c in y], axis=0)
    assert all(np.isfinite(np.asarray(g)).all() for g in tree_leaves(grads))
    np.testing.assert_allclose(np.asarray(grads[0].b), expected_db, atol=1e-12)
    ref = jax.grad(lambda p_: funcnn.loss(net, p_, X_ONES, y))(funcnn.to_backend(params, "jax"))
    assert not leaves_close(grads, ref, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_binary_cross_entropy_extreme_logits_are_finite_and_exact(backend, scale):
    net = funcnn.MLP((WIDTH, 5), output="sigmoid")
    z = np.array([scale, -scale, 0.5, -3.0, 2.0])
    params = funcnn.to_backend(single_layer(z), backend)
    y = np.random.default_rng(0).integers(0, 2, size=(6, 5)).astype(float)
    value, grads = funcnn.value_and_grad(net, params, X_ONES, y)
    # -[y log s(z) + (1 - y) log(1 - s(z))] = log(1 + e^z) - y z, with NumPy's own
    # stable log(e^0 + e^z); at |z| = 1e4 it is max(z, 0) exactly.
    expected = np.mean(np.logaddexp(0, z)[None, :] - y * z[None, :])
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)
    s = np.concatenate([[scale > 0, scale < 0], 1 / (1 + np.exp(-z[2:]))])
    np.testing.assert_allclose(np.asarray(grads[0].b), np.mean(s[None, :] - y, axis=0) / 5,
                               atol=1e-12)
    assert all(np.isfinite(np.asarray(g)).all() for g in tree_leaves(grads))
    ref = jax.grad(lambda p_: funcnn.loss(net, p_, X_ONES, y))(funcnn.to_backend(params, "jax"))
    assert not leaves_close(grads, ref, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("scale", [0.1, 3.0, 20.0])
def test_fused_losses_match_naive_formulas_where_finite(backend, scale):
    rng = np.random.default_rng(int(scale * 10))
    logits = rng.normal(size=5) * scale
    p = np.exp(logits - logits.max())
    p /= p.sum()
    labels = rng.integers(0, 5, size=6)
    naive_ce = -np.mean(np.log(p[labels]))
    net = funcnn.MLP((WIDTH, 5))
    params = funcnn.to_backend(single_layer(logits), backend)
    np.testing.assert_allclose(float(funcnn.loss(net, params, X_ONES, labels)), naive_ce,
                               rtol=1e-10)

    s = 1 / (1 + np.exp(-logits))
    y = rng.integers(0, 2, size=(6, 5)).astype(float)
    naive_bce = -np.mean(y * np.log(s) + (1 - y) * np.log(1 - s))
    assert np.isfinite(naive_bce)
    net = funcnn.MLP((WIDTH, 5), output="sigmoid")
    np.testing.assert_allclose(float(funcnn.loss(net, params, X_ONES, y)), naive_bce, rtol=1e-8)


def test_cross_entropy_with_soft_label_rows(make_params, backend):
    """Label smoothing: probability rows (summing to 1) are valid cross-entropy targets."""
    net = funcnn.MLP(sizes_for(2, "onehot"), hidden="tanh")
    params = make_params(net, 1, backend=backend)
    x, y = make_data(net, "onehot", 6, 1)
    y = 0.9 * y + 0.1 / WIDTH
    _, grads = funcnn.value_and_grad(net, params, x, y)
    ref = jax.grad(lambda p: funcnn.loss(net, p, x, y))(funcnn.to_backend(params, "jax"))
    assert_grads_close(grads, ref, "cross-entropy with smoothed labels")


def test_cross_entropy_rows_not_summing_to_one_are_differentiated(make_params):
    """Unnormalised target rows: the delta is (p * sum(Y) - Y) / m, not (p - Y) / m."""
    net = funcnn.MLP(sizes_for(2, "onehot"), hidden="tanh")
    params = make_params(net, 2)
    x, _ = make_data(net, "onehot", 6, 2)
    y = np.random.default_rng(2).uniform(0.0, 1.0, size=(6, WIDTH))
    _, grads = funcnn.value_and_grad(net, params, x, y)
    ref = jax.grad(lambda p: funcnn.loss(net, p, x, y))(funcnn.to_backend(params, "jax"))
    assert_grads_close(grads, ref, "cross-entropy with rows not summing to 1")


# ----------------------------------------------------------- the three classic bugs


def numpy_backprop(net, params, x, y, *, drop_mean=False, bce_as_mse=False):
    """A plain NumPy backward pass (tanh or relu, softmax+CE or sigmoid+BCE, no dropout),
    with optional planted bugs."""
    acts = {"tanh": (np.tanh, lambda z, a: 1 - a * a),
            "relu": (lambda z: np.maximum(z, 0), lambda z, a: (z > 0) * 1.0)}
    g, dg = acts[net.hidden]
    inputs, zs, a = [], [], x
    for layer in params:
        inputs.append(a)
        z = a @ layer.W + layer.b
        zs.append(z)
        a = g(z)
    z = zs[-1]
    m = x.shape[0]
    if net.output == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out = e / e.sum(axis=1, keepdims=True)
        dz = out - np.eye(z.shape[1])[y]
    else:
        out = 1 / (1 + np.exp(-z))
        target = y.reshape(z.shape)
        dz = out - target
        if bce_as_mse:
            dz = 2 * (out - target) * out * (1 - out)
    dz = dz / (1 if drop_mean else z.size if net.output == "sigmoid" else m)
    grads = [None] * len(params)
    for i in reversed(range(len(params))):
        grads[i] = funcnn.Dense(inputs[i].T @ dz, dz.sum(axis=0))
        if i:
            dz = (dz @ params[i].W.T) * dg(zs[i - 1], g(zs[i - 1]))
    return tuple(grads)


def test_plain_numpy_backprop_is_a_valid_reference(make_params):
    """The hand-written backward pass above passes when no bug is planted, so the failures
    below come from the planted bugs alone."""
    for hidden, output, kind in (("tanh", "softmax", "labels"), ("relu", "softmax", "labels"),
                                 ("tanh", "sigmoid", "soft_matrix"),
                                 ("relu", "sigmoid", "soft_matrix")):
        net = funcnn.MLP(sizes_for(3, kind), hidden=hidden, output=output)
        params = make_params(net, 2)
        x, y = make_data(net, kind, 6, 2)
        check_grads(net, params, x, y, grad_fn=numpy_backprop)


def test_backward_pass_dropping_one_over_m_is_caught(make_params):
    net = funcnn.MLP(sizes_for(3, "labels"), hidden="tanh")
    params = make_params(net, 4)
    x, y = make_data(net, "labels", 6, 4)
    with pytest.raises(GradientMismatch) as info:
        check_grads(net, params, x, y,
                    grad_fn=lambda *a: numpy_backprop(*a, drop_mean=True))
    message = str(info.value)
    assert "params[" in message
    for leaf in ("params[0].W", "params[0].b", "params[2].W", "params[2].b"):
        assert leaf in message
    # The ratio is exactly m; finite differences catch it as well.
    with pytest.raises(GradientMismatch, match=r"params\[2\]\.W"):
        check_grads(net, params, x, y, reference="finite_differences",
                    grad_fn=lambda *a: numpy_backprop(*a, drop_mean=True))


def test_sigmoid_bce_backward_that_differentiates_mse_is_caught(make_params):
    net = funcnn.MLP(sizes_for(3, "soft_matrix"), hidden="relu", output="sigmoid")
    params = make_params(net, 5)
    x, y = make_data(net, "soft_matrix", 6, 5)
    with pytest.raises(GradientMismatch, match=r"params\[2\]\.W"):
        check_grads(net, params, x, y, grad_fn=lambda *a: numpy_backprop(*a, bce_as_mse=True))


def test_summed_loss_with_averaged_gradient_is_caught(make_params):
    net = funcnn.MLP(sizes_for(3, "labels"), hidden="tanh")
    params = make_params(net, 6)
    x, y = make_data(net, "labels", 6, 6)
    _, averaged = funcnn.value_and_grad(net, params, x, y)

    def summed(p):
        return x.shape[0] * funcnn.loss(net, p, x, y)

    with pytest.raises(GradientMismatch, match=r"params\[0\]\.W"):
        check_gradient(summed, averaged, params)
    # ... while the gradient that matches the summed loss passes.
    check_gradient(summed, tree_map(lambda g: g * x.shape[0], averaged), params)
