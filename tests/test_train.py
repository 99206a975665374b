"""Tests for the training loops: make_train_step, fit and evaluate, on NumPy and jax.

jax compiles one program per (net, optimizer, dtype, batch size, data shape), about a
second each, so the tests share a few configurations: mostly ``NET`` on 100 spiral
points in float32 with ``adam(2e-2)`` and batches of 32 (three full batches and a tail of
4). Checkpoints and resume (``funcnn.callbacks.checkpoint``) are tested in test_resume.py.
"""

from __future__ import annotations

import functools
import io
import math
import sys
import types

import jax
import numpy as np
import optax
import pytest

import funcnn
import funcnn.random as fnr
from funcnn.callbacks import Callback, FitState
from funcnn.data import regression, spirals, xor
from funcnn.optax_adapter import from_optax
from funcnn.tree import tree_leaves, tree_paths

BACKENDS = ("numpy", "jax")

N = 100  # rows of every training set
BS = 32  # 3 full batches and a tail of 4
STEPS = math.ceil(N / BS)  # steps per epoch

NET = funcnn.MLP((2, 32, 2))
DROPOUT_NET = funcnn.MLP((2, 32, 2), dropout=0.2)
SIGMOID_NET = funcnn.MLP((2, 8, 1), output="sigmoid")
MSE_NET = funcnn.MLP((1, 16, 1), output="identity")


# ---------------------------------------------------------------------------- helpers


def _adam():
    return funcnn.optim.adam(2e-2)


def _spirals(seed=0):
    return spirals(seed, n=N)  # float32 (N, 2), int64 (N,)


def _xor(seed=0):
    x, y = xor(seed, n=N)
    return x, y[:, None].astype(np.float32)


def _regression(seed=0):
    return regression(seed, n=N)  # float32 (N, 1), float32 (N, 1)


def _params(net, backend, dtype="float32", seed=0):
    """Initial params made on NumPy and converted (no jax compile for the initializer)."""
    return funcnn.to_backend(funcnn.init_params(net, seed, dtype=dtype), backend)


def _fit(backend, *, net=NET, params=None, optimizer=None, data=None, **kwargs):
    params = _params(net, backend) if params is None else params
    optimizer = _adam() if optimizer is None else optimizer
    x, y = _spirals() if data is None else data
    kwargs = {"epochs": 3, "batch_size": BS, "key": 0, "progress": False, **kwargs}
    return funcnn.fit(net, params, optimizer, x, y, **kwargs)


def _np(tree):
    """A NumPy copy: reference values are computed on NumPy (eager jax compiles every op)."""
    return funcnn.to_backend(tree, "numpy")


def _host(tree) -> list[np.ndarray]:
    """Host copies of every leaf (reading a donated jax array raises)."""
    return [np.array(leaf, copy=True) for leaf in tree_leaves(tree)]


def _assert_trees_equal(got, want):
    want = tree_leaves(want)
    assert len(tree_leaves(got)) == len(want)
    for (path, g), w in zip(tree_paths(got), want, strict=True):
        assert np.array_equal(np.asarray(g), np.asarray(w)), f"{path} differs"


def _assert_trees_close(got, want, *, rtol):
    """Per leaf ``max|g - w| <= rtol * max|w|``, naming the leaf that fails."""
    want = tree_leaves(want)
    assert len(tree_leaves(got)) == len(want)
    for (path, g), w in zip(tree_paths(got), want, strict=True):
        g, w = np.asarray(g, dtype=np.float64), np.asarray(w, dtype=np.float64)
        err = float(np.max(np.abs(g - w), initial=0.0))
        scale = float(np.max(np.abs(w), initial=0.0))
        assert np.isfinite(g).all() and err <= rtol * scale, (
            f"{path}: max abs error {err:.3g}, scale {scale:.3g}"
        )


def _trees_differ(a, b) -> bool:
    return any(not np.array_equal(np.asarray(u), np.asarray(v))
               for u, v in zip(tree_leaves(a), tree_leaves(b), strict=True))


def _step_fn(net, optimizer, backend):
    step = funcnn.make_train_step(net, optimizer)
    return jax.jit(step) if backend == "jax" else step


# ---------------------------------------------------------------------------- make_train_step


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_is_pure(backend):
    opt = _adam()
    params = _params(NET, backend, "float64")
    state = opt.init(params)
    x, y = _spirals()
    before = _host((params, state, x, y))
    step = _step_fn(NET, opt, backend)
    new_params, new_state, loss = step(params, state, x, y)
    _assert_trees_equal((params, state, x, y), before)  # nothing was written in place
    assert _trees_differ(new_params, params)
    assert int(new_state.count) == 1 and int(state.count) == 0
    assert np.isfinite(float(loss))
    # the same call again gives the same result: no hidden state
    again = step(params, state, x, y)
    _assert_trees_equal(again, (new_params, new_state, loss))


def test_jitted_train_step_matches_numpy():
    opt = _adam()
    x, y = _spirals()
    params = _params(NET, "numpy", "float64")
    want = funcnn.make_train_step(NET, opt)(params, opt.init(params), x, y)
    params = funcnn.to_backend(params, "jax")
    got = jax.jit(funcnn.make_train_step(NET, opt))(params, opt.init(params), x, y)
    assert isinstance(got[0][0].W, jax.Array)
    _assert_trees_close(got, want, rtol=1e-12)
    assert int(got[1].count) == 1


PROBLEMS = {
    # name: (net, data, required ratio last loss / first loss)
    "spirals": (NET, _spirals, 0.9),
    "xor": (SIGMOID_NET, _xor, 0.2),
    "regression": (MSE_NET, _regression, 0.3),
}


