"""Tests that try to break funcnn's public boundary with bad shapes, dtypes and values.

Every bad input must raise ``ValueError`` or ``TypeError`` from funcnn's own code (never
from deep inside NumPy or jax), with a message that names the problem: the words of the
check, the numbers given and expected, the leaf path, the list of known names. Most
tests draw their inputs with hypothesis and run on both backends; the jit tests check
that shapes and dtypes are still refused while tracing and that values are not checked.

jax compiles eagerly executed operations once per shape and dtype, so the jax cases
either fail validation before any computation or reuse a few fixed shapes.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import funcnn
from funcnn import optim
from funcnn.activations import ACTIVATIONS, OUTPUTS
from funcnn.backend import BACKENDS
from funcnn.initializers import INITIALIZERS
from funcnn.losses import LOSSES
from funcnn.tree import describe, tree_leaves

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "funcnn"

# Bounded so that the whole file runs in well under 30 s. The autouse fixture of
# conftest.py only restores the default backend, so it is safe to share between examples.
FEW = settings(max_examples=25, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
VERY_FEW = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
# For tests parametrized over the entry points: each entry point gets its own examples.
PER_ENTRY = settings(max_examples=6, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])

# Every optimizer of the family: each ``*_update`` with its ``*_init``.
UPDATES = sorted(name for name in optim.__all__ if name.endswith("_update"))


def _init_for(update_name: str):
    return getattr(optim, update_name.replace("adamw", "adam").replace("_update", "_init"))


# ---------------------------------------------------------------------------- helpers


def _raises(error, fn, *words: str) -> str:
    """Call ``fn``; it must raise ``error`` from funcnn's code with every word in its message."""
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} is not in the message:\n{message}"
    assert "broadcast" not in message.lower(), message
    raiser = Path(str(info.traceback[-1].path)).resolve()
    assert PACKAGE in raiser.parents, f"raised from {raiser}, not from funcnn:\n{message}"
    return message


def _params(net, backend, dtype="float32", seed=0):
    """Params made on NumPy and moved (jax would compile an initializer for every shape)."""
    return funcnn.to_backend(funcnn.init_params(net, seed, dtype=dtype), backend)


def _data(backend, array):
    return funcnn.to_backend(array, backend)


def _labels(m: int, k: int) -> np.ndarray:
    return np.arange(m) % k


def _clean_data(net, like_y):
    """Valid training data (4 rows) whose targets have the form of ``like_y``."""
    k = net.sizes[-1]
    y = _labels(4, k)
    if np.ndim(like_y) == 2:
        y = np.eye(k, dtype=np.float32)[y]
    return np.zeros((4, net.sizes[0]), np.float32), y


def _fit(net, params, x, y, **kwargs):
    kwargs = {"epochs": 1, "batch_size": 4, "key": 0, "progress": False, **kwargs}
    return funcnn.fit(net, params, optim.sgd(0.1), x, y, **kwargs)


def _train_step(net, params, x, y):
    opt = optim.sgd(0.1)
    return funcnn.make_train_step(net, opt)(params, opt.init(params), x, y)


def _backprop(net, params, x, y):
    """backprop with a valid cache for ``x`` (so only ``y`` is under test)."""
    return funcnn.backprop(net, params, funcnn.forward(net, params, x)[1], y)


# The public functions that take inputs x (and targets y).
X_ENTRY_POINTS = {
    "forward": lambda net, p, x, y: funcnn.forward(net, p, x),
    "predict": lambda net, p, x, y: funcnn.predict(net, p, x),
    "loss": funcnn.loss,
    "value_and_grad": funcnn.value_and_grad,
    "evaluate": funcnn.evaluate,
    "fit": _fit,
    "make_train_step": _train_step,
    "fit validation": lambda net, p, x, y: _fit(net, p, *_clean_data(net, y), validation=(x, y)),
    "check_grads": lambda net, p, x, y: funcnn.testing.check_grads(net, p, x, y),
}
Y_ENTRY_POINTS = {
    name: fn for name, fn in X_ENTRY_POINTS.items() if name not in ("forward", "predict")
} | {"backprop": _backprop}


def _numpy_only(name: str, backend: str) -> bool:
    """check_grads is a NumPy/float64 tool: it converts everything, so test it once."""
    return name == "check_grads" and backend == "jax"


# ---------------------------------------------------------------------------- x


@pytest.mark.parametrize("entry", sorted(X_ENTRY_POINTS))
@PER_ENTRY
@given(data=st.data(), n_in=st.integers(1, 6), m=st.integers(1, 5),
       backend=st.sampled_from(BACKENDS))
def test_x_with_the_wrong_number_of_features(data, n_in, m, entry, backend):
    if _numpy_only(entry, backend):
        backend = "numpy"
    wrong = data.draw(st.integers(1, 8).filter(lambda n: n != n_in), label="features")
    net = funcnn.MLP((n_in, 4, 3))
    x = _data(backend, np.ones((m, wrong), np.float32))
    message = _raises(ValueError, lambda: X_ENTRY_POINTS[entry](
        net, _params(net, backend), x, _labels(m, 3)), "features")
    assert f"x has {wrong} features but the net expects {n_in}" in message


