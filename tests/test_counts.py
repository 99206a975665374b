"""Every count argument of the public API takes Python and NumPy integers alike.

A count (epochs, a batch size, rows, steps, ...) given as ``np.int64(10)`` or
``np.int32(10)`` must do exactly what the Python ``10`` does, all the way through (not
only pass the checks: issue 17 found ``fit(batch_size=np.int64(10))`` failing after a
whole epoch, and ``initial_epoch=np.int64(0)`` failing in the checkpoint's metadata).
``True`` and ``2.0`` are not counts: they are refused at once with a message naming the
argument. Each case below calls one public function with the count under test and
returns what it computed, so that the NumPy-integer call is compared with the int call.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

import funcnn
from funcnn import callbacks, data, optim, parallel, schedules, testing
from funcnn._checks import check_count
from funcnn.batching import epoch_order, num_batches, split_batches
from funcnn.tree import tree_leaves

NET = funcnn.MLP((2, 3, 2))
X = np.linspace(-1.0, 1.0, 14, dtype=np.float32).reshape(7, 2)
Y = np.arange(7) % 2


def _fit(tmp_path: Path | None = None, **counts):
    """A one-epoch NumPy fit on 7 rows; ``counts`` override its count arguments."""
    params = funcnn.init_params(NET, 0)
    patience = counts.pop("patience", None)
    kwargs = {"epochs": 1, "batch_size": 3, "key": 0, "progress": False, **counts}
    if patience is not None:
        kwargs["validation"] = (X, Y)
        kwargs["callbacks"] = [callbacks.early_stopping(patience)]
    if tmp_path is not None:  # the checkpoint callback writes the epoch to its metadata
        kwargs["callbacks"] = [callbacks.checkpoint(tmp_path / "run.ckpt")]
    params, _, history = funcnn.fit(NET, params, optim.sgd(0.1), X, Y, **kwargs)
    return params, history["loss"]


def _checkpointed(**counts):
    """The fit state a checkpoint callback wrote after 3 epochs."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.ckpt"
        funcnn.fit(NET, funcnn.init_params(NET, 0), optim.sgd(0.1), X, Y, epochs=3,
                   batch_size=7, key=0, progress=False,
                   callbacks=[callbacks.checkpoint(path, **counts)])
        state = callbacks.load_fit_state(path, NET)
    return state.epoch, state.params, state.history["loss"]


def _run_callback(cb):
    params = funcnn.init_params(NET, 0)
    _, _, history = funcnn.fit(NET, params, optim.sgd(0.1), X, Y, epochs=1, batch_size=7,
                               key=0, progress=False, callbacks=[cb])
    return history["grad_norm_top"], history["grad_norm_max"]


def _check_grads(max_per_leaf):
    reports = testing.check_grads(NET, funcnn.init_params(NET, 0, dtype="float64"), X, Y,
                                  reference="finite_differences", max_per_leaf=max_per_leaf)
    return [r.max_abs_error for r in reports]