@pytest.mark.slow
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_decreases_loss(backend, problem):
    net, data, ratio = PROBLEMS[problem]
    x, y = data()
    opt = _adam()
    params = _params(net, backend)
    state = opt.init(params)
    step = _step_fn(net, opt, backend)
    losses = []
    for _ in range(60):
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
    assert all(map(math.isfinite, losses))
    assert losses[-1] < ratio * losses[0], (losses[0], losses[-1])
    assert float(funcnn.loss(net, _np(params), x, y)) < ratio * losses[0]
    assert params[0].W.dtype == np.float32


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_with_dropout(backend):
    opt = _adam()
    x, y = _spirals()
    params = _params(DROPOUT_NET, backend, "float64")
    state = opt.init(params)
    step = _step_fn(DROPOUT_NET, opt, backend)
    k1, k2 = fnr.split(fnr.key(0, backend))
    a = step(params, state, x, y, k1)
    _assert_trees_equal(step(params, state, x, y, k1), a)  # same key, same masks
    assert _trees_differ(step(params, state, x, y, k2)[0], a[0])
    # with a key, dropout changes the step: it differs from the net without dropout
    plain = _step_fn(NET, opt, backend)(params, state, x, y)
    assert _trees_differ(a[0], plain[0])
    # and it trains
    key = fnr.key(1, backend)
    start = float(funcnn.loss(NET, _np(params), x, y))
    for i in range(60):
        params, state, _ = step(params, state, x, y, fnr.fold_in(key, i))
    assert float(funcnn.loss(NET, _np(params), x, y)) < 0.95 * start


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_step_of_a_net_with_dropout_needs_a_key(backend):
    # one rule, as forward(train=True): dropout without a key is an error, not a silent
    # step without dropout; under jit too (a missing key is known while tracing)
    opt = _adam()
    x, y = _spirals()
    params = _params(DROPOUT_NET, backend)
    step = _step_fn(DROPOUT_NET, opt, backend)
    with pytest.raises(ValueError, match=r"dropout \(0.2\) needs a key"):
        step(params, opt.init(params), x, y)
    with pytest.raises(ValueError, match="train=True with dropout needs a key"):
        funcnn.forward(DROPOUT_NET, _np(params), x, train=True)
    # a net without dropout takes no key, and ignores one
    plain = _step_fn(NET, opt, backend)
    p0 = _params(NET, backend)
    _assert_trees_equal(plain(p0, opt.init(p0), x, y), plain(p0, opt.init(p0), x, y,
                                                            fnr.key(1, backend)))


def test_make_train_step_rejects_bad_arguments():
    with pytest.raises(TypeError, match="optimizer must be a funcnn.optim.Optimizer"):
        funcnn.make_train_step(NET, funcnn.optim.adam)
    with pytest.raises(TypeError, match="net must be a funcnn.MLP"):
        funcnn.make_train_step((2, 32, 2), _adam())


