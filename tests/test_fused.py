"""The fused numba loops (``funcnn._fused``, the extra ``funcnn[fast]``) against the pure
NumPy code they replace: every optimizer with every option, every activation and loss,
with and without dropout, float32 and float64; and when each path runs.

Both paths run in every comparison. Where numba is missing, ``both_paths`` asserts that
the pure path is what runs (and compares it with itself), so no test is skipped.

Tolerances, normwise per leaf (``|fused - pure| <= tol * max|pure|``): float64 1e-12;
float32 2e-5 for the network passes (the activations' tanh/exp/expm1/log1p come from the C
library in the loops and from NumPy's SIMD code in the reference, 1-4 ulp apart, and a
gradient sums up to 40 such products: 40 * 4 * 1.2e-7 = 2e-5) and 1e-6 for the
optimizers (the same operations in the same order, only sqrt and division, both correctly
rounded: equal to the bit but for fused multiply-adds, ~8 ulp after five steps).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import funcnn
from funcnn import _fused, optim
from funcnn.activations import ACTIVATIONS, Activation, get_activation, softmax
from funcnn.tree import tree_leaves, tree_paths

ROOT = Path(__file__).resolve().parents[1]
HAVE_NUMBA = _fused.available()
TOL = {"float32": {"net": 2e-5, "optim": 1e-6}, "float64": {"net": 1e-12, "optim": 1e-12}}


def both_paths(fn):
    """``(pure, fused)`` results of ``fn()``; without numba both are the pure path's."""
    with _fused.use_fused(False):
        assert not _fused.enabled()
        pure = fn()
    if not HAVE_NUMBA:
        assert not _fused.enabled(), "without numba the pure path must run"
        return pure, fn()
    with _fused.use_fused(True):
        assert _fused.enabled()
        return pure, fn()


def assert_close(fused, pure, tol, what=""):
    for (path, f), p in zip(tree_paths(fused), tree_leaves(pure), strict=True):
        f, p = np.asarray(f), np.asarray(p)
        assert f.dtype == p.dtype and f.shape == p.shape, f"{what}{path}"
        scale = np.max(np.abs(p[np.isfinite(p)]), initial=0.0)
        np.testing.assert_allclose(f, p, rtol=tol, atol=tol * scale, equal_nan=True,
                                   err_msg=f"{what}{path}")


# ---------------------------------------------------------------------------- optimizers

OPTIMIZERS = {
    "sgd": lambda: optim.sgd(lr=0.1),
    "sgd-momentum": lambda: optim.sgd(lr=0.1, momentum=0.9),
    "sgd-nesterov": lambda: optim.sgd(lr=0.1, momentum=0.9, nesterov=True),
    "sgd-weight-decay": lambda: optim.sgd(lr=0.1, weight_decay=0.05),
    "sgd-nesterov-weight-decay": lambda: optim.sgd(lr=0.1, momentum=0.8, nesterov=True,
                                                   weight_decay=0.05),
    "sgd-schedule": lambda: optim.sgd(lr=funcnn.schedules.exponential_decay(0.1, 0.5, 2),
                                      momentum=0.5),
    "rmsprop": lambda: optim.rmsprop(lr=1e-2),
    "rmsprop-momentum": lambda: optim.rmsprop(lr=1e-2, momentum=0.9),
    "rmsprop-centered": lambda: optim.rmsprop(lr=1e-2, centered=True),
    "rmsprop-centered-momentum": lambda: optim.rmsprop(lr=1e-2, centered=True, momentum=0.5),
    "adagrad": lambda: optim.adagrad(lr=0.1),
    "adagrad-initial": lambda: optim.adagrad(lr=0.1, eps=0.0, initial_accumulator=0.1),
    "adam": lambda: optim.adam(lr=1e-2),
    "adamw": lambda: optim.adamw(lr=1e-2, weight_decay=0.1),
    "adamw-no-decay": lambda: optim.adamw(lr=1e-2, weight_decay=0.0),
    "adamw-weights-only": lambda: optim.adamw(lr=1e-2, mask=optim.weights_only),
    "adamw-array-mask": lambda: optim.adamw(lr=1e-2, mask={
        "W": np.arange(12).reshape(4, 3) % 2 == 0, "b": True, "T": False, "s": True}),
    "clipped-adam": lambda: optim.with_clipping(optim.adam(lr=1e-2), 0.5),
}