@pytest.mark.parametrize("entry", sorted(X_ENTRY_POINTS))
@PER_ENTRY
@given(shape=st.lists(st.integers(1, 3), min_size=0, max_size=4).filter(lambda s: len(s) != 2),
       backend=st.sampled_from(BACKENDS))
def test_x_of_the_wrong_rank(shape, entry, backend):
    if _numpy_only(entry, backend):
        backend = "numpy"
    net = funcnn.MLP((3, 4, 2))
    x = _data(backend, np.ones(shape, np.float32))
    message = _raises(ValueError, lambda: X_ENTRY_POINTS[entry](
        net, _params(net, backend), x, _labels(2, 2)), "rank", f"rank {len(shape)}")
    if len(shape) == 1:
        assert "x[None, :]" in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_x_is_refused(backend):
    net = funcnn.MLP((3, 2))
    _raises(ValueError, lambda: funcnn.forward(net, _params(net, backend),
                                               _data(backend, np.ones((0, 3)))), "empty batch")


# ---------------------------------------------------------------------------- y


@pytest.mark.slow
@pytest.mark.parametrize("entry", sorted(Y_ENTRY_POINTS))
@PER_ENTRY
@given(data=st.data(), m=st.integers(1, 6), backend=st.sampled_from(BACKENDS),
       loss=st.sampled_from(["cross_entropy", "mse"]))
def test_y_whose_length_differs_from_x(data, m, entry, backend, loss):
    if _numpy_only(entry, backend):
        backend = "numpy"
    n_y = data.draw(st.integers(1, 8).filter(lambda n: n != m), label="len(y)")
    net = funcnn.MLP((3, 4, 2), output="softmax" if loss == "cross_entropy" else "identity")
    y = _labels(n_y, 2) if loss == "cross_entropy" else np.zeros((n_y, 2), np.float32)
    x = _data(backend, np.ones((m, 3), np.float32))
    message = _raises(ValueError, lambda: Y_ENTRY_POINTS[entry](
        net, _params(net, backend), x, _data(backend, y)), "length")
    assert f"y has length {n_y} but x has {m} rows" in message


@pytest.mark.slow
@pytest.mark.parametrize("entry", sorted(Y_ENTRY_POINTS))
@PER_ENTRY
@given(data=st.data(), k=st.integers(2, 5), backend=st.sampled_from(BACKENDS))
def test_class_labels_outside_the_range_of_classes(data, k, entry, backend):
    if _numpy_only(entry, backend):
        backend = "numpy"
    m = data.draw(st.integers(1, 6), label="m")
    labels = data.draw(st.lists(st.integers(-3, k + 3), min_size=m, max_size=m)
                       .filter(lambda ys: any(not 0 <= v < k for v in ys)), label="labels")
    net = funcnn.MLP((3, 4, k))
    y = np.asarray(labels, dtype=data.draw(st.sampled_from([np.int32, np.int64])))
    first = next(i for i, v in enumerate(labels) if not 0 <= v < k)
    _raises(ValueError, lambda: Y_ENTRY_POINTS[entry](
        net, _params(net, backend), _data(backend, np.ones((m, 3), np.float32)),
        _data(backend, y)), "labels", f"[0, {k})", f"y[{first}] = {labels[first]}")


@pytest.mark.parametrize("entry", sorted(Y_ENTRY_POINTS))
@PER_ENTRY
@given(dtype=st.sampled_from([np.float32, np.float64, np.bool_]),
       backend=st.sampled_from(BACKENDS))
def test_class_labels_that_are_not_integers(dtype, entry, backend):
    if _numpy_only(entry, backend):
        backend = "numpy"
    net = funcnn.MLP((3, 4, 2))
    y = _data(backend, np.array([0, 1, 1, 0], dtype=dtype))
    _raises(TypeError, lambda: Y_ENTRY_POINTS[entry](
        net, _params(net, backend), _data(backend, np.ones((4, 3), np.float32)), y),
        "labels", "integers", str(np.dtype(dtype)))


@pytest.mark.parametrize("entry", sorted(Y_ENTRY_POINTS))
@PER_ENTRY
@given(data=st.data(), k=st.integers(2, 5), backend=st.sampled_from(BACKENDS))
def test_one_hot_rows_of_the_wrong_width(data, k, entry, backend):
    if _numpy_only(entry, backend):
        backend = "numpy"
    width = data.draw(st.integers(1, 7).filter(lambda w: w != k), label="width")
    net = funcnn.MLP((3, 4, k))
    y = _data(backend, np.eye(width, dtype=np.float32)[np.arange(4) % width])
    _raises(ValueError, lambda: Y_ENTRY_POINTS[entry](
        net, _params(net, backend), _data(backend, np.ones((4, 3), np.float32)), y),
        "one-hot rows", f"width {width}", f"{k} outputs")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("output, shape, want", [
    ("identity", (4, 3), "(4, 2)"), ("identity", (4,), "(4, 2)"), ("sigmoid", (4, 2, 1), "(4, 2)"),
    ("softmax", (4, 2, 1), "rank 3"),
])
def test_targets_of_the_wrong_shape_for_the_loss(backend, output, shape, want):
    net = funcnn.MLP((3, 4, 2), output=output)
    y = _data(backend, np.zeros(shape, np.float32))
    _raises(ValueError, lambda: funcnn.loss(net, _params(net, backend),
                                            _data(backend, np.ones((4, 3))), y), want)


