"""Interrupted training: bit-exact resume in a fresh process, checkpoints that survive
SIGKILL, and divergence that stops ``fit`` where it happens.

The runs that must be independent of this test process (its jax is configured by
conftest.py) happen in subprocesses of ``sys.executable`` running :data:`SCRIPT`, a
small program that imports nothing but funcnn (and the standard library). Each run
saves what ``fit`` returned with ``funcnn.save``, and the comparisons here read those
files: params and optimizer state with ``np.array_equal`` leaf by leaf, histories with
``==`` on every entry but the wall-clock ``seconds``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import funcnn
from funcnn.backend import is_jax_array
from funcnn.callbacks import (
    Best,
    Callback,
    FitState,
    checkpoint,
    copy_arrays,
    early_stopping,
    load_fit_state,
    save_fit_state,
)
from funcnn.tree import tree_leaves, tree_paths, tree_structure

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("numpy", "jax")

SCRIPT = r'''
"""Train with funcnn.fit as the JSON config in argv[1] says, and save the results."""
import json
import sys
import time

import funcnn

cfg = json.loads(sys.argv[1])
classes = cfg["sizes"][-1]
if cfg.get("batchnorm"):  # a net with model state: BatchNorm's running statistics
    L = funcnn.layers
    net = funcnn.Net([L.Dense(cfg["sizes"][1]), L.BatchNorm(), L.Activation("relu"),
                      L.Dropout(cfg["dropout"]), L.Dense(classes)], (cfg["sizes"][0],))
    model_state = {"state": funcnn.init_state(net, backend=cfg["backend"])}
else:
    net = funcnn.MLP(tuple(cfg["sizes"]), dropout=cfg["dropout"])
    model_state = {}
x, y = funcnn.data.spirals(cfg["data_seed"], n=cfg["n"], classes=classes)
validation = funcnn.data.spirals(cfg["data_seed"] + 1, n=50, classes=classes)
if cfg["flip_validation"]:  # the better the net fits, the worse this loss: it stops early
    validation = (x, (y + 1) % classes)
initial = funcnn.to_backend(funcnn.init_params(net, cfg["init_seed"]), cfg["backend"])
schedule = funcnn.schedules.warmup_cosine_decay(1e-2, 5, 60, init_value=1e-3)
optimizer = funcnn.optim.adam(schedule)
common = dict(batch_size=cfg["batch_size"], key=cfg["key"], progress=False,
              validation=validation if cfg["validation"] else None)

for run in cfg["runs"]:  # one after the other, each from the initial params
    if run["kind"] == "fit":
        callbacks = [] if cfg["early_stopping"] is None else [  # first: see checkpoint
            funcnn.callbacks.early_stopping(cfg["early_stopping"])]
        if run["checkpoint"] is not None:
            callbacks.append(funcnn.callbacks.checkpoint(run["checkpoint"], resume=run["resume"]))
        if run.get("pause_after") is not None:  # after that epoch's checkpoint: wait for a kill
            callbacks.append(funcnn.callbacks.Callback(on_epoch_end=lambda s, i: (
                print("paused", flush=True), time.sleep(600)) if s.epoch == run["pause_after"]
                else None))
        params, state, history, *after = funcnn.fit(
            net, initial, optimizer, x, y, epochs=run["epochs"], callbacks=callbacks, **common,
            **model_state)
        funcnn.save(run["out"], params, state, net=net, state=after[0] if after else None,
                    metadata={"history": history})
    else:  # "epochs": one fit per epoch, saving the params and state after each
        params, state = initial, None
        for epoch in range(run["epochs"]):
            params, state, _ = funcnn.fit(net, params, optimizer, x, y, epochs=epoch + 1,
                                          initial_epoch=epoch, opt_state=state, **common)
            funcnn.save(run["out"] + f".{epoch + 1}", params, state, net=net)
print("done", flush=True)
'''

# A small net with dropout and a batch size that leaves a short last batch (203 = 12*16 + 11).
SMALL = {"sizes": [2, 32, 32, 3], "dropout": 0.25, "n": 203, "batch_size": 16}
# A wide net, so that writing its checkpoint (params + two Adam moments, ~12.6 MB) takes a
# while; its epochs are short (3 steps), so the writes are a good part of the run time.
WIDE = {"sizes": [2, 1024, 1024, 3], "dropout": 0.1, "n": 24, "batch_size": 8}


def _fit_run(out: Path, epochs: int, checkpoint: Path | None = None, resume: bool = False,
             kind: str = "fit") -> dict:
    return {"kind": kind, "out": str(out), "epochs": epochs, "resume": resume,
            "checkpoint": None if checkpoint is None else str(checkpoint)}


def _config(backend: str, shape: dict, *runs: dict, **changes) -> dict:
    cfg = {**shape, "backend": backend, "data_seed": 0, "init_seed": 1, "key": 7,
           "validation": True, "flip_validation": False, "early_stopping": None,
           "runs": list(runs)}
    return {**cfg, **changes}


def _start(tmp_path: Path, cfg: dict) -> subprocess.Popen:
    script = tmp_path / "train_script.py"
    if not script.exists():
        script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "FUNCNN_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(cfg)], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 240) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"the training script failed:\n{err[-4000:]}"
    assert out.strip().endswith("done")


def _run(tmp_path: Path, cfg: dict) -> None:
    _finish(_start(tmp_path, cfg))


def _assert_trees_identical(got, want, name: str) -> None:
    assert tree_structure(got) == tree_structure(want), f"{name}: structures differ"
    assert type(got) is type(want), f"{name}: {type(got).__name__} vs {type(want).__name__}"
    for (path, g), w in zip(tree_paths(got), tree_leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype, f"{name}{path}: dtype {g.dtype} vs {w.dtype}"
        assert np.array_equal(g, w), (
            f"{name}{path} differs: max abs difference "
            f"{np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))}"
        )


def _assert_same_history(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        if name == "seconds":  # wall-clock time, the one thing allowed to differ
            assert len(got[name]) == len(want[name])
        else:
            assert got[name] == want[name], f"history[{name!r}] differs"


def _assert_same_run(got: funcnn.Checkpoint, want: funcnn.Checkpoint) -> None:
    _assert_trees_identical(got.params, want.params, "params")
    _assert_trees_identical(got.opt_state, want.opt_state, "opt_state")
    _assert_same_history(got.metadata["history"], want.metadata["history"])


# ---------------------------------------------------------------------------- resume


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_in_a_fresh_process_is_bit_identical_to_an_uninterrupted_run(tmp_path, backend):
    ckpt = tmp_path / "run.ckpt"
    # one process: the first two epochs of the interrupted run, then the uninterrupted run
    _run(tmp_path, _config(backend, SMALL, _fit_run(tmp_path / "first.npz", 2, ckpt),
                           _fit_run(tmp_path / "full.npz", 4)))
    saved = funcnn.load(ckpt, net=funcnn.MLP(tuple(SMALL["sizes"]), dropout=SMALL["dropout"]))
    assert saved.metadata["epoch"] == 2
    _assert_trees_identical(saved.params, funcnn.load(tmp_path / "first.npz").params, "params")

    # a fresh process resumes; its own seeds differ, so whatever it reaches must come from
    # the checkpoint (params, optimizer state, key, epoch and history)
    _run(tmp_path, _config(backend, SMALL, _fit_run(tmp_path / "resumed.npz", 4, ckpt, True),
                           init_seed=99, key=12345))
    resumed = funcnn.load(tmp_path / "resumed.npz")
    want = funcnn.load(tmp_path / "full.npz")
    _assert_same_run(resumed, want)
    assert isinstance(resumed.opt_state, funcnn.AdamState)
    steps = math.ceil(SMALL["n"] / SMALL["batch_size"])
    assert int(resumed.opt_state.count) == 4 * steps
    assert len(resumed.metadata["history"]["loss"]) == 4 * steps
    assert len(resumed.metadata["history"]["val_loss"]) == 4
    assert funcnn.load(ckpt).metadata["epoch"] == 4
    # the halves differ (training moved the params), so the equality above means something
    assert not np.array_equal(np.asarray(saved.params[0].W), np.asarray(want.params[0].W))


# BatchNorm between a dense layer and dropout: the model state moves with every step, and
# the short last batch (203 = 12*16 + 11) runs as its own step
BATCHNORM = {**SMALL, "sizes": [2, 16, 3], "batchnorm": True}


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batchnorm_run_killed_and_resumed_is_bit_identical_to_an_uninterrupted_one(
        tmp_path, backend):
    ckpt, epochs = tmp_path / "bn.ckpt", 4
    interrupted = _start(tmp_path, _config(backend, BATCHNORM, {
        **_fit_run(tmp_path / "never.npz", epochs, ckpt, True), "pause_after": 2}))
    reference = _start(tmp_path, _config(backend, BATCHNORM, _fit_run(tmp_path / "full.npz",
                                                                      epochs)))
    assert interrupted.stdout.readline().strip() == "paused", interrupted.stderr.read()[-4000:]
    interrupted.send_signal(signal.SIGKILL)  # after the checkpoint of epoch 2, at no write
    interrupted.communicate()
    _finish(reference)
    saved = load_fit_state(ckpt, funcnn.load(tmp_path / "full.npz").net)
    assert saved.epoch == 2 and not (tmp_path / "never.npz").exists()
    assert len(saved.model_state) == 5
    assert type(saved.model_state[1]) is funcnn.layers.BatchNormState

    # a fresh process with other seeds resumes: what it reaches comes from the checkpoint,
    # the running statistics included
    _run(tmp_path, _config(backend, BATCHNORM, _fit_run(tmp_path / "resumed.npz", epochs, ckpt,
                                                        True), init_seed=99, key=12345))
    resumed, want = funcnn.load(tmp_path / "resumed.npz"), funcnn.load(tmp_path / "full.npz")
    _assert_same_run(resumed, want)
    _assert_trees_identical(resumed.state, want.state, "model state")
    assert resumed.net == want.net and want.net.keeps_state
    # the statistics moved after epoch 2 (so the equality above means something)
    assert not np.array_equal(saved.model_state[1].mean, want.state[1].mean)
    assert not np.array_equal(want.state[1].var, np.ones_like(want.state[1].var))


def test_resume_without_a_checkpoint_file_says_so_and_starts_from_the_given_params(
        tmp_path, capsys):
    net = funcnn.MLP((2, 8, 2), dropout=0.2)
    x, y = funcnn.data.spirals(0, n=40)
    params = funcnn.init_params(net, 0)
    kwargs = {"epochs": 2, "batch_size": 16, "key": 3, "progress": False}
    plain = funcnn.fit(net, params, funcnn.optim.sgd(0.1), x, y, **kwargs)
    path = tmp_path / "new.ckpt"
    assert capsys.readouterr().err == ""
    fresh = funcnn.fit(net, params, funcnn.optim.sgd(0.1), x, y, **kwargs,
                       callbacks=[checkpoint(path, resume=True)])
    # a mistyped path must not start from scratch without a word
    assert capsys.readouterr().err == f"no checkpoint at {path}; starting from scratch\n"
    _assert_trees_identical(fresh[0], plain[0], "params")
    assert funcnn.load(path).metadata["epoch"] == 2
    # once the file exists, resuming says nothing
    funcnn.fit(net, params, funcnn.optim.sgd(0.1), x, y, **kwargs,
               callbacks=[checkpoint(path, resume=True)])
    assert capsys.readouterr().err == ""


def test_resume_refuses_params_of_another_dtype_than_the_checkpoint(tmp_path):
    net = funcnn.MLP((2, 8, 2))
    x, y = funcnn.data.spirals(0, n=40)
    path = tmp_path / "f32.ckpt"
    kwargs = {"batch_size": 16, "key": 3, "progress": False}
    funcnn.fit(net, funcnn.init_params(net, 0), funcnn.optim.sgd(0.1), x, y, epochs=1,
               callbacks=[checkpoint(path)], **kwargs)
    p64 = funcnn.init_params(net, 0, dtype="float64")
    with pytest.raises(TypeError, match="float32 params but the params passed to fit are float64"):
        funcnn.fit(net, p64, funcnn.optim.sgd(0.1), x, y, epochs=2,
                   callbacks=[checkpoint(path, resume=True)], **kwargs)


# ---------------------------------------------------------------------------- early stopping

# Validation on shifted labels gets worse as the net learns, so early stopping ends the run
# within a few epochs; the run is cut after CUT epochs, between its best epoch and its stop.
EARLY = {"flip_validation": True, "early_stopping": 3}
CUT = 2


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_early_stopped_run_resumed_in_a_fresh_process_stops_at_the_same_epoch(tmp_path,
                                                                                backend):
    ckpt = tmp_path / "early.ckpt"
    _run(tmp_path, _config(backend, SMALL, _fit_run(tmp_path / "first.npz", CUT, ckpt),
                           _fit_run(tmp_path / "full.npz", 30), **EARLY))
    want = funcnn.load(tmp_path / "full.npz")
    history = want.metadata["history"]
    stopped, best = len(history["val_loss"]), history["best_epoch"][0]
    # what makes the test bite: the best epoch comes before the cut and the stop after it,
    # so a resumed run that forgot the best epoch (or the patience spent) would go on
    assert best < CUT < stopped < 30, (best, stopped)
    assert stopped == best + EARLY["early_stopping"] + 1
    saved = load_fit_state(ckpt, funcnn.MLP(tuple(SMALL["sizes"]), dropout=SMALL["dropout"]))
    assert saved.epoch == CUT and saved.best.epoch == best
    assert saved.best.loss == pytest.approx(min(history["val_loss"][:CUT]), rel=1e-12)

    # a fresh process with other seeds resumes, then is launched once more on the
    # finished run: both return what the uninterrupted run returned, bit for bit
    _run(tmp_path, _config(backend, SMALL, _fit_run(tmp_path / "resumed.npz", 30, ckpt, True),
                           _fit_run(tmp_path / "again.npz", 30, ckpt, True),
                           init_seed=99, key=12345, **EARLY))
    for name in ("resumed.npz", "again.npz"):
        _assert_same_run(funcnn.load(tmp_path / name), want)
    assert funcnn.load(ckpt).metadata["epoch"] == stopped


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_relaunching_a_finished_early_stopped_run_does_not_train_again(tmp_path, backend):
    net = funcnn.MLP((2, 16, 2), dropout=0.1)
    x, y = funcnn.data.spirals(0, n=64)
    path = tmp_path / "done.ckpt"
    epochs_seen = []
    spy = Callback(on_epoch_end=lambda state, info: epochs_seen.append(state.epoch))
    kwargs = {"epochs": 40, "batch_size": 16, "progress": False, "validation": (x, 1 - y)}

    def launch(seed):
        params = funcnn.to_backend(funcnn.init_params(net, seed), backend)
        return funcnn.fit(net, params, funcnn.optim.adam(1e-2), x, y, key=seed, **kwargs,
                          callbacks=[early_stopping(2), checkpoint(path, resume=True), spy])

    first = launch(0)
    stopped = len(first[2]["val_loss"])
    assert stopped < 40 and epochs_seen == list(range(1, stopped + 1))
    before = path.read_bytes()
    epochs_seen.clear()
    again = launch(1)  # other params and key: all it returns comes from the checkpoint
    assert epochs_seen == [], "a finished run trained again"
    assert path.read_bytes() == before
    _assert_trees_identical(again[0], first[0], "params")
    _assert_trees_identical(again[1], first[1], "opt_state")
    _assert_same_history(again[2], first[2])
    assert again[2]["best_epoch"] == [stopped - 3]
    assert load_fit_state(path, net).stop


# ---------------------------------------------------------------------------- the callback


def _small_fit(path: Path | None = None, *extra_callbacks, epochs=3, backend="numpy", **kw):
    net = funcnn.MLP((2, 8, 3), dropout=0.2)
    x, y = funcnn.data.spirals(0, n=48, classes=3)
    params = funcnn.to_backend(funcnn.init_params(net, 0), backend)
    callbacks = ([] if path is None else [checkpoint(path, **kw)]) + list(extra_callbacks)
    return net, funcnn.fit(net, params, funcnn.optim.adam(1e-2), x, y, epochs=epochs,
                           batch_size=16, key=2, progress=False, callbacks=callbacks)


def _unwritable(tmp_path: Path, case: str) -> Path:
    (tmp_path / "a_file").write_text("not a folder")
    return {"missing folder": tmp_path / "no" / "run.ckpt",
            "under a file": tmp_path / "a_file" / "run.ckpt"}[case]


@pytest.mark.parametrize("case", ["missing folder", "under a file"])
@pytest.mark.parametrize("resume", [False, True])
def test_an_unwritable_checkpoint_path_fails_before_the_first_epoch(tmp_path, case, resume):
    path = _unwritable(tmp_path, case)
    epochs_seen = []
    spy = Callback(on_epoch_end=lambda state, info: epochs_seen.append(state.epoch))
    with pytest.raises(OSError) as info:
        _small_fit(path, spy, resume=resume)
    assert epochs_seen == [], "training started before the checkpoint path was checked"
    assert info.value.filename == str(path)  # the path the user gave, not a temporary file
    assert f"the folder {str(path.parent)!r}" in str(info.value)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_read_only_checkpoint_folder_fails_before_the_first_epoch(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    path = folder / "run.ckpt"
    epochs_seen = []
    spy = Callback(on_epoch_end=lambda state, info: epochs_seen.append(state.epoch))
    try:
        if os.access(folder, os.W_OK):  # root (as in CI): the folder is writable after all
            _small_fit(path, spy)
            assert epochs_seen == [1, 2, 3] and funcnn.load(path).metadata["epoch"] == 3
        else:
            with pytest.raises(PermissionError) as info:
                _small_fit(path, spy)
            assert epochs_seen == [] and info.value.filename == str(path)
    finally:
        folder.chmod(0o700)


def test_a_read_only_folder_as_a_user_sees_it_fails_before_the_first_epoch(tmp_path,
                                                                           monkeypatch):
    # what a user who is not root gets from a read-only folder, whoever runs the test
    def refuse(*, prefix, suffix, dir):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, prefix))

    monkeypatch.setattr(funcnn._files.tempfile, "mkstemp", refuse)
    epochs_seen = []
    spy = Callback(on_epoch_end=lambda state, info: epochs_seen.append(state.epoch))
    with pytest.raises(PermissionError, match="cannot create files in the folder") as info:
        _small_fit(tmp_path / "run.ckpt", spy)
    assert epochs_seen == [] and info.value.filename == str(tmp_path / "run.ckpt")


def test_checkpoints_every_k_epochs_and_after_the_last(tmp_path):
    path = tmp_path / "every.ckpt"
    seen = []

    def look(state, info):  # runs after the checkpoint callback of the same epoch
        seen.append(funcnn.load(path).metadata["epoch"] if path.exists() else None)

    _small_fit(path, Callback(on_epoch_end=look), epochs=5, every=2)
    assert seen == [None, 2, 2, 4, 5]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"every": 0}, ValueError, "every must be positive"),
    ({"every": 1.5}, TypeError, "every must be a positive integer"),
    ({"resume": "yes"}, TypeError, "resume must be True or False"),
])
def test_the_checkpoint_callback_checks_its_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        checkpoint(tmp_path / "c.ckpt", **kwargs)


# ---------------------------------------------------------------------------- the file


def _fit_state(backend: str, steps: int) -> tuple[funcnn.MLP, FitState]:
    net = funcnn.MLP((3, 5, 2))
    params = funcnn.to_backend(funcnn.init_params(net, 4), backend)
    opt_state = funcnn.optim.adam(1e-3).init(params)
    rng = np.random.default_rng(9)
    loss = rng.random(steps).astype(np.float32).tolist()  # as fit records them
    loss[:4] = [-0.0, 5e-324, 1 / 3, 1e300]  # and values float32 could not hold
    history = {"loss": loss, "train_loss": [0.5, 0.25], "train_accuracy": [0.5, None],
               "val_loss": [0.75, 0.125], "val_accuracy": [0.5, 1.0], "seconds": [1.5, 2.0]}
    best = Best(0.125, 1, funcnn.to_backend(params, backend, "float32"), opt_state)
    return net, FitState(params, opt_state, 2, funcnn.random.key(3, backend), history, best,
                         stop=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fit_state_round_trips_exactly(tmp_path, backend):
    net, state = _fit_state(backend, 200_000)
    path = tmp_path / "state.ckpt"
    save_fit_state(path, net, state)
    got = load_fit_state(path, net, backend)
    assert type(got) is FitState and got.epoch == 2 and type(got.best) is Best and got.stop
    _assert_trees_identical((got.params, got.opt_state, got.key),
                            (state.params, state.opt_state, state.key), "state")
    _assert_trees_identical(got.best, state.best, "best")
    assert got.best.loss == 0.125 and got.best.epoch == 1  # Python scalars stay Python
    assert list(got.history) == list(state.history)
    loss = np.asarray(got.history["loss"], dtype=np.float64)
    assert loss.tobytes() == np.asarray(state.history["loss"], dtype=np.float64).tobytes()
    assert all(type(v) is float for v in got.history["loss"][:10])
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"):
        assert got.history[name] == state.history[name], name


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fit_state_carries_the_model_state(tmp_path, backend):
    L = funcnn.layers
    net = funcnn.Net([L.Dense(4), L.BatchNorm(momentum=0.5), L.Dense(2)], (3,))
    params = funcnn.to_backend(funcnn.init_params(net, 1), backend)
    rng = np.random.default_rng(5)
    x = funcnn.to_backend(rng.normal(size=(8, 3)).astype(np.float32), backend)
    _, _, model_state = funcnn.forward(net, params, x, state=funcnn.init_state(net,
                                       backend=backend), train=True)
    state = FitState(params, funcnn.optim.sgd(0.1).init(params), 1, funcnn.random.key(3, backend),
                     {"loss": [0.5], "train_loss": [0.5]}, None, model_state=model_state)
    path = tmp_path / "bn.ckpt"
    save_fit_state(path, net, state)
    got = load_fit_state(path, net, backend)
    _assert_trees_identical(got.model_state, model_state, "model_state")
    assert is_jax_array(got.model_state[1].mean) == (backend == "jax")
    assert not np.allclose(np.asarray(model_state[1].mean), 0)  # the pass moved it
    with pytest.raises(ValueError, match="keeps model state"):
        save_fit_state(path, net, state._replace(model_state=()))


def test_early_stopping_returns_the_model_state_of_the_best_epoch(tmp_path):
    L = funcnn.layers
    net = funcnn.Net([L.Dense(8), L.BatchNorm(momentum=0.5), L.Activation("relu"),
                      L.Dense(3)], (2,))
    x, y = funcnn.data.spirals(0, n=48, classes=3)
    seen = []  # a copy of the model state after each epoch
    record = Callback(on_epoch_end=lambda s, i: seen.append(copy_arrays(s.model_state)))
    path = tmp_path / "bn.ckpt"
    params, _, history, state = funcnn.fit(
        net, funcnn.init_params(net, 0), funcnn.optim.adam(5e-2), x, y, epochs=12,
        batch_size=16, key=2, progress=False, validation=(x, (y + 1) % 3),  # gets worse
        state=funcnn.init_state(net), callbacks=[record, early_stopping(2), checkpoint(path)])
    best = history["best_epoch"][0]
    assert best < len(seen) - 1, "the last epoch was the best: nothing to restore"
    _assert_trees_identical(state, seen[best], "model state")
    assert not np.array_equal(seen[best][1].mean, seen[-1][1].mean)
    saved = load_fit_state(path, net)
    _assert_trees_identical(saved.best.model_state, seen[best], "saved best model state")


def test_a_fit_checkpoint_written_before_best_kept_the_model_state_loads(tmp_path):
    net, state = _fit_state("numpy", 10)
    path = tmp_path / "old.ckpt"
    save_fit_state(path, net, state)
    with np.load(path, allow_pickle=False) as data:
        members = {name: data[name] for name in data.files}
    header = json.loads(members["__funcnn__"].tobytes())
    best = header["extra"]["children"][header["extra"]["keys"].index("best")]
    assert best["fields"][-1] == "model_state" and best["children"][-1]["node"] == "tuple"
    del best["fields"][-1], best["children"][-1]  # as funcnn wrote it before
    members["__funcnn__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **members)
    got = load_fit_state(path, net)
    assert type(got.best) is Best and got.best.model_state == ()
    _assert_trees_identical(got.best.params, state.best.params, "best params")


def test_a_fit_checkpoint_stores_the_loss_history_as_an_array(tmp_path):
    net, state = _fit_state("numpy", 1000)
    path = tmp_path / "state.ckpt"
    save_fit_state(path, net, state)
    raw = funcnn.load(path, net=net)  # any funcnn.load reads it
    per_epoch = {k: v for k, v in state.history.items() if k != "loss"}
    assert raw.metadata == {"epoch": 2, "history": per_epoch, "stop": True}
    assert set(raw.extra) == {"key", "loss", "best"}
    # a checkpoint written before the stop flag existed goes on training
    funcnn.save(tmp_path / "old.ckpt", state.params, state.opt_state, net=net, extra=raw.extra,
                metadata={"epoch": 2, "history": per_epoch})
    assert load_fit_state(tmp_path / "old.ckpt", net).stop is False
    assert raw.extra["loss"].dtype == np.float64 and raw.extra["loss"].shape == (1000,)
    assert raw.extra["key"].dtype == np.uint32 and raw.extra["key"].shape == (2,)
    with zipfile.ZipFile(path) as zf:
        header = zf.read("__funcnn__.npy")
    assert len(header) < 20_000  # the per-step history is not in the JSON header
    # a checkpoint without a fit state is refused clearly
    funcnn.save(tmp_path / "plain.ckpt", state.params, net=net)
    with pytest.raises(funcnn.checkpoint.CheckpointError, match="holds no fit state"):
        load_fit_state(tmp_path / "plain.ckpt", net)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hand_written_loop_and_fit_continue_each_others_checkpoints(tmp_path, backend):
    path = tmp_path / "shared.ckpt"
    net, (params2, state2, history2) = _small_fit(path, epochs=2, backend=backend)
    # the loop reads what fit wrote, trains one epoch its own way, and writes it back
    state = load_fit_state(path, net, backend)
    assert state.epoch == 2 and int(state.opt_state.count) == int(state2.count)
    _assert_trees_identical(state.params, params2, "params")
    x, y = funcnn.data.spirals(0, n=48, classes=3)
    step = funcnn.make_train_step(net, funcnn.optim.adam(1e-2))
    params, opt_state = state.params, state.opt_state
    for i, idx in enumerate(funcnn.batches(7, 48, 16, epoch=2)):
        params, opt_state, loss = step(params, opt_state, x[idx], y[idx],
                                       funcnn.random.fold_in(funcnn.random.key(8, backend), i))
        state.history["loss"].append(float(loss))
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"):
        state.history[name] += state.history[name][-1:]
    save_fit_state(path, net, FitState(params, opt_state, 3, state.key, state.history, None))
    # fit resumes from the loop's epoch 3 exactly as if it had been handed its results
    _, resumed = _small_fit(path, epochs=5, backend=backend, resume=True)
    want = funcnn.fit(net, params, funcnn.optim.adam(1e-2), x, y, epochs=5, batch_size=16,
                      key=2, progress=False, opt_state=opt_state, initial_epoch=3)
    _assert_trees_identical(resumed[0], want[0], "params")
    _assert_trees_identical(resumed[1], want[1], "opt_state")
    assert resumed[2]["loss"][:len(state.history["loss"])] == state.history["loss"]
    assert resumed[2]["loss"][len(state.history["loss"]):] == want[2]["loss"]
    assert len(resumed[2]["train_loss"]) == 5


# ---------------------------------------------------------------------------- SIGKILL


def _tmp_files(directory: Path, name: str) -> set[str]:
    """The temporary files a checkpoint write to ``name`` leaves while it is under way."""
    return {f for f in os.listdir(directory) if f.startswith(f".{name}.") and f.endswith(".tmp")}


def _kill_during_a_write(proc: subprocess.Popen, directory: Path, name: str, writes: int,
                         delay: float, timeout: float = 60.0) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after the start of its ``writes``-th checkpoint write
    is seen. Returns False if the process ended first."""
    seen = set(_tmp_files(directory, name))
    before = set(seen)
    deadline = time.monotonic() + timeout
    while len(seen - before) < writes:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no checkpoint write started"
        seen |= _tmp_files(directory, name)
        time.sleep(0.0002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path):
    rng = np.random.default_rng(20240611)  # the kill moments; no global seed
    epochs = 6
    ckpt = tmp_path / "wide.ckpt"
    net = funcnn.MLP(tuple(WIDE["sizes"]), dropout=WIDE["dropout"])
    steps = math.ceil(WIDE["n"] / WIDE["batch_size"])
    # the references, side by side: one uninterrupted run, and a run that saves its params
    # and optimizer state after every epoch
    refs = [_start(tmp_path, _config("numpy", WIDE, run, validation=False)) for run in (
        _fit_run(tmp_path / "ref_full.npz", epochs), _fit_run(tmp_path / "ref", epochs,
                                                              kind="epochs"))]
    for proc in refs:
        _finish(proc)

    resume = _config("numpy", WIDE, _fit_run(tmp_path / "resumed.npz", epochs, ckpt, True),
                     validation=False)
    epochs_seen, stray = [], set()
    for attempt in range(5):
        proc = _start(tmp_path, resume)
        # kill 0-3 ms into the first or second write seen: a write takes longer than that
        killed = _kill_during_a_write(proc, tmp_path, ckpt.name, writes=1 + attempt % 2,
                                      delay=rng.uniform(0.0, 0.003))
        assert killed, "the run finished before it could be killed"
        stray |= _tmp_files(tmp_path, ckpt.name)
        if not ckpt.exists():  # killed during the very first write: nothing to resume yet
            continue
        saved = load_fit_state(ckpt, net)  # never a torn file
        epoch = saved.epoch
        history = saved.history
        assert 1 <= epoch < epochs
        assert len(history["train_loss"]) == epoch == len(history["train_accuracy"])
        assert len(history["loss"]) == epoch * steps
        assert int(saved.opt_state.count) == epoch * steps
        ref = funcnn.load(tmp_path / f"ref.{epoch}")
        _assert_trees_identical(saved.params, ref.params, f"epoch {epoch} params")
        _assert_trees_identical(saved.opt_state, ref.opt_state, f"epoch {epoch} opt_state")
        epochs_seen.append(epoch)
    assert epochs_seen, "every kill came before the first checkpoint was written"
    assert epochs_seen == sorted(epochs_seen), "a resumed run went back in time"
    # at least one kill hit a write in progress (its temporary file was left behind) ...
    assert stray, "no kill landed inside a checkpoint write"
    # ... and the finished run agrees bit for bit with the uninterrupted one
    _run(tmp_path, resume)
    _assert_same_run(funcnn.load(tmp_path / "resumed.npz"), funcnn.load(tmp_path / "ref_full.npz"))
    assert funcnn.load(ckpt).metadata["epoch"] == epochs