def _tree(rng, dtype):
    """Leaves of several kinds: a matrix, a vector, a transposed (not C-contiguous) matrix
    and a 0-d array."""
    return {"W": rng.normal(size=(4, 3)).astype(dtype), "b": rng.normal(size=3).astype(dtype),
            "T": rng.normal(size=(5, 2)).astype(dtype).T, "s": np.asarray(0.7, dtype)}


def _five_steps(make, dtype):
    rng = np.random.default_rng(7)
    opt, params = make(), _tree(rng, dtype)
    grads = [_tree(rng, dtype) for _ in range(5)]

    def run():
        p, state = params, opt.init(params)
        for g in grads:
            p, state = opt.update(p, g, state)
        return p, state
    return run


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_agrees_with_its_pure_update(name, dtype):
    (p0, s0), (p1, s1) = both_paths(_five_steps(OPTIMIZERS[name], dtype))
    assert type(s1) is type(s0) and int(s1.count) == int(s0.count) == 5
    assert_close(p1, p0, TOL[dtype]["optim"], f"{name} params")
    assert_close(tuple(s1), tuple(s0), TOL[dtype]["optim"], f"{name} state")


def test_unused_buffers_pass_through_as_the_pure_path_does():
    """Plain SGD's velocity and uncentered RMSProp's mu come back as the same arrays."""
    params = _tree(np.random.default_rng(0), "float32")
    for opt, field in ((optim.sgd(), "velocity"), (optim.rmsprop(), "mu")):
        state = opt.init(params)
        pure, fused = both_paths(lambda opt=opt, state=state: opt.update(params, params, state))
        for new in (pure, fused):
            assert all(a is b for a, b in zip(tree_leaves(getattr(new[1], field)),
                                              tree_leaves(getattr(state, field)), strict=True))


def test_adam_under_flushed_subnormals_agrees():
    """A decaying moment in the subnormal range: flushed to zero by both paths alike."""
    p = np.ones(64, np.float32)
    m = np.full(64, 1.2e-38, np.float32)  # just above the smallest normal, 1.18e-38
    state = optim.AdamState(np.asarray(50, np.int32), {"p": m}, {"p": np.ones(64, np.float32)})
    zero = {"p": np.zeros(64, np.float32)}
    for scope in (contextlib.nullcontext(False), funcnn.backend.flush_denormals()):
        with scope as flushed:
            pure, fused = both_paths(lambda: optim.adam_update({"p": p}, zero, state))
        assert_close(fused, pure, 0.0)
        mu = fused[1].mu["p"]  # 0.9 * 1.2e-38 is subnormal: kept, or flushed to zero
        assert np.all(mu == 0) if flushed else np.all((mu > 0) & (mu < 1.18e-38))


# ---------------------------------------------------------------------------- the network

NETS = [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("identity", "mse"),
        ("softmax", "mse"), ("tanh", "mse")]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("hidden", sorted(ACTIVATIONS))
def test_every_activation_agrees_with_and_without_dropout(hidden, dropout, dtype):
    _check_net(funcnn.MLP((12, 10, 8, 4), hidden=hidden, dropout=dropout), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("output", "loss"), NETS)
def test_every_loss_agrees(output, loss, dtype):
    _check_net(funcnn.MLP((12, 10, 4), hidden="tanh", output=output, loss=loss, dropout=0.2),
               dtype)


def _check_net(net, dtype):
    rng = np.random.default_rng(3)
    params = funcnn.init_params(net, 1, dtype=dtype)
    x = rng.normal(size=(40, net.sizes[0])).astype(dtype)
    k = net.sizes[-1]
    y = rng.integers(0, k, 40) if net.loss == "cross_entropy" else rng.random((40, k))

    def run():
        out, _ = funcnn.forward(net, params, x, key=5, train=True)
        loss, grads = funcnn.value_and_grad(net, params, x, y, key=5, train=True)
        return out, loss, grads

    (out0, loss0, g0), (out1, loss1, g1) = both_paths(run)
    tol = TOL[dtype]["net"]
    assert_close(out1, out0, tol, "out")
    assert_close(loss1, loss0, tol, "loss")
    assert_close(g1, g0, tol, "grads")


VALUES = [-1e4, -30.0, -1.0, -1e-3, -0.0, 0.0, 1e-3, 1.0, 30.0, 1e4, np.nan, np.inf, -np.inf]


