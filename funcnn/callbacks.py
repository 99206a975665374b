"""What :func:`funcnn.fit` calls around its epochs: checkpoints, resume, early stopping
and progress.

``fit`` only trains. Anything else is a callback: an object with any of the methods

- ``on_start(state, info) -> FitState | None``: before the first epoch (this is how a
  run resumes);
- ``on_epoch_end(state, info) -> FitState | None``: after each epoch, with the state
  after it (this is how early stopping keeps its memory and stops the run);
- ``on_end(state, info) -> FitState | None``: once at the end, also when training raised
  (this is how early stopping returns the best epoch's params).

A returned state replaces the one ``fit`` had; ``None`` keeps it. Callbacks run in the
order given, each on the state the one before it returned, and none changes the state it
is given (``state._replace(...)`` makes a new one). :class:`Callback` builds one from plain
functions. ``state`` is a :class:`FitState`, everything needed to continue a run bit for
bit; ``info`` is a :class:`FitInfo`. The arrays in ``state`` are valid during the call
and after it (``fit`` donates no buffer to its programs), and ``on_end`` after a
:class:`funcnn.TrainingDiverged` gets the last finite state, the one the diverged epoch
started from. Copy what you keep past the call if you may change it (:func:`copy_arrays`).
Ready-made callbacks::

    stop = funcnn.callbacks.early_stopping(patience=5)     # before the checkpoint
    ckpt = funcnn.callbacks.checkpoint("run.ckpt", every=1, resume=True)
    params, opt_state, history = funcnn.fit(net, params, opt, x, y, epochs=20,
                                            batch_size=128, key=0, validation=(xv, yv),
                                            callbacks=[stop, ckpt])

A hand-written loop uses the same files with :func:`save_fit_state` and
:func:`load_fit_state`. A fit checkpoint is a :func:`funcnn.save` file with the
params, the optimizer state, the net, its model state (``state``, ``()`` without
BatchNorm), ``metadata = {"epoch": e, "history": {per-epoch lists}, "stop": bool}`` and
``extra = {"key": uint32 (2,), "loss": float64
(steps,), "best": Best | None}``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from funcnn._checks import check_count
from funcnn._files import check_writable
from funcnn.backend import is_jax_array
from funcnn.checked import check_params
from funcnn.checkpoint import CheckpointError, convert, load, save
from funcnn.network import Network
from funcnn.parallel import is_main_process
from funcnn.per_example import per_example_grad_norms
from funcnn.serialization import funcnn_types
from funcnn.tree import tree_map

__all__ = [
    "Best",
    "Callback",
    "FitInfo",
    "FitState",
    "checkpoint",
    "copy_arrays",
    "early_stopping",
    "grad_norms",
    "is_last_epoch",
    "load_fit_state",
    "print_epochs",
    "progress_bar",
    "save_fit_state",
]


class Best(NamedTuple):
    """Early stopping's memory: the lowest validation loss so far, the epoch (from 0)
    that reached it, and the params, optimizer state and model state after that epoch.

    Before any epoch improved, ``loss`` is ``inf``, ``epoch`` is the epoch before the
    first one trained, and ``params`` and ``opt_state`` are ``None``. ``model_state`` is
    ``()`` for a net without one (and in files written before it was kept)."""

    loss: float
    epoch: int
    params: Any
    opt_state: Any
    model_state: Any = ()


funcnn_types(Best)  # in every fit checkpoint: funcnn.load rebuilds it without registration


class FitState(NamedTuple):
    """Everything a run needs to go on bit for bit.

    ``epoch`` counts the epochs done (the next one to train); ``key`` is the run's root
    key, from which each epoch's shuffling and dropout derive; ``history`` is the dict
    ``fit`` returns (``loss`` per step, the other lists per epoch); ``best`` is the
    early-stopping memory (``None`` without early stopping); ``stop`` ends the run before
    its last epoch (set by early stopping; a resumed run that had stopped returns at once);
    ``model_state`` is the net's model state (``()`` for a net without one).
    """

    params: Any
    opt_state: Any
    epoch: int
    key: Any
    history: dict[str, list]
    best: Best | None
    stop: bool = False
    model_state: Any = ()


class FitInfo(NamedTuple):
    """What stays fixed during a run: the net, the epoch to train up to, the backend
    (``"numpy"`` or ``"jax"``) and whether each epoch is validated (``history["val_loss"]``)."""

    net: Network
    epochs: int
    backend: str
    validation: bool


class Callback(NamedTuple):
    """A callback made of plain functions; leave out the hooks you do not need."""

    on_start: Callable[[FitState, FitInfo], FitState | None] | None = None
    on_epoch_end: Callable[[FitState, FitInfo], FitState | None] | None = None
    on_end: Callable[[FitState, FitInfo], FitState | None] | None = None


def is_last_epoch(state: FitState, info: FitInfo) -> bool:
    """True when ``fit`` trains no epoch after ``state``."""
    return state.epoch >= info.epochs or state.stop


def copy_arrays(tree: Any) -> Any:
    """A copy of every array of ``tree`` (NumPy, or jax on the same devices), for a
    callback that keeps arrays past its call."""
    return tree_map(lambda a: sys.modules["jax"].device_put(  # a multi-process array: in place
        a, None if a.is_fully_addressable else a.sharding, may_alias=False)
        if is_jax_array(a) else np.array(a, copy=True), tree)


# ---------------------------------------------------------------------------- files

_EXTRA = ("key", "loss", "best")


def save_fit_state(path: str | os.PathLike, net: Network, state: FitState) -> None:
    """Write ``state`` atomically to ``path`` (a :func:`funcnn.save` file, see above)."""
    if not isinstance(state, FitState):
        raise TypeError(f"state must be a funcnn.callbacks.FitState; got {type(state).__name__}")
    history = {k: v for k, v in state.history.items() if k != "loss"}
    extra = {"key": np.asarray(state.key, dtype=np.uint32),
             "loss": np.asarray(state.history.get("loss", []), dtype=np.float64),
             "best": state.best}
    epoch = check_count("state.epoch", state.epoch, minimum=0)
    save(path, state.params, state.opt_state, net=net, state=state.model_state, extra=extra,
         metadata={"epoch": epoch, "history": history, "stop": bool(state.stop)})


def load_fit_state(path: str | os.PathLike, net: Network, backend: str | None = None) -> FitState:
    """The :class:`FitState` in a file written by :func:`save_fit_state`, on ``backend``.

    Raises FileNotFoundError without a file, CheckpointError for a damaged file or a
    checkpoint that is not a fit state, ValueError when it was saved for another net.
    """
    source = os.fspath(path)
    ckpt = load(source, net=net)  # on NumPy: the float64 loss history needs no x64 on jax
    extra, meta = ckpt.extra, ckpt.metadata
    if not (type(extra) is dict and set(_EXTRA) <= set(extra) and type(meta) is dict
            and type(meta.get("epoch")) is int and type(meta.get("history")) is dict):
        raise CheckpointError(
            f"checkpoint {source!r} holds no fit state (epoch, key, history); it was not "
            "written by save_fit_state or funcnn.callbacks.checkpoint (funcnn.load reads it)"
        )
    best, stop = extra["best"], meta.get("stop", False)  # older files have no "stop"
    if (best is not None and not isinstance(best, Best)) or type(stop) is not bool:
        raise CheckpointError(f"checkpoint {source!r}: its early-stopping state is malformed")
    backend = backend or "numpy"
    history = {"loss": np.asarray(extra["loss"], dtype=np.float64).tolist(), **meta["history"]}
    return FitState(
        convert(ckpt.params, backend, "params"), convert(ckpt.opt_state, backend, "opt_state"),
        meta["epoch"], convert(extra["key"], backend, "key"), history,
        None if best is None else convert(best, backend, "best"), stop,
        convert(ckpt.state, backend, "model_state"),
    )


def checkpoint(path: str | os.PathLike, *, every: int = 1, resume: bool = False) -> Callback:
    """Save the :class:`FitState` to ``path`` every ``every`` epochs and after the last.

    Before training, the folder of ``path`` must be writable (an ``OSError`` naming
    ``path`` otherwise). With ``resume=True`` a run starts from the state in ``path``
    (params, optimizer state, key, epoch, history, early-stopping state), so that it
    ends bit-identical to a run never interrupted (BatchNorm's running statistics
    included); a run that had finished (or stopped early) returns at once. With
    :func:`early_stopping`, list that callback first: the checkpoint then saves the memory
    it updated in the same epoch. Without a file it says
    so on stderr and starts afresh.
    With several processes (:mod:`funcnn.parallel`) only process 0 writes, and every
    process resumes from the file, which must be on a file system they all see.
    """
    target = os.fspath(path)
    every = check_count("every", every)
    if type(resume) is not bool:
        raise TypeError(f"resume must be True or False; got {type(resume).__name__}")

    def on_start(state: FitState, info: FitInfo) -> FitState | None:
        check_writable(target)
        if not resume:
            return None
        if not os.path.exists(target):
            print(f"no checkpoint at {target}; starting from scratch", file=sys.stderr)
            return None
        saved = load_fit_state(target, info.net, info.backend)
        have, given = check_params(info.net, saved.params), check_params(info.net, state.params)
        if have != given:
            raise TypeError(
                f"checkpoint {target!r} holds {have} params but the params passed to fit are "
                f"{given}; pass params of the checkpoint's dtype (the data are cast to it)"
            )
        return saved

    def on_epoch_end(state: FitState, info: FitInfo) -> None:
        if (state.epoch % every == 0 or is_last_epoch(state, info)) and is_main_process():
            save_fit_state(target, info.net, state)

    return Callback(on_start=on_start, on_epoch_end=on_epoch_end)


# ---------------------------------------------------------------------------- early stopping


def early_stopping(patience: int) -> Callback:
    """Stop ``fit`` after ``patience`` epochs without a lower validation loss, and return
    the params (and optimizer state and model state) of the best epoch, with
    ``history["best_epoch"] = [epoch]`` (from 0). Needs ``fit(..., validation=(x_val, y_val))``.

    Its memory is the state's ``best`` (the lowest validation loss, its epoch and copies
    of its params, optimizer state and model state) and ``stop``, so a checkpoint holds it
    and a resumed run stops where the uninterrupted one would: list it before
    :func:`checkpoint`.
    """
    patience = check_count("patience", patience)

    def on_start(state: FitState, info: FitInfo) -> None:
        if not info.validation:
            raise ValueError("early_stopping needs a validation set: "
                             "fit(..., validation=(x_val, y_val))")

    def on_epoch_end(state: FitState, info: FitInfo) -> FitState:
        epoch = state.epoch - 1  # the epoch just trained
        best = state.best if state.best is not None else Best(math.inf, epoch - 1, None, None)
        loss = state.history["val_loss"][-1]
        if loss < best.loss:
            best = Best(loss, epoch, copy_arrays(state.params), copy_arrays(state.opt_state),
                        copy_arrays(state.model_state))
        return state._replace(best=best, stop=epoch - best.epoch >= patience)

    def on_end(state: FitState, info: FitInfo) -> FitState | None:
        best = state.best
        if best is None or best.params is None:
            return None
        return state._replace(params=best.params, opt_state=best.opt_state,
                              model_state=best.model_state,
                              history={**state.history, "best_epoch": [best.epoch]})

    return Callback(on_start, on_epoch_end, on_end)


# ---------------------------------------------------------------------------- progress


def _numbers(history: dict[str, list]) -> list[tuple[str, float]]:
    """The last epoch's loss and accuracy, train and validation, as (name, value) pairs."""
    pairs = [("loss", history["train_loss"][-1]), ("acc", history["train_accuracy"][-1])]
    if history["val_loss"]:
        pairs += [("val_loss", history["val_loss"][-1]), ("val_acc", history["val_accuracy"][-1])]
    return [(name, value) for name, value in pairs if value is not None]