# name -> function of the count; its default (a valid count) is the second item
CASES = {
    "fit epochs": (lambda n: _fit(epochs=n), 2),
    "fit batch_size": (lambda n: _fit(batch_size=n), 3),
    "fit shuffle_every": (lambda n: _fit(epochs=2, shuffle_every=n), 2),
    "early_stopping patience": (lambda n: _fit(epochs=2, patience=n), 1),
    "fit initial_epoch": (lambda n: _fit(epochs=2, initial_epoch=n), 1),
    "evaluate batch_size": (
        lambda n: funcnn.evaluate(NET, funcnn.init_params(NET, 0), X, Y, batch_size=n), 3),
    "batches n": (lambda n: [b.tolist() for b in funcnn.batches(0, n, 3)], 7),
    "batches batch_size": (lambda n: [b.tolist() for b in funcnn.batches(0, 7, n)], 3),
    "batches epoch": (lambda n: [b.tolist() for b in funcnn.batches(0, 7, 3, epoch=n)], 1),
    "batches shuffle_every": (
        lambda n: [b.tolist() for b in funcnn.batches(0, 7, 3, epoch=3, shuffle_every=n)], 2),
    "split_batches n": (lambda n: split_batches(n, 3), 7),
    "split_batches batch_size": (lambda n: split_batches(7, n), 3),
    "num_batches": (lambda n: num_batches(7, n), 3),
    "epoch_order n": (lambda n: epoch_order(0, n).tolist(), 7),
    "epoch_order epoch": (lambda n: epoch_order(0, 7, epoch=n).tolist(), 1),
    "checkpoint every": (lambda n: _checkpointed(every=n), 2),
    "grad_norms top": (lambda n: _run_callback(callbacks.grad_norms(X, Y, top=n)), 2),
    "grad_norms batch_size": (
        lambda n: _run_callback(callbacks.grad_norms(X, Y, batch_size=n)), 3),
    "spirals n": (lambda n: data.spirals(0, n), 10),
    "spirals classes": (lambda n: data.spirals(0, 12, classes=n), 3),
    "xor n": (lambda n: data.xor(0, n), 10),
    "regression n": (lambda n: data.regression(0, n), 10),
    "regression features": (lambda n: data.regression(0, 10, features=n), 2),
    "one_hot k": (lambda n: data.one_hot(Y, n), 3),
    "exponential_decay transition_steps": (
        lambda n: schedules.exponential_decay(0.1, 0.5, n), 10),
    "step_decay every": (lambda n: schedules.step_decay(0.1, 0.5, n), 10),
    "cosine_decay decay_steps": (lambda n: schedules.cosine_decay(0.1, n), 10),
    "warmup_cosine_decay warmup_steps": (
        lambda n: schedules.warmup_cosine_decay(0.1, n, 10), 2),
    "warmup_cosine_decay decay_steps": (
        lambda n: schedules.warmup_cosine_decay(0.1, 2, n), 10),
    "check_optimizer steps": (
        lambda n: [[r.max_abs_error for r in step] for step in
                   testing.check_optimizer(optim.sgd(0.1), reference=optim.sgd(0.1), steps=n)],
        2),
    "check_grads max_per_leaf": (_check_grads, 3),
    "check_gradient max_per_leaf": (
        lambda n: [r.max_abs_error for r in testing.check_gradient(
            lambda p: (p[0].W ** 2).sum(), (funcnn.Dense(np.ones((2, 2)), np.zeros(2)),),
            (funcnn.Dense(np.full((2, 2), 0.5), np.zeros(2)),),
            reference="finite_differences", max_per_leaf=n)], 3),
    "finite_difference_grads max_per_leaf": (
        lambda n: [leaf.tolist() for leaf in tree_leaves(testing.finite_difference_grads(
            lambda p: (p[0] ** 2).sum(), (np.arange(6.0),), max_per_leaf=n))], 3),
    "check_loss k": (lambda n: testing.check_loss("cross_entropy", k=n), 4),
    "MLP sizes": (lambda n: funcnn.MLP((2, n, 2)), 3),
    "random.split n": (lambda n: funcnn.random.split(0, n).tolist(), 3),
    "random.permutation n": (lambda n: funcnn.random.permutation(0, n).tolist(), 5),
    "parallel.initialize num_processes": (
        lambda n: parallel.initialize("localhost:1", n, 0), 1),
    "parallel.initialize process_id": (
        lambda n: parallel.initialize("localhost:1", 1, n), 0),
}


def _same(a, b) -> bool:
    """Equal results: arrays, numbers and containers of them, exactly."""
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if hasattr(a, "shape") or hasattr(b, "shape"):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    return a == b


def _python_ints_inside(result) -> None:
    """A count funcnn keeps (a schedule's steps, a batch split) is a Python int."""
    fields = getattr(result, "__dataclass_fields__", None) or getattr(result, "_fields", ())
    for name in fields:
        value = getattr(result, name)
        if isinstance(value, np.integer):
            raise AssertionError(f"{type(result).__name__}.{name} kept {value!r}, not an int")