def _spy(calls, kernel, name):
    return lambda *args: calls.append(name) or kernel(*args)


def test_the_fused_sets_are_the_kernels_and_builtin_activations():
    assert set(_fused.FORWARD) - {"softmax"} <= set(ACTIVATIONS)
    assert set(_fused.BACKWARD) <= set(ACTIVATIONS)
    if HAVE_NUMBA:
        kernels = _fused._kernels()
        assert kernels.FORWARD == tuple(n for n in _fused.FORWARD if n != "softmax")
        assert kernels.BACKWARD == _fused.BACKWARD


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", [*sorted(ACTIVATIONS), "softmax"])
def test_extreme_values_agree(name, dtype):
    """NaN, infinities, signed zeros and huge inputs: the same values (NaN where NaN) in
    the forward pass and in ``da * mask * g'`` (with and without a mask), directly against
    ``funcnn.activations``, for each activation that has a fused loop."""
    z0 = np.array([VALUES, VALUES[::-1]], dtype)
    b = np.array([0.5 if i % 3 else 0.0 for i in range(len(VALUES))], dtype)
    if name == "softmax":
        z0 = z0[:, :10]  # finite logits (a NaN or inf logit makes the row NaN on both)
        b = b[:10]
    g = softmax if name == "softmax" else get_activation(name).fn
    with np.errstate(all="ignore"):  # inf * 0 and the like, on purpose
        pure_h = g(z0 + b)
    forward, backward = _fused.forward_applies(z0, name), _fused.backward_applies(z0, name)
    assert forward == (HAVE_NUMBA and name in _fused.FORWARD)
    assert backward == (HAVE_NUMBA and name in _fused.BACKWARD)
    if forward:
        z = z0.copy()
        h = _fused.bias_activation(z, b, name)
        assert_close(z, z0 + b, 0.0, "z")
        assert_close(h, pure_h, TOL[dtype]["net"], f"{name}(z)")
    if backward:
        z = z0 + b
        mask = np.where(np.arange(z.size).reshape(z.shape) % 4 == 0, 0.0, 2.0).astype(dtype)
        da = np.linspace(-2, 2, z.size).reshape(z.shape).astype(dtype)
        grad = get_activation(name).grad
        for m in (mask, None):
            with np.errstate(all="ignore"):
                pure = (da if m is None else da * m) * grad(z, pure_h)
            before = da.copy()
            fused = _fused.activation_grad_product(da, m, z, pure_h, name)
            np.testing.assert_array_equal(da, before)  # da is only read
            assert_close(fused, pure, TOL[dtype]["net"], f"{name}' mask {m is not None}")


