"""The MLP spec, parameter initialisation, the forward pass, the loss and dropout.

Expected values come from plain NumPy re-implementations written here, closed forms,
or statistics of large samples; never from funcnn's own output.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn
from funcnn.activations import ACTIVATIONS, OUTPUTS
from funcnn.initializers import INITIALIZERS
from funcnn.losses import LOSSES
from funcnn.tree import tree_leaves

HIDDEN = tuple(ACTIVATIONS)
# The shapes of test_grads: jax compiles each eager op once per shape, and compiling is
# what costs. Shape-sensitive tests use RAGGED.
SIZES = (5, 5, 5, 5)
RAGGED = (4, 6, 5, 3)
M = 6

# --------------------------------------------------------------- a plain NumPy MLP

_C = math.sqrt(2 / math.pi)
NP_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0.0))),
    "gelu": lambda z: 0.5 * z * (1 + np.tanh(_C * (z + 0.044715 * z**3))),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "softplus": lambda z: np.log1p(np.exp(z)),
    "identity": lambda z: z,
    "softmax": lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True),
}


def np_forward(net, params, x, masks=None):
    a = np.asarray(x, np.float64)
    for i, layer in enumerate(params):
        z = a @ np.asarray(layer.W) + np.asarray(layer.b)
        if i < len(params) - 1:
            a = NP_ACTIVATIONS[net.hidden](z)
            if masks is not None and masks[i] is not None:
                a = a * np.asarray(masks[i])
    return NP_ACTIVATIONS[net.output](z), z


def np_loss(net, params, x, y):
    out, z = np_forward(net, params, x)
    y = np.asarray(y)
    if net.loss == "cross_entropy":
        target = np.eye(z.shape[1])[y] if y.ndim == 1 else y
        return -np.mean(np.sum(target * np.log(out), axis=1))
    y = y.reshape(out.shape)
    if net.loss == "binary_cross_entropy":
        return -np.mean(y * np.log(out) + (1 - y) * np.log(1 - out))
    return np.mean((out - y) ** 2)


def data(net, m=M, seed=0, dtype=np.float64):
    rng = np.random.default_rng([seed, 77])
    x = rng.normal(size=(m, net.sizes[0])).astype(dtype)
    k = net.sizes[-1]
    if net.loss == "cross_entropy":
        y = rng.integers(0, k, size=m)
    elif net.loss == "binary_cross_entropy":
        y = rng.integers(0, 2, size=(m, k)).astype(dtype)
    else:
        y = rng.uniform(0, 1, size=(m, k)).astype(dtype)
    return x, y


def all_dtypes(tree):
    return {np.dtype(leaf.dtype) for leaf in tree_leaves(tree) if hasattr(leaf, "dtype")}


# ---------------------------------------------------------------------- the spec


@pytest.mark.parametrize("output", OUTPUTS)
def test_loss_defaults_from_output(output):
    expected = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy"}.get(output, "mse")
    assert funcnn.MLP((3, 2), output=output).loss == expected


def test_spec_defaults():
    net = funcnn.MLP([3, 4, 2])
    assert (net.sizes, net.hidden, net.output, net.loss, net.dropout) == (
        (3, 4, 2), "relu", "softmax", "cross_entropy", 0.0)
    assert net.n_layers == 2
    assert all(type(s) is int for s in funcnn.MLP(np.array([3, 4, 2])).sizes)


@pytest.mark.parametrize("sizes", [(), (3,), [4], (3, 0, 2), (3, -1, 2), (3, 2.5, 2),
                                   (3, True, 2), (3, 2, 0)])
def test_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes|widths"):
        funcnn.MLP(sizes)


@pytest.mark.parametrize("sizes", ["32", 3, None])
def test_sizes_must_be_a_sequence(sizes):
    with pytest.raises(TypeError, match="sizes"):
        funcnn.MLP(sizes)


@pytest.mark.parametrize(
    ("field", "value", "known"),
    [("hidden", "swish", ACTIVATIONS), ("output", "relu6", OUTPUTS), ("loss", "hinge", LOSSES)],
)
def test_unknown_names_list_the_known_ones(field, value, known):
    with pytest.raises(ValueError, match=value) as info:
        funcnn.MLP((3, 2), **{field: value})
    for name in known:
        assert name in str(info.value)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5, float("nan"), True, "0.5", None])
def test_bad_dropout(dropout):
    with pytest.raises(ValueError, match="dropout"):
        funcnn.MLP((3, 4, 2), dropout=dropout)


@pytest.mark.parametrize(
    ("output", "loss"),
    [("identity", "cross_entropy"), ("sigmoid", "cross_entropy"),
     ("softmax", "binary_cross_entropy"), ("tanh", "binary_cross_entropy")],
)
def test_loss_output_mismatch(output, loss):
    with pytest.raises(ValueError, match=f"needs output .*got output '{output}'"):
        funcnn.MLP((3, 2), output=output, loss=loss)


def test_softmax_needs_two_units():
    with pytest.raises(ValueError, match="2 units"):
        funcnn.MLP((3, 1))
    assert funcnn.MLP((3, 1), output="sigmoid").loss == "binary_cross_entropy"


def test_spec_is_frozen_hashable_and_compares_by_value():
    a = funcnn.MLP((3, 4, 2), hidden="tanh", dropout=0.5)
    b = funcnn.MLP([3, 4, 2], hidden="tanh", dropout=0.5, loss="cross_entropy")
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert a != funcnn.MLP((3, 4, 2), hidden="relu", dropout=0.5)
    assert a != funcnn.MLP((3, 4, 2), hidden="tanh", dropout=0.25)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.dropout = 0.0


def test_spec_is_a_static_argument_of_jit(make_params):
    traces = []

    @partial(jax.jit, static_argnums=0)
    def predict(net, params, x):
        traces.append(net)
        return funcnn.predict(net, params, x)

    net = funcnn.MLP(SIZES)
    params = make_params(net, 0, backend="jax")
    x = jnp.ones((M, SIZES[0]))
    out = predict(net, params, x)
    predict(funcnn.MLP(list(SIZES)), params, x)  # equal spec: no new trace
    assert len(traces) == 1
    np.testing.assert_allclose(np.asarray(out), np.asarray(funcnn.predict(net, params, x)),
                               rtol=1e-12)
    predict(funcnn.MLP(SIZES, hidden="tanh"), params, x)
    assert len(traces) == 2


# ---------------------------------------------------------------------- init_params


def test_init_params_shapes_types_and_zero_biases(backend):
    net = funcnn.MLP(RAGGED)
    params = funcnn.init_params(net, 0, backend=backend)
    assert type(params) is tuple and len(params) == 3
    array_type = jax.Array if backend == "jax" else np.ndarray
    for layer, n_in, n_out in zip(params, RAGGED[:-1], RAGGED[1:], strict=True):
        assert type(layer) is funcnn.Dense
        assert layer.W.shape == (n_in, n_out) and layer.b.shape == (n_out,)
        assert isinstance(layer.W, array_type) and isinstance(layer.b, array_type)
        assert np.count_nonzero(np.asarray(layer.b)) == 0
        assert np.count_nonzero(np.asarray(layer.W)) == layer.W.size


def test_init_params_dtype(backend):
    net = funcnn.MLP(SIZES)
    assert all_dtypes(funcnn.init_params(net, 0, backend=backend)) == {np.dtype(np.float32)}
    p64 = funcnn.init_params(net, 0, backend=backend, dtype="float64")
    assert all_dtypes(p64) == {np.dtype(np.float64)}
    assert all_dtypes(funcnn.init_params(net, 0, backend=backend, dtype=np.float64)) == {
        np.dtype(np.float64)}


@pytest.mark.parametrize("dtype", ["float16", "int32", np.complex64, "bogus"])
def test_init_params_rejects_other_dtypes(dtype):
    with pytest.raises(ValueError, match="float32 or float64"):
        funcnn.init_params(funcnn.MLP((3, 2)), 0, dtype=dtype)


def test_init_params_is_deterministic_in_the_key(backend):
    net = funcnn.MLP(SIZES)

    def raw(params):
        return [np.asarray(leaf).tobytes() for leaf in tree_leaves(params)]

    a = funcnn.init_params(net, 3, backend=backend)
    assert raw(a) == raw(funcnn.init_params(net, 3, backend=backend))
    assert raw(a) == raw(funcnn.init_params(net, funcnn.random.key(3, backend)))
    b = funcnn.init_params(net, 4, backend=backend)
    assert not np.allclose(np.asarray(a[0].W), np.asarray(b[0].W))
    assert not np.allclose(np.asarray(a[1].W), np.asarray(b[1].W))


def test_a_jax_key_implies_the_jax_backend():
    params = funcnn.init_params(funcnn.MLP(SIZES), funcnn.random.key(0, "jax"))
    assert all(isinstance(leaf, jax.Array) for leaf in tree_leaves(params))


# name -> (variance given (fan_in, fan_out), distribution)
INIT_RULES = {
    "he_normal": (lambda i, o: 2 / i, "normal"),
    "he_uniform": (lambda i, o: 2 / i, "uniform"),
    "glorot_normal": (lambda i, o: 2 / (i + o), "normal"),
    "glorot_uniform": (lambda i, o: 2 / (i + o), "uniform"),
    "lecun_normal": (lambda i, o: 1 / i, "normal"),
    "lecun_uniform": (lambda i, o: 1 / i, "uniform"),
}


@pytest.mark.parametrize("name", sorted(INIT_RULES))
def test_initializer_variance(backend, name):
    fan_in, fan_out = 400, 100  # distinct fans tell fan_in, fan_out and their mean apart
    net = funcnn.MLP((fan_in, fan_out), output="identity")
    W = np.asarray(funcnn.init_params(net, 1, backend=backend, init=name)[0].W, np.float64)
    var_rule, dist = INIT_RULES[name]
    var = var_rule(fan_in, fan_out)
    n = W.size
    # Standard errors: mean sqrt(var/n); sample variance var*sqrt(2/n) (normal), less (uniform).
    assert abs(W.mean()) < 5 * math.sqrt(var / n)
    assert W.var() == pytest.approx(var, rel=5 * math.sqrt(2 / n))
    limit = math.sqrt(3 * var)
    if dist == "uniform":
        assert np.abs(W).max() <= limit
        # a uniform has no tails: a quarter of the mass lies beyond limit/2 in each direction
        assert np.mean(W > limit / 2) == pytest.approx(0.25, abs=0.01)
    else:
        # about 8.3% of a normal lies beyond sqrt(3) standard deviations
        assert np.mean(np.abs(W) > limit) == pytest.approx(0.0833, abs=0.01)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("he", "he_normal"), ("kaiming", "he_normal"), ("glorot", "glorot_uniform"),
     ("xavier", "glorot_uniform"), ("xavier_normal", "glorot_normal"),
     ("xavier_uniform", "glorot_uniform"), ("lecun", "lecun_normal")],
)
def test_initializer_aliases(alias, canonical):
    net = funcnn.MLP((5, 4, 3))
    a = funcnn.init_params(net, 2, init=alias)
    b = funcnn.init_params(net, 2, init=canonical)
    assert [np.asarray(x).tobytes() for x in tree_leaves(a)] == [
        np.asarray(x).tobytes() for x in tree_leaves(b)]


@pytest.mark.parametrize("hidden", HIDDEN)
def test_default_initializer_follows_the_activation(hidden):
    net = funcnn.MLP((5, 4, 3), hidden=hidden)
    expected = "glorot_uniform" if hidden in ("tanh", "sigmoid", "identity") else "he_normal"
    a = funcnn.init_params(net, 2)
    b = funcnn.init_params(net, 2, init=expected)
    assert all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
               for x, y in zip(tree_leaves(a), tree_leaves(b), strict=True))


def test_unknown_initializer_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown initializer 'orthogonal'") as info:
        funcnn.init_params(funcnn.MLP((3, 2)), 0, init="orthogonal")
    for name in INITIALIZERS:
        assert name in str(info.value)


def test_callable_initializer(backend):
    calls = []

    def init(key, shape, dtype):
        calls.append((np.asarray(key).tobytes(), shape, np.dtype(dtype)))
        return funcnn.to_backend(np.full(shape, 0.25), backend, dtype=dtype)

    net = funcnn.MLP((3, 4, 2))
    params = funcnn.init_params(net, 0, backend=backend, init=init)
    assert [c[1:] for c in calls] == [((3, 4), np.float32), ((4, 2), np.float32)]
    assert calls[0][0] != calls[1][0], "each layer gets its own key"
    for layer in params:
        np.testing.assert_allclose(np.asarray(layer.W), 0.25)
        assert np.count_nonzero(np.asarray(layer.b)) == 0


# ---------------------------------------------------------------------- forward


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_outputs_are_probabilities(backend, output, make_params):
    net = funcnn.MLP(SIZES, output=output)
    params = make_params(net, 1, backend=backend)
    x = np.random.default_rng(1).normal(size=(M, SIZES[0])) * 3
    out = np.asarray(funcnn.forward(net, params, x)[0])
    assert out.shape == (M, SIZES[-1])
    assert ((out > 0) & (out < 1)).all()
    if output == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_forward_matches_plain_numpy(make_params, hidden, output):
    net = funcnn.MLP(SIZES, hidden=hidden, output=output)
    params = make_params(net, 2)
    x, _ = data(net)
    out, cache = funcnn.forward(net, params, x)
    expected, z = np_forward(net, params, x)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cache.zs[-1], z, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(funcnn.predict(net, params, x), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("output", "loss", "target"),
    [("softmax", None, "labels"), ("softmax", None, "onehot"), ("sigmoid", None, "binary"),
     ("sigmoid", None, "vector"), ("identity", None, "real"), ("softmax", "mse", "onehot"),
     ("tanh", "mse", "real"), ("sigmoid", "mse", "real")],
)
def test_loss_matches_plain_numpy(backend, make_params, output, loss, target):
    k = 1 if target == "vector" else 5
    net = funcnn.MLP((5, 5, k), hidden="elu", output=output, loss=loss)
    params = make_params(net, 3, backend=backend)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(M, 5))
    y = {
        "labels": lambda: rng.integers(0, k, size=M),
        "onehot": lambda: np.eye(k)[rng.integers(0, k, size=M)],
        "binary": lambda: rng.integers(0, 2, size=(M, k)).astype(float),
        "vector": lambda: rng.integers(0, 2, size=M).astype(float),
        "real": lambda: rng.normal(size=(M, k)),
    }[target]()
    expected = np_loss(net, funcnn.to_backend(params, "numpy"), x, y)
    np.testing.assert_allclose(float(funcnn.loss(net, params, x, y)), expected, rtol=1e-12)
    value, _ = funcnn.value_and_grad(net, params, x, y)
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)


@pytest.mark.parametrize("output", ["softmax", "sigmoid", "identity", "tanh"])
@pytest.mark.parametrize("hidden", HIDDEN)
def test_numpy_and_jax_forward_agree(make_params, hidden, output):
    net = funcnn.MLP(SIZES, hidden=hidden, output=output)
    p64 = make_params(net, 4)
    x, _ = data(net)
    out_np = funcnn.forward(net, p64, x)[0]
    out_jax = funcnn.forward(net, funcnn.to_backend(p64, "jax"), x)[0]
    assert isinstance(out_np, np.ndarray) and isinstance(out_jax, jax.Array)
    np.testing.assert_allclose(np.asarray(out_jax), out_np, rtol=1e-12, atol=1e-15)
    if output != "softmax":  # (float32 once per activation is enough)
        return
    # float32 on both sides: agreement to float32 rounding
    p32 = funcnn.to_backend(p64, "numpy", dtype="float32")
    out32 = funcnn.forward(net, p32, x.astype(np.float32))[0]
    out32_jax = funcnn.forward(net, funcnn.to_backend(p32, "jax"), x.astype(np.float32))[0]
    assert out32.dtype == np.float32 and out32_jax.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out32_jax), out32, rtol=2e-5, atol=1e-6)


def test_input_validation(make_params):
    net = funcnn.MLP((3, 4, 2))
    params = make_params(net, 0)
    with pytest.raises(ValueError, match="expects 3"):
        funcnn.forward(net, params, np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"x\[None, :\]"):
        funcnn.forward(net, params, np.ones(3))
    with pytest.raises(ValueError, match="empty batch"):
        funcnn.forward(net, params, np.ones((0, 3)))
    with pytest.raises(ValueError, match="NaN"):
        funcnn.forward(net, params, np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(TypeError, match="real numbers"):
        funcnn.forward(net, params, np.array([["a", "b", "c"]]))
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        funcnn.loss(net, params, x, np.array([0, 2]))
    with pytest.raises(TypeError, match="integers"):
        funcnn.loss(net, params, x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="rows"):
        funcnn.loss(net, params, x, np.array([0, 1, 1]))
    bce = funcnn.MLP((3, 4, 2), output="sigmoid")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        funcnn.loss(bce, params, x, np.array([[0.0, 2.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        funcnn.loss(bce, params, x, np.ones((2, 3)))


def test_params_validation(make_params):
    net = funcnn.MLP((3, 4, 2))
    x = np.ones((2, 3))
    other = make_params(funcnn.MLP((3, 5, 2)), 0)
    with pytest.raises(ValueError, match=r"\[0\]\.W \(shape \(3, 5\) vs \(3, 4\)\)"):
        funcnn.forward(net, other, x)
    with pytest.raises(ValueError, match="first difference"):
        funcnn.forward(net, other[:1], x)
    params = make_params(net, 0)
    mixed = (params[0], funcnn.Dense(params[1].W, params[1].b.astype(np.float32)))
    with pytest.raises(TypeError, match=r"params\[1\]\.b"):
        funcnn.forward(net, mixed, x)
    with pytest.raises(TypeError, match="funcnn.MLP"):
        funcnn.forward((3, 4, 2), params, x)
    with pytest.raises(TypeError, match="Cache"):
        funcnn.backprop(net, params, (x,), np.array([0, 1]))


def test_mixed_backends_raise(make_params):
    net = funcnn.MLP((3, 4, 2))
    params = make_params(net, 0)
    x = np.ones((2, 3))
    with pytest.raises(TypeError, match="mixed backends"):
        funcnn.forward(net, params, jnp.asarray(x))
    half = (funcnn.to_backend(params[0], "jax"), params[1])
    with pytest.raises(TypeError, match="mixed backends"):
        funcnn.value_and_grad(net, half, x, np.array([0, 1]))
    # jax params with NumPy data are fine: the data are moved to jax
    out = funcnn.forward(net, funcnn.to_backend(params, "jax"), x)[0]
    assert isinstance(out, jax.Array)


# ---------------------------------------------------------------------- dropout


def test_dropout_is_inactive_when_not_training(backend, make_params):
    net = funcnn.MLP(SIZES, dropout=0.5)
    plain = funcnn.MLP(SIZES)
    params = make_params(net, 5, backend=backend)
    x, y = data(net)
    key = funcnn.random.key(0, backend)
    out, cache = funcnn.forward(net, params, x, key=key, train=False)
    assert cache.masks == (None, None)
    expected = np_forward(plain, funcnn.to_backend(params, "numpy"), x)[0]
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12)
    np.testing.assert_allclose(float(funcnn.loss(net, params, x, y, key=key)),
                               float(funcnn.loss(plain, params, x, y)), rtol=1e-12)
    # train=True without any dropout needs no key and changes nothing
    out_train = funcnn.forward(plain, params, x, train=True)[0]
    np.testing.assert_allclose(np.asarray(out_train), expected, rtol=1e-12)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_is_inverted_and_preserves_the_mean(backend, p):
    net = funcnn.MLP((8, 500, 2), hidden="sigmoid", dropout=p)
    params = funcnn.init_params(net, 0, backend=backend, dtype="float64")
    m = 400
    x = np.random.default_rng(6).normal(size=(m, 8))
    out, cache = funcnn.forward(net, params, x, key=funcnn.random.key(1, backend), train=True)
    mask = np.asarray(cache.masks[0])
    hidden = np.asarray(cache.hidden[0])
    n = mask.size
    kept = mask > 0
    np.testing.assert_allclose(mask[kept], 1 / (1 - p), rtol=1e-12)
    np.testing.assert_allclose(mask[~kept], 0.0, atol=0)
    assert np.mean(~kept) == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / n))
    assert mask.mean() == pytest.approx(1.0, abs=5 * math.sqrt(p / (1 - p) / n))
    np.testing.assert_allclose(np.asarray(cache.inputs[1]), hidden * mask, rtol=1e-12)
    # inverted dropout keeps the expected activation: E[h * mask] = E[h]
    dropped = np.asarray(cache.inputs[1])
    assert dropped.mean() == pytest.approx(hidden.mean(), rel=0.02)
    # the output is the output of the dropped-out activations
    expected = np_forward(net, funcnn.to_backend(params, "numpy"), x, masks=(mask,))[0]
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-10)


def test_dropout_needs_a_key(make_params):
    net = funcnn.MLP((3, 4, 2), dropout=0.5)
    params = make_params(net, 0)
    x, y = data(net)
    with pytest.raises(ValueError, match="needs a key"):
        funcnn.forward(net, params, x, train=True)
    with pytest.raises(ValueError, match="needs a key"):
        funcnn.value_and_grad(net, params, x, y, train=True)
    with pytest.raises(ValueError, match="needs a key"):
        funcnn.loss(net, params, x, y, train=True)


def test_dropout_masks_follow_the_key(backend, make_params):
    net = funcnn.MLP(SIZES, dropout=0.5)
    params = make_params(net, 0, backend=backend)
    x, _ = data(net)

    def masks(key):
        cache = funcnn.forward(net, params, x, key=key, train=True)[1]
        return [np.asarray(mk) for mk in cache.masks]

    a = masks(funcnn.random.key(3, backend))
    b = masks(funcnn.random.key(3, backend))
    assert all(u.tobytes() == v.tobytes() for u, v in zip(a, b, strict=True))
    c = masks(funcnn.random.key(4, backend))
    assert all(not np.allclose(u, v) for u, v in zip(a, c, strict=True))
    assert not np.allclose(a[0], a[1]), "layers draw independent masks"
    d = masks(3)  # an int seed is a key
    assert all(u.tobytes() == v.tobytes() for u, v in zip(a, d, strict=True))


# ---------------------------------------------------------------------- dtypes and jit

DTYPE_CASES = [("softmax", None, "labels"), ("softmax", None, "onehot"),
               ("sigmoid", None, "binary"), ("identity", None, "real"),
               ("softmax", "mse", "onehot"), ("tanh", "mse", "real")]


@pytest.mark.parametrize(("output", "loss", "target"), DTYPE_CASES)
def test_float32_stays_float32(backend, output, loss, target):
    """No float64 sneaks in (x64 is on, so jax would show one): data of any dtype is cast."""
    net = funcnn.MLP(SIZES, hidden="gelu", output=output, loss=loss, dropout=0.3)
    params = funcnn.init_params(net, 0, backend=backend)
    assert all_dtypes(params) == {np.dtype(np.float32)}
    rng = np.random.default_rng(8)
    x = rng.normal(size=(M, SIZES[0]))  # float64 on purpose
    k = SIZES[-1]
    y = {"labels": rng.integers(0, k, size=M), "onehot": np.eye(k)[rng.integers(0, k, size=M)],
         "binary": rng.integers(0, 2, size=(M, k)).astype(np.float64),
         "real": rng.normal(size=(M, k))}[target]
    key = funcnn.random.key(0, backend)
    out, cache = funcnn.forward(net, params, x, key=key, train=True)
    f32 = {np.dtype(np.float32)}
    assert all_dtypes((out, cache)) == f32
    assert all_dtypes(funcnn.backprop(net, params, cache, y)) == f32
    value, grads = funcnn.value_and_grad(net, params, x, y, key=key, train=True)
    assert all_dtypes((value, grads)) == f32
    assert np.dtype(funcnn.loss(net, params, x, y).dtype) == np.float32
    assert np.dtype(funcnn.predict(net, params, x.astype(np.int64)).dtype) == np.float32


def test_float64_params_compute_in_float64(backend):
    net = funcnn.MLP(SIZES, output="sigmoid")
    params = funcnn.init_params(net, 0, backend=backend, dtype="float64")
    x, y = data(net, dtype=np.float32)
    value, grads = funcnn.value_and_grad(net, params, x, y)
    assert all_dtypes((value, grads)) == {np.dtype(np.float64)}


def test_jit_of_value_and_grad(make_params):
    net = funcnn.MLP(SIZES, hidden="tanh", dropout=0.25)
    params = funcnn.to_backend(make_params(net, 9), "jax", dtype="float32")
    x, y = data(net, dtype=np.float32)
    key = funcnn.random.key(2, "jax")
    step = jax.jit(funcnn.value_and_grad, static_argnums=0, static_argnames="train")
    value, grads = step(net, params, x, y, key=key, train=True)
    value_eager, grads_eager = funcnn.value_and_grad(net, params, x, y, key=key, train=True)
    assert np.dtype(value.dtype) == np.float32
    np.testing.assert_allclose(float(value), float(value_eager), rtol=1e-5)
    for g, e in zip(tree_leaves(grads), tree_leaves(grads_eager), strict=True):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-6)
    # a different key under the same compiled function gives other masks
    other, _ = step(net, params, x, y, key=funcnn.random.key(3, "jax"), train=True)
    assert not np.isclose(float(other), float(value), rtol=1e-6)