# ---------------------------------------------------------------------------- divergence


def _mse_setup(backend):
    net = funcnn.MLP((3, 8, 1), hidden="identity", output="identity")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)).astype(np.float32)
    params = funcnn.to_backend(funcnn.init_params(net, 0), backend)
    return net, params, x, y


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_huge_row_introduced_on_resume_stops_fit_at_its_epoch_and_step(tmp_path, backend):
    net, params, x, y = _mse_setup(backend)
    path = tmp_path / "mse.ckpt"
    kwargs = {"batch_size": 10, "key": 0, "shuffle": False, "progress": False}
    funcnn.fit(net, params, funcnn.optim.adam(1e-2), x, y, epochs=2,
               callbacks=[checkpoint(path)], **kwargs)
    before = funcnn.load(path)
    # finite, so validation lets it through; its squared error overflows float32
    bad = x.copy()
    bad[34] = 1e30
    with pytest.raises(funcnn.TrainingDiverged) as info:
        funcnn.fit(net, params, funcnn.optim.adam(1e-2), bad, y, epochs=5,
                   callbacks=[checkpoint(path, resume=True)], **kwargs)
    # no shuffling: row 34 is in batch 3 (rows 30-39) of epoch 2, the first resumed epoch
    assert (info.value.epoch, info.value.step) == (2, 3)
    assert "epoch 2, step 3" in str(info.value)
    # the checkpoint of the last good epoch is untouched
    after = funcnn.load(path)
    assert after.metadata["epoch"] == 2
    _assert_trees_identical(after.params, before.params, "params")
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in tree_leaves(after.params))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_learning_rate_that_jumps_stops_fit_at_the_next_step(backend):
    net, params, x, y = _mse_setup(backend)
    jump = 15  # updates 0..14 use 1e-2; update 15 uses 1e30 and blows the params up

    def schedule(count):
        return 1e-2 + 1e30 * (count >= jump).astype("float32")

    with pytest.raises(funcnn.TrainingDiverged) as info:
        funcnn.fit(net, params, funcnn.optim.sgd(schedule), x, y, epochs=6, batch_size=10,
                   key=0, shuffle=False, progress=False)
    # the loss of step 15 is computed before its update, so step 16 is the first bad one
    assert (info.value.epoch, info.value.step) == divmod(jump + 1, 6)
    assert f"epoch {info.value.epoch}, step {info.value.step}" in str(info.value)