@pytest.mark.parametrize("labels", ["int64", "uint8", "int32"])
def test_cross_entropy_agrees_also_for_labels_out_of_range(labels):
    """A label outside [0, k) makes the loss NaN and its delta's row NaN on both paths
    (under jit it cannot be checked; here the loss functions are called bare)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 5)).astype(np.float32)
    p = softmax(z)
    y = np.array([0, 4, 7, 2, 255 if labels == "uint8" else -1, 3], labels)
    loss = funcnn.losses.LOSSES["cross_entropy"]
    pure, fused = both_paths(lambda: loss.delta("softmax", z, p, y))
    assert_close(fused, pure, TOL["float32"]["net"])
    assert np.isnan(fused[2]).all() and np.isnan(fused[4]).all() and np.isfinite(fused[0]).all()
    pure, fused = both_paths(lambda: loss.value("softmax", z, p, y))
    assert np.isnan(pure) and np.isnan(fused) and fused.dtype == np.float32
    valid = (y >= 0) & (y < 5)
    pure, fused = both_paths(lambda: loss.value("softmax", z[valid], p[valid], y[valid]))
    assert_close(fused, pure, TOL["float32"]["net"])


# ---------------------------------------------------------------------------- when it runs


def test_the_fused_loops_run_when_on_and_the_pure_code_otherwise(monkeypatch):
    """A spy on the kernels: called inside ``use_fused(True)``, never inside
    ``use_fused(False)``; without numba, ``use_fused(True)`` is refused."""
    net = funcnn.MLP((6, 5, 3))
    params = funcnn.init_params(net, 0)
    opt = optim.adam()
    x, y = np.ones((4, 6), np.float32), np.array([0, 1, 2, 0])

    def step():
        loss, grads = funcnn.value_and_grad(net, params, x, y)
        return opt.update(params, grads, opt.init(params))

    if not HAVE_NUMBA:
        with pytest.raises(ImportError, match=r"funcnn\[fast\]"):
            with _fused.use_fused(True):
                pass
        assert _fused.optimizer_leaf("adam", params) is None
        assert not _fused.forward_applies(x, "relu") and not _fused.backward_applies(x, "relu")
        return
    kernels, calls = _fused._kernels(), []
    for name in ("adam", "bias_activation", "bias_softmax", "cross_entropy_delta",
                 "grad_product"):
        monkeypatch.setattr(kernels, name, _spy(calls, getattr(kernels, name), name))
    with _fused.use_fused(False):
        step()
    assert calls == []
    with _fused.use_fused(True):
        step()
    assert sorted(set(calls)) == ["adam", "bias_activation", "bias_softmax",
                                  "cross_entropy_delta", "grad_product"]


def test_use_fused_is_scoped_to_its_block_and_thread(monkeypatch):
    with pytest.raises(RuntimeError), _fused.use_fused(False):
        assert not _fused.enabled()
        seen = []
        worker = threading.Thread(target=lambda: seen.append(_fused.enabled()))
        worker.start()
        worker.join()
        assert seen == [HAVE_NUMBA]  # another thread keeps the default
        raise RuntimeError("left by an exception")
    assert _fused.enabled() == HAVE_NUMBA
    monkeypatch.setenv(_fused.ENV, "0")
    assert not _fused.enabled()
    if HAVE_NUMBA:
        with _fused.use_fused(True):  # the block wins over the environment
            assert _fused.enabled()
    monkeypatch.setattr(_fused, "_kernels", lambda: None)  # as without numba
    monkeypatch.delenv(_fused.ENV)
    assert not _fused.available() and not _fused.enabled()
    with pytest.raises(ImportError, match="numba"):
        with _fused.use_fused(True):
            pass


def test_jax_arrays_and_custom_activations_take_the_pure_path():
    jnp = pytest.importorskip("jax.numpy")
    z = np.ones((2, 3), np.float32)
    swish = Activation("swish", lambda z: z * ACTIVATIONS["sigmoid"].fn(z),
                       lambda z, a: ACTIVATIONS["sigmoid"].fn(z))
    assert not _fused.forward_applies(jnp.asarray(z), "relu")
    assert not _fused.backward_applies(jnp.asarray(z), "relu")
    assert not _fused.forward_applies(z, swish) and not _fused.backward_applies(z, swish)
    assert not _fused.forward_applies(z.astype(np.float16), "relu")
    assert _fused.optimizer_leaf("adam", {"w": jnp.asarray(z)}) is None
    assert _fused.cross_entropy_delta(jnp.asarray(z), jnp.zeros(2, "int32")) is None
    assert _fused.forward_applies(z, "relu") == _fused.backward_applies(z, "tanh") == HAVE_NUMBA


def _run(code, **env):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": path, **env}, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_TRAIN = """
import json, sys, numpy as np, funcnn
from funcnn import _fused
before = 'numba' in sys.modules
net = funcnn.MLP((20, 16, 8, 3), hidden='gelu', dropout=0.25)
rng = np.random.default_rng(0)
x, y = rng.normal(size=(200, 20)).astype('float32'), rng.integers(0, 3, 200)
params, _, _ = funcnn.fit(net, funcnn.init_params(net, 0), funcnn.optim.adamw(1e-2), x, y,
                          epochs=2, batch_size=32, key=1, progress=False)
print(json.dumps({'numba_on_import': before, 'enabled': _fused.enabled(),
                  'params': [leaf.tolist() for leaf in funcnn.tree.tree_leaves(params)]}))
"""


@pytest.mark.slow
def test_results_do_not_depend_on_the_thread_count_and_import_stays_light():
    one = _run(_TRAIN, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    two = _run(_TRAIN, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    off = _run(_TRAIN, FUNCNN_FUSED="0", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    assert not one["numba_on_import"] and not off["numba_on_import"]
    assert one["enabled"] == two["enabled"] == HAVE_NUMBA and not off["enabled"]
    assert one["params"] == two["params"]  # serial loops: the same bits
    for a, b in zip(one["params"], off["params"], strict=True):  # a trained net, both paths
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)