def test_binary_targets_outside_zero_one():
    net = funcnn.MLP((3, 4, 2), output="sigmoid")
    y = np.array([[0.0, 1.0], [2.0, 0.0]])
    _raises(ValueError, lambda: funcnn.loss(net, _params(net, "numpy"), np.ones((2, 3)), y),
            "[0, 1]")


# ---------------------------------------------------------------------------- NaN and inf


@pytest.mark.parametrize("where", ["x", "y", "one-hot y"])
@pytest.mark.parametrize("entry", ["loss", "value_and_grad", "evaluate", "fit",
                                   "make_train_step", "fit validation", "check_grads"])
@PER_ENTRY
@given(data=st.data(), bad=st.sampled_from([math.nan, math.inf, -math.inf]),
       backend=st.sampled_from(BACKENDS))
def test_nan_or_infinite_values_in_x_or_y(data, bad, where, backend, entry):
    if _numpy_only(entry, backend):
        backend = "numpy"
    m = data.draw(st.integers(1, 5), label="m")
    i, j = data.draw(st.integers(0, m - 1), label="row"), data.draw(st.integers(0, 1), "col")
    net = funcnn.MLP((2, 4, 2), output="softmax" if where == "one-hot y" else "identity")
    x = np.zeros((m, 2), np.float32)
    y = np.eye(2, dtype=np.float32)[np.arange(m) % 2]
    (x if where == "x" else y)[i, j] = bad
    name = "x" if where == "x" else "y"
    _raises(ValueError, lambda: X_ENTRY_POINTS[entry](
        net, _params(net, backend), _data(backend, x), _data(backend, y)),
        f"{name} holds NaN or infinite values", f"index ({i}, {j})")


# ---------------------------------------------------------------------------- dtypes

ACCEPTED_X = [np.bool_, np.int8, np.int32, np.int64, np.uint8, np.float16, np.float32,
              np.float64]


@pytest.mark.slow
@FEW
@given(x_dtype=st.sampled_from(ACCEPTED_X), dtype=st.sampled_from(["float32", "float64"]),
       backend=st.sampled_from(BACKENDS))
def test_real_inputs_are_cast_to_the_param_dtype(x_dtype, dtype, backend):
    net = funcnn.MLP((3, 4, 2))
    params = _params(net, backend, dtype)
    x = _data(backend, (np.arange(12).reshape(4, 3) % 2).astype(x_dtype))
    out = funcnn.predict(net, params, x)
    loss, grads = funcnn.value_and_grad(net, params, x, _labels(4, 2))
    assert out.dtype == np.dtype(dtype) and loss.dtype == np.dtype(dtype)
    assert {leaf.dtype for layer in grads for leaf in layer} == {np.dtype(dtype)}
    # integer and boolean targets of the regression losses are cast too
    mse = funcnn.MLP((3, 4, 2), output="identity")
    y = (np.arange(8).reshape(4, 2) % 2).astype(x_dtype)
    assert funcnn.loss(mse, _params(mse, backend, dtype), x, y).dtype == np.dtype(dtype)