def print_epochs(file: Any = None) -> Callback:
    """Print one line per epoch as it ends (to ``file``, by default ``sys.stderr``; in
    process 0 only when several processes train together)::

        epoch 3/10  loss 0.2154  acc 0.9371  val_loss 0.1893  val_acc 0.9452  2.1 s
    """

    def on_epoch_end(state: FitState, info: FitInfo) -> None:
        if not is_main_process():
            return
        numbers = "  ".join(f"{name} {value:.4f}" for name, value in _numbers(state.history))
        print(f"epoch {state.epoch}/{info.epochs}  {numbers}  "
              f"{state.history['seconds'][-1]:.1f} s", file=file or sys.stderr, flush=True)

    return Callback(on_epoch_end=on_epoch_end)


def progress_bar() -> Callback:
    """A tqdm bar on stderr whose postfix shows the epoch just done; without tqdm,
    :func:`print_epochs`. This is what ``fit(..., progress=True)`` adds."""
    if not is_main_process():
        return Callback()
    try:  # tqdm is optional (and slow to import), so it is imported when first needed
        from tqdm.auto import tqdm
    except ImportError:
        return print_epochs()
    bars: list[Any] = []

    def on_start(state: FitState, info: FitInfo) -> None:
        bars.append(tqdm(total=info.epochs, initial=min(state.epoch, info.epochs),
                         unit="epoch", file=sys.stderr, dynamic_ncols=True))

    def on_epoch_end(state: FitState, info: FitInfo) -> None:
        bars[-1].set_postfix({name: f"{value:.4f}" for name, value in _numbers(state.history)},
                             refresh=False)  # before update, which draws it with epoch k
        bars[-1].update(1)

    def on_end(state: FitState, info: FitInfo) -> None:
        if bars:
            bars.pop().close()

    return Callback(on_start, on_epoch_end, on_end)