# ---------------------------------------------------------------------------- fit


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_decreases_loss(backend):
    # a regression with a strong signal: the drop does not hinge on the initial draw
    # (2 spiral arms plateau near 0.61 within 10 epochs, whatever the start)
    x, y = _regression()
    params = _params(MSE_NET, backend)
    before = funcnn.evaluate(MSE_NET, params, x, y)["loss"]
    new_params, _, history = _fit(backend, net=MSE_NET, params=params, data=(x, y), epochs=10)
    after = funcnn.evaluate(MSE_NET, new_params, x, y)["loss"]
    assert after < 0.5 * before, (before, after)
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    assert new_params[0].W.dtype == np.float32


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_history_and_step_count(backend):
    epochs = 3
    _, state, history = _fit(backend, epochs=epochs)
    assert set(history) == {"loss", "train_loss", "train_accuracy", "val_loss",
                            "val_accuracy", "seconds"}
    assert len(history["loss"]) == epochs * STEPS
    for name in ("train_loss", "train_accuracy", "seconds"):
        assert len(history[name]) == epochs, name
    assert history["val_loss"] == [] and history["val_accuracy"] == []
    assert int(state.count) == epochs * STEPS  # opt_state=None started from zero
    assert all(math.isfinite(v) for v in history["loss"])
    assert all(0.0 <= a <= 1.0 for a in history["train_accuracy"])
    assert all(s >= 0.0 for s in history["seconds"])
    # the epoch loss is the per-row mean of the step losses (the tail weighs 4 rows)
    sizes = np.array([BS] * (N // BS) + [N % BS], dtype=np.float64)
    steps = np.reshape(history["loss"], (epochs, STEPS))
    np.testing.assert_allclose(history["train_loss"], steps @ sizes / N, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_continues_the_optimizer_state(backend):
    p2, s2, h2 = _fit(backend, net=DROPOUT_NET, epochs=2)
    assert int(s2.count) == 2 * STEPS
    p4, s4, h4 = _fit(backend, net=DROPOUT_NET, params=p2, opt_state=s2, epochs=4,
                      initial_epoch=2)
    assert int(s4.count) == 4 * STEPS
    assert len(h4["loss"]) == 2 * STEPS and len(h4["train_loss"]) == 2
    # two runs of 2 epochs are bit for bit one run of 4 (shuffling and dropout included)
    p_all, s_all, h_all = _fit(backend, net=DROPOUT_NET, epochs=4)
    _assert_trees_equal(p4, p_all)
    _assert_trees_equal(s4, s_all)
    assert np.array_equal(h4["loss"], h_all["loss"][2 * STEPS:])
    # without initial_epoch the count still goes on, and the passed state stays alive
    _, s_more, _ = _fit(backend, net=DROPOUT_NET, params=p2, opt_state=s2, epochs=1)
    assert int(s_more.count) == 3 * STEPS
    assert int(s2.count) == 2 * STEPS


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_is_deterministic_in_the_key(backend):
    a = _fit(backend, net=DROPOUT_NET, key=3)
    b = _fit(backend, net=DROPOUT_NET, key=fnr.key(3, backend))  # an int seed or a key
    _assert_trees_equal(a[0], b[0])
    _assert_trees_equal(a[1], b[1])
    assert np.array_equal(a[2]["loss"], b[2]["loss"])
    c = _fit(backend, net=DROPOUT_NET, key=4)
    assert _trees_differ(a[0], c[0])
    assert not np.array_equal(a[2]["loss"], c[2]["loss"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_leaves_the_callers_arrays_valid(backend):
    x, y = _spirals()
    params = _params(NET, backend)
    state = _adam().init(params)
    before = _host((params, state))
    new_params, new_state, _ = _fit(backend, params=params, opt_state=state, epochs=2)
    # fit donates no buffer and copies NumPy ones: the caller's must neither change nor be deleted
    _assert_trees_equal((params, state), before)
    assert math.isfinite(funcnn.evaluate(NET, params, x, y)["loss"])
    # the returned trees stay valid after they are passed to fit again
    after = _host((new_params, new_state))
    _fit(backend, params=new_params, opt_state=new_state, epochs=1)
    _assert_trees_equal((new_params, new_state), after)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_full_batch(backend):
    x, y = _spirals()
    params = _params(NET, backend)
    p_none, s_none, h_none = _fit(backend, params=params, batch_size=None)
    assert len(h_none["loss"]) == 3 and int(s_none.count) == 3
    # the first step sees the initial params on all rows
    np.testing.assert_allclose(h_none["loss"][0], funcnn.evaluate(NET, params, x, y)["loss"],
                               rtol=1e-5)
    # None, N and more than N are the same full batch, bit for bit
    for batch_size in (N, 10 * N):
        p, s, h = _fit(backend, params=params, batch_size=batch_size)
        _assert_trees_equal(p, p_none)
        assert np.array_equal(h["loss"], h_none["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_drop_last(backend):
    epochs = 3
    _, state, history = _fit(backend, epochs=epochs, drop_last=True)
    full = N // BS
    assert len(history["loss"]) == epochs * full
    assert int(state.count) == epochs * full
    steps = np.reshape(history["loss"], (epochs, full))
    np.testing.assert_allclose(history["train_loss"], steps.mean(axis=1), rtol=1e-12)


# With a learning rate of 1e-12 the parameters stay put (to ~1e-13), so a step's loss tells
# which rows (and dropout masks) its batch had: equal step losses mean the same batch.
FROZEN = {"optimizer": funcnn.optim.sgd(1e-12), "batch_size": BS, "epochs": 4}


def _frozen_steps(history) -> np.ndarray:
    return np.reshape(history["loss"], (FROZEN["epochs"], STEPS))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_shuffle_every(backend):
    x, y = _spirals()
    params = _params(NET, backend, "float64")
    every2 = _frozen_steps(_fit(backend, params=params, shuffle_every=2, **FROZEN)[2])
    np.testing.assert_allclose(every2[1], every2[0], rtol=1e-9)
    np.testing.assert_allclose(every2[3], every2[2], rtol=1e-9)
    assert np.max(np.abs(every2[2] - every2[1])) > 1e-4

    _, _, h1 = _fit(backend, params=params, shuffle_every=1, **FROZEN)
    every1 = _frozen_steps(h1)
    np.testing.assert_allclose(every1[0], every2[0], rtol=1e-9)  # both drawn at epoch 0
    np.testing.assert_allclose(every1[2], every2[2], rtol=1e-9)  # both drawn at epoch 2
    for e in range(3):
        assert np.max(np.abs(every1[e + 1] - every1[e])) > 1e-4, e
    # each epoch sees every row once: its loss and accuracy are those of all the data
    full = funcnn.evaluate(NET, params, x, y)
    np.testing.assert_allclose(h1["train_loss"], [full["loss"]] * 4, rtol=1e-9)
    np.testing.assert_allclose(h1["train_accuracy"], [full["accuracy"]] * 4, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_without_shuffle_takes_rows_in_order(backend):
    x, y = _spirals()
    params = _params(NET, backend, "float64")
    _, _, history = _fit(backend, params=params, shuffle=False, **FROZEN)
    ref = _np(params)
    want = [float(funcnn.loss(NET, ref, x[i:i + BS], y[i:i + BS])) for i in range(0, N, BS)]
    np.testing.assert_allclose(_frozen_steps(history), [want] * 4, rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_draws_new_dropout_masks_for_every_batch(backend):
    # four copies of the same 25 rows, not shuffled: every batch holds the same rows
    x, y = _spirals()
    data = np.tile(x[:25], (4, 1)), np.tile(y[:25], 4)
    params = _params(DROPOUT_NET, backend, "float64")
    _, _, history = _fit(backend, net=DROPOUT_NET, params=params, data=data, shuffle=False,
                         optimizer=FROZEN["optimizer"], batch_size=25, epochs=2)
    steps = np.reshape(history["loss"], (2, 4)).ravel()
    # the same rows and (almost) the same params: only the masks tell the steps apart
    gaps = np.abs(steps[:, None] - steps[None, :]) + np.eye(steps.size)
    assert gaps.min() > 1e-6, np.round(steps, 6)
    # and no step is the clean net's loss
    clean = float(funcnn.loss(NET, _np(params), x[:25], y[:25]))
    assert np.min(np.abs(steps - clean)) > 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_validation(backend):
    xv, yv = _spirals(seed=1)
    params, _, history = _fit(backend, validation=(xv, yv))
    assert len(history["val_loss"]) == 3 and len(history["val_accuracy"]) == 3
    final = funcnn.evaluate(NET, params, xv, yv)
    np.testing.assert_allclose(history["val_loss"][-1], final["loss"], rtol=1e-6)
    assert history["val_accuracy"][-1] == pytest.approx(final["accuracy"], abs=1e-12)
    assert all(0.0 <= a <= 1.0 for a in history["val_accuracy"])
    # a list is a pair too
    _, _, again = _fit(backend, validation=[xv, yv])
    np.testing.assert_allclose(again["val_loss"], history["val_loss"], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_early_stopping_restores_the_best_params(backend):
    x, y = _spirals()
    # validating on flipped labels: the better the net learns, the worse the validation loss
    flipped = (x, 1 - y)
    patience, epochs = 3, 30
    params, state, history = _fit(backend, epochs=epochs, validation=flipped,
                                  callbacks=[funcnn.callbacks.early_stopping(patience)])
    val = history["val_loss"]
    best = int(np.argmin(val))
    assert len(val) < epochs, "did not stop early"
    assert len(val) == best + patience + 1
    assert history["best_epoch"] == [best]
    assert val[-1] > val[best] + 1e-3
    # the returned params (and optimizer state) are those of the best epoch
    np.testing.assert_allclose(funcnn.evaluate(NET, params, *flipped)["loss"], min(val),
                               rtol=1e-6)
    assert int(state.count) == (best + 1) * STEPS


def test_the_early_stopping_callback_checks_its_patience():
    with pytest.raises(ValueError, match="patience must be positive"):
        funcnn.callbacks.early_stopping(0)
    with pytest.raises(TypeError, match="patience must be a positive integer"):
        funcnn.callbacks.early_stopping(2.0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_sigmoid_binary_cross_entropy(backend):
    assert SIGMOID_NET.loss == "binary_cross_entropy"
    xv, yv = _xor(seed=1)
    params, _, history = _fit(backend, net=SIGMOID_NET, data=_xor(), epochs=15, batch_size=25,
                              validation=(xv, yv))
    assert history["train_loss"][-1] < 0.3 * history["train_loss"][0]
    assert history["train_accuracy"][-1] > 0.9
    p = funcnn.predict(SIGMOID_NET, _np(params), xv)
    assert history["val_accuracy"][-1] == pytest.approx(np.mean((p > 0.5) == (yv > 0.5)),
                                                        abs=1e-12)
    assert history["val_accuracy"][-1] > 0.9


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_identity_mse(backend):
    assert MSE_NET.loss == "mse"
    xv, yv = _regression(seed=1)
    params, _, history = _fit(backend, net=MSE_NET, data=_regression(), epochs=10,
                              batch_size=10, validation=(xv, yv))
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    assert history["train_accuracy"] == [None] * 10
    assert history["val_accuracy"] == [None] * 10
    p = funcnn.predict(MSE_NET, _np(params), xv).astype(np.float64)
    np.testing.assert_allclose(history["val_loss"][-1], np.mean((p - yv) ** 2), rtol=1e-5)


def test_numpy_and_jax_agree_in_float64():
    net = funcnn.MLP((2, 16, 2))
    x, y = _spirals()
    start = funcnn.init_params(net, 5, dtype="float64")
    results = {
        backend: _fit(backend, net=net, params=funcnn.to_backend(start, backend),
                      optimizer=funcnn.optim.adam(1e-2), shuffle=False, epochs=3)
        for backend in BACKENDS
    }
    (p_np, s_np, h_np), (p_jax, s_jax, h_jax) = results["numpy"], results["jax"]
    assert p_jax[0].W.dtype == np.float64
    assert _trees_differ(p_np, start)
    _assert_trees_close(p_jax, p_np, rtol=1e-10)
    _assert_trees_close((s_jax.mu, s_jax.nu), (s_np.mu, s_np.nu), rtol=1e-10)
    assert int(s_jax.count) == int(s_np.count) == 3 * STEPS
    for name in ("loss", "train_loss", "train_accuracy"):
        np.testing.assert_allclose(h_jax[name], h_np[name], rtol=1e-10, err_msg=name)


def _mean_abs(output, z, a, y):  # a custom loss: mean |a - y|, smooth enough away from 0
    return funcnn.backend.array_namespace(z).sum(abs(a - y)) / z.size


def _mean_abs_delta(output, z, a, y):
    xp = funcnn.backend.array_namespace(z)
    return xp.sign(a - y) * (1.0 / z.size)


_TAIL_CASES = {  # every loss, built in or custom, with N = 3 x 32 + a short batch of 4
    "cross_entropy": (NET, _spirals),
    "one_hot_rows": (NET, lambda: (_spirals()[0], funcnn.data.one_hot(_spirals()[1], 2))),
    "binary_cross_entropy": (SIGMOID_NET, _xor),
    "mse": (MSE_NET, _regression),
    "custom": (funcnn.MLP((1, 16, 1), output="identity",
                          loss=funcnn.losses.Loss("mean_abs", _mean_abs, _mean_abs_delta)),
               _regression),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(_TAIL_CASES))
def test_the_padded_short_batch_on_jax_trains_what_numpy_trains_on_the_short_batch(case):
    """jax pads the short last batch to a full one and masks it; NumPy trains on the short
    batch itself: the same params, per-step losses and accuracies in float64."""
    net, data = _TAIL_CASES[case]
    x, y = data()
    start = funcnn.init_params(net, 3, dtype="float64")
    got = {backend: _fit(backend, net=net, params=funcnn.to_backend(start, backend),
                         data=(x, y), epochs=2)
           for backend in BACKENDS}
    (p_np, _, h_np), (p_jax, _, h_jax) = got["numpy"], got["jax"]
    assert len(h_jax["loss"]) == 2 * STEPS
    _assert_trees_close(p_jax, p_np, rtol=1e-10)
    np.testing.assert_allclose(h_jax["loss"], h_np["loss"], rtol=1e-10)
    if funcnn.losses.is_classification(net.loss):
        np.testing.assert_allclose(h_jax["train_accuracy"], h_np["train_accuracy"], rtol=1e-12)


def _dots_in_epoch_program(n: int, grad_fn=funcnn.step.backward_grad) -> int:
    """Matrix products in the StableHLO of fit's jax epoch program for NET on n rows."""
    x, y = funcnn.to_backend(spirals(0, n=n), "jax")
    params = _params(NET, "jax")
    optimizer = _adam()
    split = funcnn.batching.split_batches(n, BS)
    order, tail = funcnn.train._padded(np.arange(n, dtype=np.int32), split)
    keys = fnr.split(fnr.key(0), split.full + 1)
    static, hyper = funcnn.optim.split_hyper(optimizer)
    epoch = funcnn.train._jax_programs()[0]
    text = epoch.lower(params, optimizer.init(params), (), x, y, order, keys, hyper, net=NET,
                       optimizer=static, grad_fn=grad_fn, batch_size=BS, tail=tail,
                       mesh=None).as_text()
    return text.count("stablehlo.dot_general")


def test_the_jax_epoch_program_holds_one_copy_of_the_step():
    # NET has 2 layers: 2 forward products, 2 for dW and 1 for dX per step
    assert _dots_in_epoch_program(96) == 5  # full batches only
    assert _dots_in_epoch_program(N) == 5  # the short batch rides in the scan
    # DP-SGD too: 2 forward, 1 to send the deltas down, 2 for the clipped dW
    dp = funcnn.per_example.dp_grad(1.0, 0.5)
    assert _dots_in_epoch_program(96, dp) == _dots_in_epoch_program(N, dp) == 5


def _compiled():
    """How many programs fit's jax epoch has compiled so far."""
    epoch = funcnn.train._jax_programs()[0]
    assert hasattr(epoch, "_cache_size"), "this jax has no jit(...)._cache_size()"
    return epoch._cache_size()


def test_fit_does_not_recompile():
    opt = _adam()
    _fit("jax", optimizer=opt, epochs=1)
    compiled = _compiled()
    _fit("jax", optimizer=opt, epochs=1, key=1)
    assert _compiled() == compiled, "the same net and optimizer compiled again"
    # separately built but equal net and optimizer hit the same programs
    _fit("jax", net=funcnn.MLP((2, 32, 2)), optimizer=_adam(), epochs=2)
    _fit("jax", optimizer=funcnn.optim.adam(2e-2), epochs=1, params=_params(NET, "jax", seed=9))
    assert _compiled() == compiled, "an equal net or optimizer compiled again"
    # the counter is live: a batch size no other test uses compiles a new epoch program
    _fit("jax", optimizer=opt, epochs=1, batch_size=50)
    assert _compiled() == compiled + 1


@pytest.mark.slow
def test_a_new_learning_rate_or_weight_decay_does_not_recompile():
    """The optimizer's numbers are arguments of the compiled epoch, not constants in it."""
    results = {}
    for lr in (0.02, 0.05):
        opt = funcnn.optim.adamw(lr, weight_decay=lr / 4, mask=funcnn.optim.weights_only)
        results[lr] = _fit("jax", optimizer=opt, epochs=1, shuffle=False)[0]
        if lr == 0.02:
            compiled = _compiled()
    assert _compiled() == compiled, "a new learning rate compiled a new epoch program"
    # and the new numbers were used: each run equals NumPy's with the same optimizer
    for lr, got in results.items():
        opt = funcnn.optim.adamw(lr, weight_decay=lr / 4, mask=funcnn.optim.weights_only)
        want = _fit("numpy", optimizer=opt, epochs=1, shuffle=False)[0]
        _assert_trees_close(got, want, rtol=1e-5)
    assert _trees_differ(results[0.02], results[0.05])
    # a changed flag or fraction changes the program
    _fit("jax", optimizer=funcnn.optim.adamw(0.02, b1=0.5, mask=funcnn.optim.weights_only),
         epochs=1)
    assert _compiled() == compiled + 1


def _extreme_row_data():
    x, y = _regression()
    x = x.copy()
    x[37] = 1e30  # finite, but its squared error overflows float32
    return x, y


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_raises_training_diverged_at_the_step_of_the_bad_row(backend):
    # without shuffling, row 37 is in step 3 of every epoch (batches of 10); start at epoch 2
    with pytest.raises(funcnn.TrainingDiverged) as info:
        _fit(backend, net=MSE_NET, data=_extreme_row_data(), batch_size=10, shuffle=False,
             epochs=4, initial_epoch=2)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert (err.epoch, err.step) == (2, 3)
    assert "epoch 2, step 3" in str(err)
    assert "learning rate" in str(err)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_raises_training_diverged_with_a_huge_learning_rate(backend):
    x, y = _regression()
    opt = funcnn.optim.sgd(1e2)
    # the reference: the same steps one by one, until the loss is not finite
    params = _params(MSE_NET, "numpy")
    state = opt.init(params)
    step = funcnn.make_train_step(MSE_NET, opt)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(1000):
            i = slice(10 * (t % 10), 10 * (t % 10) + 10)
            params, state, loss = step(params, state, x[i], y[i])
            if not math.isfinite(float(loss)):
                break
    want = divmod(t, 10)
    assert want != (0, 0)
    with pytest.raises(funcnn.TrainingDiverged) as info:
        _fit(backend, net=MSE_NET, data=(x, y), optimizer=opt, batch_size=10, shuffle=False,
             epochs=100)
    assert (info.value.epoch, info.value.step) == want
    assert f"epoch {want[0]}, step {want[1]}" in str(info.value)


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"epochs": 0}, ValueError, "epochs must be positive"),
        ({"epochs": 2.0}, TypeError, "epochs must be a positive integer"),
        ({"batch_size": 0}, ValueError, "batch_size must be positive"),
        ({"batch_size": -8}, ValueError, "batch_size must be positive"),
        ({"batch_size": 8.0}, TypeError, "batch_size must be a positive integer"),
        ({"callbacks": [funcnn.callbacks.early_stopping(2)]}, ValueError,
         r"early_stopping needs a validation set: fit\(\.\.\., validation=\(x_val, y_val\)\)"),
        ({"grad_fn": "dp"}, TypeError, r"grad_fn must be a gradient function grad_fn\(net"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be a funcnn.optim.Optimizer"),
        ({"optimizer": funcnn.optim.adam}, TypeError, "optimizer must be a funcnn.optim"),
        ({"validation": "x only"}, TypeError, "validation must be a pair"),
        ({"validation": "three"}, TypeError, "validation must be a pair"),
        ({"validation": "array"}, TypeError, "validation must be a pair"),
        ({"initial_epoch": 5}, ValueError, r"initial_epoch must be in \[0, epochs=3\]"),
        ({"shuffle_every": 0}, ValueError, "shuffle_every must be positive"),
        ({"callbacks": Callback(on_end=print)}, TypeError, "callbacks must be a list"),
        ({"callbacks": print}, TypeError, "callbacks must be a list"),
        ({"callbacks": [Callback(), "log"]}, TypeError, r"callbacks\[0\] is a Callback"),
        ({"callbacks": [print]}, TypeError, r"callbacks\[0\] is a builtin_function"),
        ({"callbacks": [Callback(on_start=lambda s, i: s.params)]}, TypeError,
         "on_start of callback 0 returned a tuple; expected a funcnn.callbacks.FitState"),
        ({"callbacks": [Callback(on_end=lambda s, i: None),
                        Callback(on_epoch_end=lambda s, i: s.history)]},
         TypeError, "on_epoch_end of callback 1 returned a dict; expected a funcnn.callbacks"),
        ({"progress": "yes"}, TypeError, "progress must be True or False"),
    ],
)
def test_fit_rejects_bad_arguments(changes, error, match):
    xv, yv = _spirals(seed=1)
    validations = {"ok": (xv, yv), "x only": (xv,), "three": (xv, yv, yv), "array": xv}
    if "validation" in changes:
        changes = {**changes, "validation": validations[changes["validation"]]}
    with pytest.raises(error, match=match):
        _fit("numpy", **changes)


def test_fit_rejects_a_net_that_is_not_an_mlp():
    with pytest.raises(TypeError, match="net must be a funcnn.MLP"):
        _fit("numpy", net=(2, 32, 2), params=_params(NET, "numpy"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_progress_bar_writes_to_stderr(backend, capsys):
    _fit(backend, epochs=2, progress=False)
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == ""
    _fit(backend, epochs=2, progress=True)
    loud = capsys.readouterr()
    assert "2/2" in loud.err and "epoch" in loud.err and "loss=" in loud.err
    assert loud.out == ""


class FakeTqdm:
    """Records, at every redraw by ``update``, the count and the postfix it would show."""

    made: list[FakeTqdm] = []

    def __init__(self, *, total, initial, **kwargs):
        self.total, self.n, self.postfix, self.shown, self.closed = total, initial, {}, [], False
        FakeTqdm.made.append(self)

    def set_postfix(self, postfix, refresh=True):
        self.postfix = dict(postfix)

    def update(self, n):
        self.n += n
        self.shown.append((self.n, dict(self.postfix)))

    def close(self):
        self.closed = True


def _epoch_numbers(history, e) -> dict:
    numbers = {"loss": history["train_loss"][e], "acc": history["train_accuracy"][e],
               "val_loss": history["val_loss"][e], "val_acc": history["val_accuracy"][e]}
    return {name: f"{value:.4f}" for name, value in numbers.items()}


def test_fit_progress_bar_shows_the_numbers_of_the_epoch_it_counts(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=FakeTqdm))
    FakeTqdm.made.clear()
    _, _, history = _fit("numpy", epochs=3, progress=True, validation=_spirals(seed=1))
    (bar,) = FakeTqdm.made
    assert bar.total == 3 and bar.closed
    # when the bar reaches k, its postfix holds epoch k's numbers (not epoch k - 1's)
    assert bar.shown == [(k + 1, _epoch_numbers(history, k)) for k in range(3)]
    assert len({tuple(p.values()) for _, p in bar.shown}) == 3  # the epochs differ


def test_fit_without_tqdm_prints_each_epoch_as_it_ends(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # ``from tqdm.auto import`` fails
    printed = []

    def look(state, info):  # fit's progress comes after the user's callbacks
        printed.append(capsys.readouterr().err)

    _, _, history = _fit("numpy", epochs=3, progress=True, validation=_spirals(seed=1),
                         callbacks=[Callback(on_epoch_end=look)])
    printed.append(capsys.readouterr().err)
    assert printed[0] == ""  # nothing before the first epoch ended
    for e in range(3):  # each line appears when its epoch ends, not all at the end
        (line,) = printed[e + 1].splitlines()
        numbers = "  ".join(f"{k} {v}" for k, v in _epoch_numbers(history, e).items())
        assert line.startswith(f"epoch {e + 1}/3  {numbers}  "), line
        assert line.endswith(" s")
    assert capsys.readouterr().out == ""


def test_print_epochs_writes_to_the_given_file_without_validation_or_accuracy():
    out = io.StringIO()
    _, _, history = _fit("numpy", net=MSE_NET, data=_regression(), epochs=2, batch_size=10,
                         callbacks=[funcnn.callbacks.print_epochs(out)])
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[:2] for line in lines] == [
        [f"epoch {e + 1}/2", f"loss {history['train_loss'][e]:.4f}"] for e in range(2)]
    assert "acc" not in out.getvalue() and "val" not in out.getvalue()


@pytest.mark.parametrize("backend", BACKENDS)
def test_callbacks_see_every_epoch_and_on_start_may_replace_the_state(backend):
    calls = []

    def on_start(state, info):
        calls.append(("start", state.epoch, info.epochs, info.backend, info.net))
        assert isinstance(state, FitState) and int(state.opt_state.count) == 0
        return state._replace(epoch=1)  # as if epoch 0 had been trained

    def on_epoch_end(state, info):
        calls.append(("epoch", state.epoch, len(state.history["train_loss"]),
                      int(state.opt_state.count)))

    params, state, history = _fit(backend, net=DROPOUT_NET, epochs=3, callbacks=[
        Callback(on_start, on_epoch_end, lambda s, i: calls.append(("end", s.epoch)))])
    assert calls == [("start", 0, 3, backend, DROPOUT_NET), ("epoch", 2, 1, STEPS),
                     ("epoch", 3, 2, 2 * STEPS), ("end", 3)]
    # the replaced start state is exactly initial_epoch=1
    want = _fit(backend, net=DROPOUT_NET, epochs=3, initial_epoch=1)
    _assert_trees_equal((params, state), want[:2])
    assert np.array_equal(history["loss"], want[2]["loss"])


def _blow_up_at(count: int):
    """SGD whose learning rate is infinite at update ``count`` (from 0) and 0.01 before:
    the loss of that step is still finite (it is computed before the update), the
    parameters after it are not."""

    def schedule(step):
        xp = funcnn.backend.array_namespace(step)
        return xp.where(xp.asarray(step) == count, xp.inf, 1e-2)

    return funcnn.optim.sgd(schedule)


def _read_every_leaf(seen: list):
    """An ``on_end`` that reads every leaf of the state it is handed (a deleted jax array
    raises here) and records whether each is finite."""

    def on_end(state, info):
        leaves = tree_leaves((state.params, state.opt_state))
        seen.append((state.epoch, [bool(np.isfinite(np.asarray(leaf)).all()) for leaf in
                                   leaves if np.asarray(leaf).dtype.kind == "f"]))
    return Callback(on_end=on_end)


# the update that blows up: mid-epoch (the next step's loss is NaN), or the last of an
# epoch (every loss of the epoch is finite; the params it hands on are not)
@pytest.mark.parametrize("update, epoch", [(8, 2), (7, 1)], ids=["mid-epoch", "last-step"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_diverged_fit_hands_the_last_finite_state(backend, update, epoch):
    x, y = _regression()
    data = (x[:32], y[:32])  # 4 steps of 8 rows an epoch
    seen: list = []
    kwargs = {"net": MSE_NET, "data": data, "batch_size": 8, "shuffle": False}
    with pytest.raises(funcnn.TrainingDiverged) as info:
        _fit(backend, optimizer=_blow_up_at(update), epochs=4,
             callbacks=[_read_every_leaf(seen)], **kwargs)
    assert info.value.epoch == epoch
    # on_end read every leaf (no deleted buffer replaced TrainingDiverged): all finite
    assert seen == [(epoch, [True] * len(seen[0][1]))] and seen[0][1]
    # the state handed on is the one the diverged epoch started from, bit for bit
    state = info.value.state
    assert isinstance(state, FitState) and state.epoch == epoch
    want = _fit(backend, optimizer=_blow_up_at(update), epochs=epoch, **kwargs)
    _assert_trees_equal((state.params, state.opt_state), want[:2])
    assert state.history["loss"] == want[2]["loss"]


def test_a_state_given_to_a_callback_is_never_changed_afterwards():
    """Callbacks may keep (copies of) what they are given: fit makes a new history for each
    epoch instead of appending to the one a callback saw; on_epoch_end's state carries on."""
    seen = []

    def keep(state, info):
        seen.append((state.history, {k: list(v) for k, v in state.history.items()}))
        return state._replace(history={**state.history, "mine": [len(seen)]})

    _, _, history = _fit("numpy", epochs=3, validation=_spirals(seed=1),
                         callbacks=[Callback(on_epoch_end=keep)])
    for given, copy in seen:
        assert given == copy
    assert [len(given["loss"]) for given, _ in seen] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert history["mine"] == [3] and seen[1][0]["mine"] == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_end_is_called_when_training_diverges(backend):
    ends = []
    with pytest.raises(funcnn.TrainingDiverged):
        _fit(backend, net=MSE_NET, data=_extreme_row_data(), batch_size=10, shuffle=False,
             epochs=4, initial_epoch=2,
             callbacks=[Callback(on_end=lambda s, i: ends.append(s.epoch))])
    assert ends == [2]  # the state of the last epoch that finished


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_with_an_adapted_optax_adam_matches_funcnn_adam(backend):
    params = _params(NET, backend, "float64")
    tx = optax.adam(2e-2)
    want = _fit(backend, params=params, optimizer=funcnn.optim.adam(2e-2))
    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32 counts
        got = _fit(backend, params=params, optimizer=from_optax(tx))
    assert _trees_differ(want[0], params)
    _assert_trees_close(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[2]["loss"], want[2]["loss"], rtol=1e-6)
    assert type(got[0][0].W) is type(want[0][0].W)  # NumPy stays NumPy
    # equal adapters of one transformation: one compiled program on jax
    assert from_optax(tx) == from_optax(tx) and hash(from_optax(tx)) == hash(from_optax(tx))


def test_fit_refuses_an_optax_transformation_and_points_to_the_adapter():
    for call in (lambda: _fit("numpy", optimizer=optax.adam(1e-2)),
                 lambda: funcnn.make_train_step(NET, optax.sgd(1e-2))):
        with pytest.raises(TypeError, match=r"an optax GradientTransformation.*from_optax"):
            call()
    with pytest.raises(TypeError, match="from_optax expects an optax GradientTransformation"):
        from_optax(funcnn.optim.adam)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_takes_an_update_of_its_own_with_an_array_learning_rate(backend):
    """An update built as the factories build theirs, a partial with a (0-d array) learning
    rate: on jax the rate is an argument of the program, nothing needs hashing."""
    opt = funcnn.optim.Optimizer(funcnn.sgd_init, functools.partial(funcnn.sgd_update,
                                                                      lr=np.asarray(0.1)))
    got = _fit(backend, optimizer=opt, epochs=1, shuffle=False)[0]
    want = _fit("numpy", optimizer=funcnn.optim.sgd(0.1), epochs=1, shuffle=False)[0]
    _assert_trees_close(got, want, rtol=1e-6)
    assert _trees_differ(got, _params(NET, "numpy"))


# ---------------------------------------------------------------------------- evaluate


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_softmax_matches_a_direct_computation(backend):
    x, y = _spirals()
    params = _params(NET, backend, seed=2)
    got = funcnn.evaluate(NET, params, x, y, batch_size=30)  # batches of 30, 30, 30, 10
    assert set(got) == {"loss", "accuracy"}
    ref = _np(params)
    np.testing.assert_allclose(got["loss"], float(funcnn.loss(NET, ref, x, y)), rtol=1e-5)
    labels = np.argmax(funcnn.predict(NET, ref, x), axis=1)
    assert got["accuracy"] == pytest.approx(np.mean(labels == y), abs=1e-12)
    # one-hot targets give the same numbers
    onehot = np.eye(2, dtype=np.float32)[y]
    again = funcnn.evaluate(NET, params, x, onehot, batch_size=30)
    np.testing.assert_allclose(again["loss"], got["loss"], rtol=1e-6)
    assert again["accuracy"] == pytest.approx(got["accuracy"], abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_sigmoid_and_mse(backend):
    x, y = _xor()
    params = _params(SIGMOID_NET, backend, seed=2)
    got = funcnn.evaluate(SIGMOID_NET, params, x, y, batch_size=30)
    ref = _np(params)
    np.testing.assert_allclose(got["loss"], float(funcnn.loss(SIGMOID_NET, ref, x, y)),
                               rtol=1e-5)
    p = funcnn.predict(SIGMOID_NET, ref, x)
    assert got["accuracy"] == pytest.approx(np.mean((p > 0.5) == (y > 0.5)), abs=1e-12)

    # several sigmoid outputs: the accuracy is the fraction of right entries
    net = funcnn.MLP((2, 8, 3), output="sigmoid")
    y3 = (np.random.default_rng(0).random((N, 3)) < 0.5).astype(np.float32)
    params = _params(net, backend, seed=2)
    got = funcnn.evaluate(net, params, x, y3, batch_size=30)
    p = funcnn.predict(net, _np(params), x)
    assert got["accuracy"] == pytest.approx(np.mean((p > 0.5) == (y3 > 0.5)), abs=1e-12)

    x, y = _regression()
    params = _params(MSE_NET, backend, seed=2)
    got = funcnn.evaluate(MSE_NET, params, x, y, batch_size=30)
    assert got["accuracy"] is None
    out = funcnn.predict(MSE_NET, _np(params), x).astype(np.float64)
    np.testing.assert_allclose(got["loss"], np.mean((out - y) ** 2), rtol=1e-5)


def test_evaluate_rejects_a_bad_batch_size():
    x, y = _spirals()
    with pytest.raises(ValueError, match="batch_size must be positive"):
        funcnn.evaluate(NET, _params(NET, "numpy"), x, y, batch_size=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("net", [NET, DROPOUT_NET], ids=["plain", "dropout"])
def test_dp_on_a_padded_short_batch_equals_dp_on_the_short_batch(backend, net):
    """The padded rows of a short batch get no weight in DP-SGD's clipping and sum, and the
    noise (the same key) is divided by the short batch's rows: the same update."""
    grad_fn = funcnn.per_example.dp_grad(0.05, 1.1)
    opt = _adam()
    x, y = _spirals()
    params = _params(net, backend, "float64")
    y = funcnn.losses.prepare_targets("cross_entropy", y, 2, np.float64)
    x, y = funcnn.to_backend((x.astype(np.float64), y), backend)
    key = fnr.key(5, backend)
    tail = 4
    padded = np.r_[np.arange(90, 90 + tail), np.arange(BS - tail)]  # the tail, then others
    got = funcnn.step.train_step(net, opt, params, opt.init(params), x[padded], y[padded],
                                 key, grad_fn=grad_fn, tail=tail, in_tail=True)
    want = funcnn.step.train_step(net, opt, params, opt.init(params), x[90:90 + tail],
                                  y[90:90 + tail], key, grad_fn=grad_fn)
    _assert_trees_close(got[:2], want[:2], rtol=1e-12)
    np.testing.assert_allclose(float(got[2]), float(want[2]), rtol=1e-14)
    assert float(got[3]) == float(want[3])
    # the noise is there (another key moves the params elsewhere) and the padding is not
    # simply averaged in (the full padded batch's step differs)
    other = funcnn.step.train_step(net, opt, params, opt.init(params), x[padded], y[padded],
                                   fnr.key(6, backend), grad_fn=grad_fn, tail=tail,
                                   in_tail=True)
    assert _trees_differ(other[0], got[0])
    whole = funcnn.step.train_step(net, opt, params, opt.init(params), x[padded], y[padded],
                                   key, grad_fn=grad_fn, tail=tail, in_tail=False)
    assert _trees_differ(whole[0], got[0])


@pytest.mark.slow
def test_dp_in_a_jitted_epoch_trains_the_padded_short_batch_as_numpy_trains_it():
    """fit on jax pads the short last batch for DP-SGD too: the same run as on NumPy."""
    grad_fn = funcnn.per_example.dp_grad(0.5, 0.8)
    start = funcnn.init_params(DROPOUT_NET, 3, dtype="float64")
    got = {backend: _fit(backend, net=DROPOUT_NET, params=funcnn.to_backend(start, backend),
                         grad_fn=grad_fn, epochs=2)
           for backend in BACKENDS}
    (p_np, _, h_np), (p_jax, _, h_jax) = got["numpy"], got["jax"]
    assert len(h_jax["loss"]) == 2 * STEPS
    _assert_trees_close(p_jax, p_np, rtol=1e-10)
    np.testing.assert_allclose(h_jax["loss"], h_np["loss"], rtol=1e-10)