REFUSED = {
    "complex64": np.ones((2, 3), np.complex64),
    "complex128": np.ones((2, 3), np.complex128),
    "object": np.array([[1.0, None, 2.0], [0.0, 1.0, 2.0]], dtype=object),
    "str": np.array([["a", "b", "c"], ["d", "e", "f"]]),
    "bytes": np.array([[b"a", b"b", b"c"], [b"d", b"e", b"f"]]),
    "datetime": np.zeros((2, 3), "datetime64[s]"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("entry", ["forward", "loss", "fit", "evaluate"])
def test_complex_object_and_string_inputs_are_refused(kind, entry):
    net = funcnn.MLP((3, 4, 2))
    params = _params(net, "numpy")
    _raises(TypeError, lambda: X_ENTRY_POINTS[entry](net, params, REFUSED[kind], _labels(2, 2)),
            "x must hold real numbers", str(REFUSED[kind].dtype))
    y = REFUSED[kind][:, 0]
    if entry != "forward":
        _raises(TypeError, lambda: X_ENTRY_POINTS[entry](net, params, np.ones((2, 3)), y),
                "y must hold real numbers")


@pytest.mark.parametrize("dtype", ["complex64", "int32", "bool"])
def test_complex_jax_inputs_and_non_float_params_are_refused(dtype):
    net = funcnn.MLP((3, 4, 2))
    params = _params(net, "jax")
    if dtype == "complex64":
        _raises(TypeError, lambda: funcnn.forward(net, params, jnp.ones((2, 3), dtype)),
                "real numbers", "complex64")
    bad = funcnn.to_backend(params, "jax", dtype=dtype)
    _raises(TypeError, lambda: funcnn.forward(net, bad, jnp.ones((2, 3))),
            "params must be float32 or float64")


def test_ragged_or_non_numeric_inputs_are_refused():
    net = funcnn.MLP((3, 2))
    _raises(TypeError, lambda: funcnn.forward(net, _params(net, "numpy"), [[1, 2, 3], [1]]),
            "x must be an array")


@pytest.mark.slow
@FEW
@given(update=st.sampled_from(UPDATES), backend=st.sampled_from(BACKENDS),
       dtype=st.sampled_from(["float32", "float64"]), schedule=st.booleans(),
       clip=st.booleans())
def test_every_optimizer_update_keeps_the_param_dtype(update, backend, dtype, schedule, clip):
    net = funcnn.MLP((3, 4, 2))
    params = _params(net, backend, dtype)
    _, grads = funcnn.value_and_grad(net, params, np.ones((4, 3)), _labels(4, 2))
    lr = funcnn.schedules.cosine_decay(1e-2, 10) if schedule else 1e-2
    if clip:
        grads = optim.clip_by_global_norm(grads, 0.1)
    state = _init_for(update)(params)
    for _ in range(2):
        params, state = getattr(optim, update)(params, grads, state, lr=lr)
    leaves = jax.tree_util.tree_leaves((params, state[1:]))
    assert {leaf.dtype for leaf in leaves} == {np.dtype(dtype)}
    assert int(state.count) == 2


@pytest.mark.slow
def test_float64_on_jax_needs_x64_in_a_process_without_it():
    code = (
        "import funcnn\n"
        "net = funcnn.MLP((2, 3))\n"
        "p = funcnn.init_params(net, 0, backend='jax')\n"
        "assert p[0].W.dtype == 'float32', p[0].W.dtype\n"
        "try:\n"
        "    funcnn.init_params(net, 0, backend='jax', dtype='float64')\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "jax_enable_x64" in out.stdout


def test_default_dtype_is_float32_and_float64_when_asked():
    net = funcnn.MLP((3, 4, 2))
    assert {leaf.dtype for layer in funcnn.init_params(net, 0) for leaf in layer} == {
        np.dtype("float32")}
    p64 = funcnn.init_params(net, 0, dtype="float64")
    assert {leaf.dtype for layer in p64 for leaf in layer} == {np.dtype("float64")}
    for dtype in ("float16", "int32", "complex64", "bfloat16"):
        _raises(ValueError, lambda d=dtype: funcnn.init_params(net, 0, dtype=d),
                "float32 or float64")


# ---------------------------------------------------------------------------- trees


def _mutate(params, how: str, layer: int, leaf: str):
    """A broken copy of ``params`` and the path its first difference should be reported at."""
    if how == "drop layer":
        return params[:-1], "<root>"
    if how == "list":
        return list(params), "<root> (list vs tuple)"
    if how == "plain tuple":
        broken = list(params)
        broken[layer] = tuple(params[layer])
        return tuple(broken), f"[{layer}] (tuple vs DenseParams)"
    arr = getattr(params[layer], leaf)
    xp = jnp if isinstance(arr, jax.Array) else np
    bigger = xp.zeros(tuple(s + 1 for s in arr.shape), arr.dtype)
    broken = list(params)
    broken[layer] = params[layer]._replace(**{leaf: bigger})
    return tuple(broken), f"[{layer}].{leaf} (shape"


MUTATIONS = ["drop layer", "list", "plain tuple", "leaf shape"]


@FEW
@given(how=st.sampled_from(MUTATIONS), layer=st.integers(0, 1), leaf=st.sampled_from("Wb"),
       backend=st.sampled_from(BACKENDS),
       entry=st.sampled_from(["forward", "value_and_grad", "fit", "evaluate", "save"]))
def test_params_that_do_not_fit_the_net(how, layer, leaf, backend, entry, tmp_path_factory):
    net = funcnn.MLP((3, 4, 2))
    broken, path = _mutate(_params(net, backend), how, layer, leaf)
    x, y = np.ones((4, 3), np.float32), _labels(4, 2)
    calls = dict(X_ENTRY_POINTS, save=lambda net, p, x, y: funcnn.save(
        tmp_path_factory.mktemp("ckpt") / "c", p, net=net))
    message = _raises(ValueError, lambda: calls[entry](net, broken, x, y),
                      "first difference at", path)
    assert describe(broken) in message  # the structure given, with leaf shapes
    assert "DenseParams(W=float32[3,4], b=float32[4])" in message  # the one expected


@FEW
@given(update=st.sampled_from(UPDATES), how=st.sampled_from(MUTATIONS),
       layer=st.integers(0, 1), leaf=st.sampled_from("Wb"), backend=st.sampled_from(BACKENDS),
       target=st.sampled_from(["grads", "state"]))
def test_grads_or_state_that_do_not_match_the_params(update, how, layer, leaf, backend,
                                                     target):
    net = funcnn.MLP((3, 4, 2))
    params = _params(net, backend)
    state = _init_for(update)(params)
    grads = params
    field = state._fields[1]  # the first per-leaf field: velocity, mu, nu or sum_sq
    if target == "grads":
        grads, path = _mutate(params, how, layer, leaf)
        name = "grads"
    else:
        broken, path = _mutate(getattr(state, field), how, layer, leaf)
        state = state._replace(**{field: broken})
        name = f"state.{field}"
    message = _raises(ValueError, lambda: getattr(optim, update)(params, grads, state),
                      f"{name} does not match params", "first difference at", path)
    assert describe(params) in message


@pytest.mark.parametrize("update", UPDATES)
def test_state_of_another_optimizer_is_refused(update):
    params = _params(funcnn.MLP((3, 2)), "numpy")
    other = optim.sgd_init if "sgd" not in update else optim.adam_init
    _raises(TypeError, lambda: getattr(optim, update)(params, params, other(params)),
            "state must be a", type(other(params)).__name__)


@FEW
@given(update=st.sampled_from(UPDATES), layer=st.integers(0, 1), leaf=st.sampled_from("Wb"),
       dtype=st.sampled_from(["float64", "int32", "float16"]), backend=st.sampled_from(BACKENDS))
def test_grads_of_another_dtype_than_the_params(update, layer, leaf, dtype, backend):
    net = funcnn.MLP((3, 4, 2))
    params = _params(net, backend)  # float32
    grads = list(params)
    grads[layer] = params[layer]._replace(
        **{leaf: getattr(params[layer], leaf).astype(dtype)})
    _raises(TypeError, lambda: getattr(optim, update)(params, tuple(grads),
                                                      _init_for(update)(params)),
            f"grads[{layer}].{leaf} is {dtype} but params[{layer}].{leaf} is float32")


def test_non_float_params_are_refused_by_the_optimizers():
    params = (funcnn.Dense(np.ones((3, 2), np.int64), np.zeros(2, np.int64)),)
    for update in UPDATES:
        _raises(TypeError, lambda u=update: _init_for(u)(params), "params[0].W is dtype int64")


def test_a_cache_from_another_net_or_dtype_is_refused():
    net = funcnn.MLP((3, 4, 2))
    params = _params(net, "numpy")
    x, y = np.ones((4, 3), np.float32), _labels(4, 2)
    other = funcnn.MLP((3, 5, 2))
    _, cache = funcnn.forward(other, _params(other, "numpy"), x)
    _raises(ValueError, lambda: funcnn.backprop(net, params, cache, y), "cache.zs[0]",
            "(4, 5)", "(4, 4)")
    deeper = funcnn.MLP((3, 4, 4, 2))
    _, cache = funcnn.forward(deeper, _params(deeper, "numpy"), x)
    _raises(ValueError, lambda: funcnn.backprop(net, params, cache, y), "3 layers", "2 layers")
    _, cache64 = funcnn.forward(net, _params(net, "numpy", "float64"), x)
    _raises(TypeError, lambda: funcnn.backprop(net, params, cache64, y), "float64", "float32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_callable_initializer_of_the_wrong_shape_dtype_or_backend(backend):
    net = funcnn.MLP((3, 4, 2))
    xp = jnp if backend == "jax" else np
    cases = {
        "transposed": lambda key, shape, dtype: xp.zeros(shape[::-1], dtype),
        "float64": lambda key, shape, dtype: xp.zeros(shape, "float64"),
        "other backend": lambda key, shape, dtype: funcnn.to_backend(
            np.zeros(shape, dtype), "numpy" if backend == "jax" else "jax"),
    }
    for init in cases.values():
        _raises(ValueError, lambda i=init: funcnn.init_params(net, 0, backend=backend, init=i),
                "the initializer", "params[0].W", "(3, 4)")


# ---------------------------------------------------------------------------- names


def _unknown(known):
    return st.one_of(
        st.text(max_size=10).filter(lambda s: s not in known),
        st.sampled_from([None, 3, b"relu", ("relu",)]),
    )


def _known_listed(message: str, known) -> None:
    for name in known:
        assert name in message, f"{name!r} is not listed in:\n{message}"


@FEW
@given(name=_unknown(ACTIVATIONS))
def test_unknown_activation_lists_the_known_ones(name):
    message = _raises(ValueError, lambda: funcnn.MLP((2, 3, 2), hidden=name),
                      "unknown activation")
    _known_listed(message, ACTIVATIONS)
    _known_listed(_raises(ValueError, lambda: funcnn.activations.get_activation(name),
                          "unknown activation"), ACTIVATIONS)


@FEW
@given(name=_unknown(OUTPUTS))
def test_unknown_output_lists_the_known_ones(name):
    message = _raises(ValueError, lambda: funcnn.MLP((2, 3, 2), output=name),
                      "unknown output activation")
    _known_listed(message, OUTPUTS)


@FEW
@given(name=_unknown(LOSSES).filter(lambda n: n is not None))
def test_unknown_loss_lists_the_known_ones(name):
    message = _raises(ValueError, lambda: funcnn.MLP((2, 3, 2), loss=name), "unknown loss")
    _known_listed(message, LOSSES)


@FEW
@given(name=_unknown(INITIALIZERS).filter(lambda n: n is not None and not callable(n)))
def test_unknown_initializer_lists_the_known_ones(name):
    message = _raises(ValueError, lambda: funcnn.init_params(funcnn.MLP((2, 3)), 0, init=name),
                      "unknown initializer")
    _known_listed(message, INITIALIZERS)


@FEW
@given(name=_unknown(BACKENDS).filter(lambda n: n is not None),
       entry=st.sampled_from(["init_params", "set_backend", "to_backend", "get_backend",
                              "random.key", "load"]))
def test_unknown_backend_lists_the_known_ones(name, entry, tmp_path_factory):
    net = funcnn.MLP((2, 3))
    calls = {
        "init_params": lambda: funcnn.init_params(net, 0, backend=name),
        "set_backend": lambda: funcnn.backend.set_backend(name),
        "to_backend": lambda: funcnn.to_backend(np.ones(2), name),
        "get_backend": lambda: funcnn.get_backend(name),
        "random.key": lambda: funcnn.random.key(0, name),
        "load": lambda: funcnn.load(tmp_path_factory.mktemp("none") / "c", backend=name),
    }
    message = _raises(ValueError, calls[entry], "unknown backend")
    _known_listed(message, BACKENDS)


def test_unknown_backend_in_the_environment(monkeypatch):
    monkeypatch.setenv("FUNCNN_BACKEND", "torch")
    message = _raises(ValueError, lambda: funcnn.init_params(funcnn.MLP((2, 3)), 0),
                      "FUNCNN_BACKEND='torch'")
    _known_listed(message, BACKENDS)


# ---------------------------------------------------------------------------- numbers


def _not_positive():
    return st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf]),
                     st.integers(max_value=0))


@FEW
@given(update=st.sampled_from(UPDATES), lr=_not_positive(), backend=st.sampled_from(BACKENDS),
       wrap=st.sampled_from(["number", "numpy 0-d", "jax 0-d"]))
def test_a_learning_rate_that_is_not_positive(update, lr, backend, wrap):
    params = _params(funcnn.MLP((3, 2)), backend)
    if wrap == "numpy 0-d":
        lr = np.asarray(lr, dtype=np.float64)
    elif wrap == "jax 0-d":
        lr = jnp.asarray(lr, dtype=jnp.float64)
    state = _init_for(update)(params)
    _raises(ValueError, lambda: getattr(optim, update)(params, params, state, lr=lr),
            "lr must be positive")
    factory = getattr(optim, update.removesuffix("_update"))
    _raises(ValueError, lambda: factory(lr), "lr must be positive")


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("lr", ["0.1", True, [0.1], np.ones(2), None])
def test_a_learning_rate_that_is_not_a_number(update, lr):
    params = _params(funcnn.MLP((3, 2)), "numpy")
    _raises(TypeError, lambda: getattr(optim, update)(params, params,
                                                      _init_for(update)(params), lr=lr), "lr")


@pytest.mark.parametrize("update", UPDATES)
def test_a_schedule_is_a_valid_learning_rate(update):
    params = _params(funcnn.MLP((3, 2)), "numpy")
    state = _init_for(update)(params)
    new, _ = getattr(optim, update)(params, params, state, lr=lambda count: 0.5)
    assert not np.array_equal(new[0].W, params[0].W)


@FEW
@given(value=_not_positive(), name=st.sampled_from(["epochs", "batch_size"]),
       entry=st.sampled_from(["fit", "evaluate", "batches"]))
def test_an_epoch_count_or_batch_size_that_is_not_positive(value, name, entry):
    net = funcnn.MLP((3, 2))
    params, x, y = _params(net, "numpy"), np.ones((4, 3)), _labels(4, 2)
    if entry != "fit" and name == "epochs":
        name = "batch_size"
    calls = {
        "fit": lambda: _fit(net, params, x, y, **{name: value}),
        "evaluate": lambda: funcnn.evaluate(net, params, x, y, batch_size=value),
        "batches": lambda: funcnn.batches(0, 4, value),
    }
    if isinstance(value, int):
        _raises(ValueError, calls[entry], f"{name} must be positive")
    else:  # a float, even 2.0, is not a count
        _raises(TypeError, calls[entry], f"{name} must be a positive integer")


@pytest.mark.parametrize("name, value, error", [
    ("shuffle_every", -1, ValueError),
    ("initial_epoch", -1, ValueError), ("initial_epoch", 0.5, TypeError),
    ("epochs", True, TypeError), ("batch_size", "8", TypeError),
])
def test_other_counts_of_fit(name, value, error):
    net = funcnn.MLP((3, 2))
    _raises(error, lambda: _fit(net, _params(net, "numpy"), np.ones((4, 3)), _labels(4, 2),
                                **{name: value}), name)


@FEW
@given(value=_not_positive(), which=st.sampled_from([
    "constant", "exponential_decay", "cosine_decay", "warmup_cosine_decay", "clip",
    "with_clipping"]))
def test_schedules_and_clipping_refuse_values_that_are_not_positive(value, which):
    calls = {
        "constant": lambda: funcnn.schedules.constant(value),
        "exponential_decay": lambda: funcnn.schedules.exponential_decay(value, 0.5, 10),
        "cosine_decay": lambda: funcnn.schedules.cosine_decay(value, 10),
        "warmup_cosine_decay": lambda: funcnn.schedules.warmup_cosine_decay(value, 2, 10),
        "clip": lambda: optim.clip_by_global_norm((np.ones(2),), value),
        "with_clipping": lambda: optim.with_clipping(optim.sgd(0.1), value),
    }
    _raises(ValueError, calls[which], "must be positive")


# ---------------------------------------------------------------------------- backends


@pytest.mark.parametrize("entry", ["forward", "loss", "value_and_grad", "evaluate", "fit",
                                   "make_train_step"])
def test_params_half_on_jax_are_refused(entry):
    net = funcnn.MLP((3, 4, 2))
    params = _params(net, "numpy")
    half = (funcnn.to_backend(params[0], "jax"), params[1])
    _raises(TypeError, lambda: X_ENTRY_POINTS[entry](net, half, np.ones((4, 3)), _labels(4, 2)),
            "mixed backends", "params[0].W is a jax array", "params[1].W")


@pytest.mark.parametrize("entry, on_jax", [
    (entry, on_jax) for entry in ("loss", "value_and_grad", "evaluate", "fit", "make_train_step",
                                  "backprop")
    for on_jax in ("x", "y") if (entry, on_jax) != ("backprop", "x")  # x comes in the cache
])
def test_numpy_params_with_jax_data_are_refused(entry, on_jax):
    net = funcnn.MLP((3, 4, 2))
    params = _params(net, "numpy")
    x, y = np.ones((4, 3), np.float32), _labels(4, 2)
    x, y = (jnp.asarray(x), y) if on_jax == "x" else (x, jnp.asarray(y))
    _raises(TypeError, lambda: Y_ENTRY_POINTS[entry](net, params, x, y),
            "mixed backends", f"but {on_jax} is a jax array")


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("on_jax", ["grads", "state"])
def test_numpy_params_with_jax_grads_or_state_are_refused(update, on_jax):
    params = _params(funcnn.MLP((3, 4, 2)), "numpy")
    state = _init_for(update)(params)
    grads = params
    if on_jax == "grads":
        grads = funcnn.to_backend(params, "jax")
    else:
        state = funcnn.to_backend(state, "jax")
    _raises(TypeError, lambda: getattr(optim, update)(params, grads, state),
            "mixed backends", f"{on_jax}", "is a jax array")
    # the other way round is allowed: NumPy values are moved to jax
    jax_params = funcnn.to_backend(params, "jax")
    np_state = funcnn.to_backend(_init_for(update)(jax_params), "numpy")
    new, _ = getattr(optim, update)(jax_params, params, np_state, lr=0.1)
    assert isinstance(new[0].W, jax.Array)


def test_fit_refuses_jax_opt_state_or_validation_with_numpy_params():
    net = funcnn.MLP((3, 4, 2))
    params, x, y = _params(net, "numpy"), np.ones((4, 3)), _labels(4, 2)
    state = funcnn.to_backend(optim.sgd(0.1).init(params), "jax")
    _raises(TypeError, lambda: _fit(net, params, x, y, opt_state=state),
            "mixed backends", "opt_state.count is a jax array")
    _raises(TypeError, lambda: _fit(net, params, x, y, validation=(jnp.asarray(x), y)),
            "mixed backends", "validation[0] is a jax array")
    half = (funcnn.to_backend(params[0], "jax"), params[1])
    for update in UPDATES:
        _raises(TypeError, lambda u=update: _init_for(u)(half), "mixed backends")


# ---------------------------------------------------------------------------- under jax.jit


NET = funcnn.MLP((3, 4, 2))
JIT_LOSS = jax.jit(funcnn.loss, static_argnums=0)
JIT_STEP = jax.jit(funcnn.make_train_step(NET, optim.adam(1e-2)))


@VERY_FEW
@given(data=st.data(), case=st.sampled_from(["features", "rank", "length", "float labels",
                                             "one-hot width", "params", "complex"]),
       fn=st.sampled_from(["loss", "train_step"]))
def test_under_jit_shapes_and_dtypes_are_still_refused(data, case, fn):
    params = _params(NET, "jax")
    m = data.draw(st.integers(1, 4), label="m")
    x, y = jnp.ones((m, 3), jnp.float32), jnp.asarray(_labels(m, 2))
    want = {"features": (ValueError, "features"), "rank": (ValueError, "rank"),
            "length": (ValueError, "length"), "float labels": (TypeError, "integers"),
            "one-hot width": (ValueError, "width"), "params": (ValueError, "first difference"),
            "complex": (TypeError, "real numbers")}[case]
    if case == "features":
        x = jnp.ones((m, data.draw(st.sampled_from([1, 2, 4, 5]), label="n")))
    elif case == "rank":
        x = jnp.ones((m, 3, 1))
    elif case == "length":
        y = jnp.asarray(_labels(m + 1, 2))
    elif case == "float labels":
        y = y.astype(jnp.float32)
    elif case == "one-hot width":
        y = jnp.ones((m, 3))
    elif case == "params":
        params = params[:1]
    else:
        x = x.astype(jnp.complex64)
    if fn == "loss":
        call = lambda: JIT_LOSS(NET, params, x, y)  # noqa: E731
    else:
        call = lambda: JIT_STEP(params, optim.adam(1e-2).init(_params(NET, "jax")), x, y)  # noqa: E731
    _raises(want[0], call, want[1])


@pytest.mark.parametrize("fn", ["loss", "train_step"])
def test_under_jit_values_are_not_checked(fn):
    """Documented: label ranges and NaN are checked eagerly only; a tracer has no value."""
    params = _params(NET, "jax")
    x = jnp.ones((4, 3), jnp.float32)
    out_of_range = jnp.asarray([0, 1, 5, -1])
    nan_x = x.at[0, 0].set(jnp.nan)
    state = optim.adam(1e-2).init(params)
    for xs, ys in ((x, out_of_range), (nan_x, jnp.asarray(_labels(4, 2)))):
        if fn == "loss":
            value = JIT_LOSS(NET, params, xs, ys)
        else:
            value = JIT_STEP(params, state, xs, ys)[2]
        assert value.shape == ()  # no error; the value itself is unspecified
    # the same calls without jit raise
    _raises(ValueError, lambda: funcnn.loss(NET, params, x, out_of_range), "labels")
    _raises(ValueError, lambda: funcnn.loss(NET, params, nan_x, _labels(4, 2)), "NaN")


@pytest.mark.parametrize("label", [-1, 3, -3, 7])
def test_under_jit_a_label_out_of_range_gives_a_nan_loss_and_nan_gradients(label):
    """Not a wrapped class (issue 17: -1 was the last class for the loss, NaN for the
    gradient): the loss, backprop's gradient and jax.grad of the loss are all NaN."""
    net = funcnn.MLP((3, 4, 3), hidden="tanh")  # tanh: a NaN row reaches every element
    params = _params(net, "jax")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    bad, good = jnp.asarray([0, 1, label, 2]), jnp.asarray([0, 1, 2, 2])
    backprop = jax.jit(funcnn.value_and_grad, static_argnums=0)
    autodiff = jax.jit(jax.value_and_grad(lambda p, y: funcnn.loss(net, p, x, y)))
    for value, grads in (backprop(net, params, x, bad), autodiff(params, bad)):
        assert np.isnan(float(value))
        assert all(np.isnan(np.asarray(leaf)).all() for leaf in tree_leaves(grads))
    # the same with labels in range: finite, and the two gradients agree
    (v1, g1), (v2, g2) = backprop(net, params, x, good), autodiff(params, good)
    assert np.isfinite(float(v1)) and abs(float(v1) - float(v2)) <= 1e-6 * abs(float(v2))
    for a, b in zip(tree_leaves(g1), tree_leaves(g2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # the check-free pieces on NumPy (what a loop of one's own calls) agree with jit
    p_np, x_np, y_np = _params(net, "numpy"), np.asarray(x), np.asarray(bad)
    cache = funcnn.apply(net, p_np, x_np, (None,))
    with np.errstate(invalid="ignore"):
        assert np.isnan(funcnn.network.loss_from_cache(net, cache, y_np))
        assert np.isnan(funcnn.backward(net, p_np, cache, y_np)[0].W).all()
    # outside jit, the eager check's clear error
    _raises(ValueError, lambda: funcnn.loss(net, params, x, bad), "labels", str(label))


def test_a_traced_learning_rate_or_max_norm_is_not_checked():
    params = _params(NET, "jax")
    update = jax.jit(lambda p, s, lr: optim.adam_update(p, p, s, lr=lr))
    new, _ = update(params, optim.adam_init(params), -1e-2)  # not checked: a tracer
    assert new[0].W.dtype == jnp.float32
    clip = jax.jit(optim.clip_by_global_norm)
    assert clip(params, 0.5)[0].W.dtype == jnp.float32
    _raises(ValueError, lambda: optim.adam_update(params, params, optim.adam_init(params),
                                                  lr=jnp.asarray(-1e-2)), "lr must be positive")


# ---------------------------------------------------------------------------- the document


def test_reliability_doc_names_tests_that_exist():
    """docs/reliability.md ties each guarantee to tests; every test it names must exist."""
    import re

    text = (ROOT / "docs" / "reliability.md").read_text()
    qualified = re.findall(r"(tests/\w+\.py)::(test_\w+)", text)
    bare = re.findall(r"(?<![:\w])`(test_\w+)`", text)  # in the tables: this file's tests
    assert qualified and bare
    missing = [
        f"{file}::{name}" for file, name in
        qualified + [("tests/test_validation.py", name) for name in bare]
        if not re.search(rf"^def {name}\(", (ROOT / file).read_text(), re.MULTILINE)
    ]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