# ---------------------------------------------------------------------------- per-example norms


def grad_norms(x: Any, y: Any, *, top: int = 10, batch_size: int = 1024) -> Callback:
    """Record, after each epoch, each example's gradient norm at the epoch's params, from
    the hand-written pass without per-example weight gradients
    (:func:`funcnn.per_example.per_example_grad_norms`, no dropout), for spotting hard or
    mislabelled examples. Adds per-epoch entries to the history (to a new dict, in the
    state it returns): ``grad_norm_mean``, ``grad_norm_max`` and ``grad_norm_top`` (the row
    indices of ``x`` with the ``top`` largest norms, largest first). Pass the training set
    to watch it, or any other set.
    """
    top = check_count("top", top)
    batch_size = check_count("batch_size", batch_size)

    def on_epoch_end(state: FitState, info: FitInfo) -> FitState:
        norms = np.concatenate([
            np.asarray(per_example_grad_norms(
                info.net, state.params, x[i:i + batch_size], y[i:i + batch_size],
                state=state.model_state if info.net.keeps_state else None), dtype=np.float64)
            for i in range(0, len(x), batch_size)])
        order = np.argsort(-norms, kind="stable")[:top]
        new = {"grad_norm_mean": float(norms.mean()), "grad_norm_max": float(norms.max()),
               "grad_norm_top": [int(i) for i in order]}
        history = dict(state.history)
        for name, value in new.items():
            history[name] = [*history.get(name, ()), value]
        return state._replace(history=history)

    return Callback(on_epoch_end=on_epoch_end)