@pytest.mark.parametrize("numpy_int", [np.int64, np.int32], ids=["int64", "int32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_numpy_integer_count_does_what_the_int_does(case, numpy_int):
    call, n = CASES[case]
    want = call(n)
    got = call(numpy_int(n))
    assert _same(got, want), f"{case}: {got!r} != {want!r}"
    _python_ints_inside(got)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("value", [True, 2.0], ids=["bool", "float"])
def test_a_bool_or_a_float_is_not_a_count(case, value):
    call, n = CASES[case]
    if case == "parallel.initialize process_id" and value is True:
        value = False  # True would be out of range for 1 process; False is the same type
    name = case.split()[-1] if " " in case else "batch_size"
    if case == "MLP sizes":  # the MLP spec names them layer widths
        name = "layer widths"
    with pytest.raises((TypeError, ValueError) if case == "MLP sizes" else TypeError) as info:
        call(value)
    message = str(info.value)
    assert name in message and "integer" in message, message
    assert repr(value) in message or type(value).__name__ in message, message


def test_a_numpy_epoch_count_reaches_the_checkpoint_metadata_as_an_int(tmp_path):
    """The reproducer: the state's epoch is written to JSON metadata the user never saw."""
    want = _fit(tmp_path, epochs=2, initial_epoch=0)
    (tmp_path / "run.ckpt").unlink()
    got = _fit(tmp_path, epochs=np.int64(2), initial_epoch=np.int64(0))
    assert _same(got, want)
    state = callbacks.load_fit_state(tmp_path / "run.ckpt", NET)
    assert type(state.epoch) is int and state.epoch == 2


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_fit_with_a_numpy_batch_size_trains_the_short_last_batch(backend):
    """The reproducer on both backends: 25 rows in batches of np.int64(10)."""
    x = np.linspace(-1.0, 1.0, 50, dtype=np.float32).reshape(25, 2)
    y = (x[:, 0] > x[:, 1]).astype(np.int64)
    params = funcnn.to_backend(funcnn.init_params(NET, 0), backend)
    x_b, y_b = funcnn.to_backend(x, backend), funcnn.to_backend(y, backend)
    runs = [funcnn.fit(NET, params, optim.sgd(0.1), x_b, y_b, epochs=2, batch_size=size,
                       key=0, progress=False) for size in (10, np.int64(10))]
    assert len(runs[1][2]["loss"]) == 6  # 3 batches a epoch, the last one of 5 rows
    assert _same(runs[1][2]["loss"], runs[0][2]["loss"])
    assert _same(tree_leaves(runs[1][0]), tree_leaves(runs[0][0]))


def test_a_traced_count_is_refused_with_a_clear_message():
    def f(n):
        return len(split_batches(n, 3))

    with pytest.raises(TypeError, match="n must be a positive integer, known before tracing"):
        jax.jit(f)(np.int64(7))


@pytest.mark.parametrize("value, error, words", [
    (0, ValueError, "must be positive; got 0"),
    (-1, ValueError, "must be positive; got -1"),
    (np.int64(0), ValueError, "must be positive; got 0"),
    (np.bool_(True), TypeError, "must be a positive integer; got bool"),
    (np.float64(2.0), TypeError, "must be a positive integer; got float64"),
    (np.array([3]), TypeError, "got an array of shape (1,)"),
    ("3", TypeError, "must be a positive integer; got str '3'"),
])
def test_check_count_messages(value, error, words):
    with pytest.raises(error) as info:
        check_count("steps", value)
    assert str(info.value).startswith("steps ") and words in str(info.value), info.value


def test_check_count_gives_a_python_int():
    for value in (3, np.int64(3), np.int32(3), np.uint8(3), np.array(3)):
        assert type(check_count("n", value)) is int and check_count("n", value) == 3
    assert check_count("epoch", np.int64(0), minimum=0) == 0
    with pytest.raises(ValueError, match="classes must be at least 2; got 1"):
        check_count("classes", 1, minimum=2)


def test_a_fit_state_whose_epoch_is_a_numpy_integer_saves_and_resumes(tmp_path):
    """Siblings of the reproducer: a hand-built FitState, and one a callback returns."""
    params = funcnn.init_params(NET, 0)
    state = callbacks.FitState(params, optim.sgd(0.1).init(params), np.int64(1),
                               funcnn.random.as_key(0), {"loss": [0.5]}, None)
    callbacks.save_fit_state(tmp_path / "a.ckpt", NET, state)
    assert type(callbacks.load_fit_state(tmp_path / "a.ckpt", NET).epoch) is int

    def on_start(state, info):
        return state._replace(epoch=np.int64(1))

    cbs = [callbacks.Callback(on_start=on_start), callbacks.checkpoint(tmp_path / "b.ckpt")]
    _, _, history = funcnn.fit(NET, params, optim.sgd(0.1), X, Y, epochs=3, batch_size=7,
                               key=0, progress=False, callbacks=cbs)
    assert len(history["train_loss"]) == 2
    assert callbacks.load_fit_state(tmp_path / "b.ckpt", NET).epoch == 3
