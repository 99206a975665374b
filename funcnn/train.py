"""Training loops built from the pure step (:mod:`funcnn.step`): ``fit`` and ``evaluate``.

``fit`` runs whole epochs, and only that: checkpoints, resume, early stopping and progress are
callbacks (:mod:`funcnn.callbacks`). On the jax backend each epoch is one compiled
``lax.scan`` over the batches (the short last batch padded to a full one, so the program
holds one copy of the step). It donates no buffer: the state an epoch started from stays
valid, and is what a diverged run hands back. The compiled epoch is cached by (net, kind
of optimizer, gradient function, shapes), so calling ``fit`` again does not recompile: the
optimizer's numbers (learning rate, ``eps``, weight decay) are arguments of the program
(:func:`funcnn.optim.split_hyper`), so a new learning rate does not recompile either. On
NumPy it runs the same pure step in a Python loop, with subnormal floats flushed to zero
as XLA does (:func:`flush_denormals`).

Randomness comes from the one ``key``: it is split into a shuffling key and a
dropout key, and epoch ``e`` uses ``fold_in(., e)`` of each, so a run resumed
at epoch ``e`` draws exactly what an uninterrupted run would have. Keys and row orders
are computed on the host with :mod:`funcnn.random`'s NumPy threefry, which draws what
jax draws, bit for bit, on both backends (a 60 000-row permutation costs 4 ms in
NumPy, 32 ms on the jax CPU device plus 0.27 s to compile it).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from funcnn import parallel, random
from funcnn._checks import check_count
from funcnn._fpu import flush_denormals
from funcnn.backend import (
    array_namespace,
    check_same_backend,
    enable_compilation_cache,
    is_jax_array,
    namespace,
)
from funcnn.batching import BatchSplit, epoch_order, split_batches
from funcnn.callbacks import FitInfo, FitState, copy_arrays, progress_bar
from funcnn.checked import check_params, check_state, check_x, check_y
from funcnn.losses import is_classification
from funcnn.network import Network, apply, check_net, loss_from_cache
from funcnn.optim import Optimizer, merge_hyper, split_hyper
from funcnn.step import backward_grad, check_grad_fn, check_optimizer, n_correct, train_step
from funcnn.tree import tree_leaves

__all__ = ["TrainingDiverged", "enable_compilation_cache", "evaluate", "fit"]
_HISTORY = ("loss", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")


class TrainingDiverged(FloatingPointError):
    """The loss, or after an epoch a parameter or optimizer-state value, became NaN or
    infinite; ``epoch`` and ``step`` say where (from 0).

    ``state`` is the last finite :class:`~funcnn.callbacks.FitState`: the one the diverged
    epoch started from (all its parameters and optimizer state finite, its arrays valid),
    which the callbacks' ``on_end`` also receives. ``None`` when raised outside ``fit``.
    """

    def __init__(self, message: str, epoch: int, step: int, state: FitState | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.state = state


# ---------------------------------------------------------------------------- jax programs


def _epoch_scan(params, opt_state, model_state, x, y, order, keys, hyper, *, net, optimizer,
                grad_fn, batch_size, tail, mesh):
    """One epoch as one program: a ``lax.scan`` over the batches of ``order`` (row indices),
    ``keys`` one key per batch. ``optimizer`` and ``hyper`` are the two parts of
    ``split_hyper(optimizer)``. With ``tail > 0`` the last batch is short, padded to
    ``batch_size`` rows by the host, and ``train_step`` trains on its first ``tail`` rows."""
    import jax
    import jax.numpy as jnp

    optimizer = merge_hyper(optimizer, hyper)
    n_full = order.shape[0] // batch_size
    idx = order.reshape(n_full, batch_size)
    in_tail = jnp.arange(n_full) == n_full - 1  # only used when tail > 0

    def body(carry, inputs):
        p, s, st = carry
        i, k, last = inputs
        batch = parallel.constrain_batch((x[i], y[i]), mesh)  # rows split over the devices
        p, s, loss, correct, st = train_step(net, optimizer, p, s, *batch, k, state=st,
                                             grad_fn=grad_fn, tail=tail, in_tail=last)
        return (p, s, st), (loss, correct)

    (params, opt_state, model_state), (losses, correct) = jax.lax.scan(
        body, (params, opt_state, model_state), (idx, keys[:n_full], in_tail))
    return params, opt_state, model_state, losses, correct


def _one_step(params, opt_state, model_state, x, y, key, hyper, *, net, optimizer, grad_fn,
              mesh):
    """The short last batch of a net whose rows are coupled (BatchNorm), as it is: padding
    would change its batch statistics."""
    batch = parallel.constrain_batch((x, y), mesh)
    p, s, loss, correct, st = train_step(net, merge_hyper(optimizer, hyper), params, opt_state,
                                         *batch, key, state=model_state, grad_fn=grad_fn)
    return p, s, st, loss, correct


def _eval_batch(params, model_state, x, y, *, net):
    cache = apply(net, params, x, state=model_state)
    return loss_from_cache(net, cache, y) * x.shape[0], n_correct(net, cache.out, y)


@functools.cache
def _jax_programs():
    import jax

    epoch = jax.jit(_epoch_scan, static_argnames=("net", "optimizer", "grad_fn", "batch_size",
                                                  "tail", "mesh"))
    evaluate_batch = jax.jit(_eval_batch, static_argnames=("net",))
    one_step = jax.jit(_one_step, static_argnames=("net", "optimizer", "grad_fn", "mesh"))
    all_finite = jax.jit(_leaves_finite)
    return epoch, evaluate_batch, one_step, all_finite


# ---------------------------------------------------------------------------- evaluate


def _evaluate(net, params, model_state, x, y, batch_size):
    jax_backend = is_jax_array(x)
    total_loss, total_correct = 0.0, 0.0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        if jax_backend:
            loss_sum, correct = _jax_programs()[1](params, model_state, xb, yb, net=net)
        else:
            loss_sum, correct = _eval_batch(params, model_state, xb, yb, net=net)
        total_loss += float(loss_sum)
        total_correct += float(correct)
    n = x.shape[0]
    accuracy = total_correct / n if is_classification(net.loss) else None
    return {"loss": total_loss / n, "accuracy": accuracy}


def _prepare_data(net, params, x, y, dtype, backend):
    x = check_x(net, x, dtype)
    y = check_y(net, y, x.shape[0], dtype)
    if backend == "jax":
        x, y = namespace("jax").asarray(x), namespace("jax").asarray(y)
    return x, y


def evaluate(net: Network, params, x, y, *, batch_size: int = 10_000,
             state: Any = None) -> dict:
    """``{"loss": mean loss, "accuracy": fraction right}`` on ``(x, y)``, without dropout
    (and with BatchNorm's running statistics: a net with model state needs ``state=``).

    Accuracy is the argmax match for softmax, ``p > 0.5`` for sigmoid, and ``None`` for MSE.
    """
    check_net(net)
    dtype = check_params(net, params)
    batch_size = check_count("batch_size", batch_size)
    backend = check_same_backend(params, x=x, y=y, state=state)
    state = check_state(net, state, dtype)
    x, y = _prepare_data(net, params, x, y, dtype, backend)
    return _evaluate(net, params, state, x, y, batch_size)


# ---------------------------------------------------------------------------- fit


class _Run(NamedTuple):
    """What one epoch needs besides the state."""

    net: Network
    optimizer: Optimizer
    grad_fn: Any
    x: Any
    y: Any
    validation: tuple | None
    split: BatchSplit
    order: dict  # shuffle, shuffle_every
    keys: Any  # (shuffle key, dropout key)
    mesh: Any  # None, or the jax Mesh of a data-parallel fit


def _leaves_finite(leaves: list) -> Any:
    """Whether every one of the float arrays ``leaves`` holds only finite numbers."""
    xp = array_namespace(*leaves)
    return xp.all(xp.stack([xp.isfinite(leaf).all() for leaf in leaves]))


def _all_finite(tree) -> bool:
    """True when every float leaf of ``tree`` holds only finite numbers: one compiled
    program and one sync on jax (not two dispatches per leaf)."""
    leaves = [leaf for leaf in tree_leaves(tree)
              if np.dtype(getattr(leaf, "dtype", np.int64)).kind == "f"]
    if not leaves:
        return True
    if is_jax_array(leaves[0]):
        return bool(_jax_programs()[3](leaves))
    return bool(_leaves_finite(leaves))


def _raise_if_diverged(losses: np.ndarray, trained: tuple, before: FitState) -> None:
    """Raise :class:`TrainingDiverged` (carrying ``before``, the state the epoch started
    from) when a step's loss, or the ``(params, opt_state)`` the epoch ``trained``, is not
    finite. Finite losses do not make finite params (the update after the last loss may
    overflow), so both are checked: by induction ``before`` is finite."""
    bad, epoch = np.flatnonzero(~np.isfinite(losses)), before.epoch
    if bad.size:
        step, what = int(bad[0]), f"the loss became {losses[bad[0]]}"
    elif not _all_finite(trained):
        step, what = losses.size - 1, "the parameters or optimizer state became NaN or infinite"
    else:
        return
    raise TrainingDiverged(
        f"{what} at epoch {epoch}, step {step} (counted from 0); lower the learning rate, "
        "clip gradients (funcnn.optim.with_clipping) or check the data", epoch, step, before)


def _padded(order: np.ndarray, split: BatchSplit):
    """``(order, tail)``: the short last batch padded with the first rows of the epoch to a
    full one, and its length (0: no padding)."""
    order = order[: split.rows]
    if not split.tail:
        return order, 0
    return np.concatenate([order, order[: split.size - split.tail]]), split.tail


def _run_epoch(run: _Run, params, opt_state, model_state, order, drop_key):
    """One epoch on either backend: ``(params, opt_state, model_state, step_losses,
    n_correct)``. The short last batch is padded to a full one (one compiled step on jax;
    the same rows and dropout masks on NumPy), except for a net whose rows are coupled
    (BatchNorm), where it runs as it is."""
    keys = random.split(drop_key, run.split.full + 1)  # a key per step, for dropout and grad_fn
    coupled = run.net.couples_rows
    if coupled:
        order, tail = order[: run.split.rows], 0
    else:
        order, tail = _padded(order, run.split)
    if is_jax_array(tree_leaves(params)[0]):
        return _jax_epoch(run, params, opt_state, model_state, order, keys, tail)
    with flush_denormals():  # as XLA does on CPU: subnormal Adam moments cost 4x
        return _numpy_epoch(run, params, opt_state, model_state, order, keys, tail)


def _jax_epoch(run: _Run, params, opt_state, model_state, order, keys, tail):
    size, split = run.split.size, run.split
    optimizer, hyper = split_hyper(run.optimizer)  # the numbers: traced, not compiled in
    epoch, _, one_step, _ = _jax_programs()
    static = {"net": run.net, "optimizer": optimizer, "grad_fn": run.grad_fn, "mesh": run.mesh}
    losses, correct = [], []
    n_full = split.full if run.net.couples_rows else split.count
    if n_full:
        params, opt_state, model_state, loss, right = epoch(
            params, opt_state, model_state, run.x, run.y, order[: n_full * size], keys, hyper,
            batch_size=size, tail=tail, **static)
        losses.append(np.asarray(loss))
        correct.append(float(np.sum(np.asarray(right))))
    if run.net.couples_rows and split.tail:
        rows = order[n_full * size:]
        params, opt_state, model_state, loss, right = one_step(
            params, opt_state, model_state, run.x[rows], run.y[rows], keys[n_full], hyper,
            **static)
        losses.append(np.asarray(loss)[None])
        correct.append(float(right))
    return params, opt_state, model_state, np.concatenate(losses), sum(correct)


def _numpy_epoch(run: _Run, params, opt_state, model_state, order, keys, tail):
    """The NumPy epoch: the pure step in a Python loop, stopping at a non-finite loss."""
    size, losses, right = run.split.size, np.full(run.split.count, np.nan), 0.0
    for j in range(losses.size):
        i = order[j * size:(j + 1) * size]
        last = tail and j == losses.size - 1
        # divergence is reported by TrainingDiverged (as on jax), not by NumPy's warnings
        with np.errstate(over="ignore", invalid="ignore"):
            params, opt_state, loss, correct, model_state = train_step(
                run.net, run.optimizer, params, opt_state, run.x[i], run.y[i], keys[j],
                state=model_state, grad_fn=run.grad_fn, tail=tail if last else 0,
                in_tail=bool(last))
        losses[j] = loss
        right += float(correct)
        if not math.isfinite(losses[j]):
            break
    return params, opt_state, model_state, losses, right


def _train_epoch(run: _Run, state: FitState) -> FitState:
    """``state`` after one more epoch; raises TrainingDiverged before changing anything."""
    start, epoch = time.perf_counter(), state.epoch
    order = epoch_order(run.keys[0], run.x.shape[0], epoch=epoch, **run.order)
    params, opt_state, model_state, losses, right = _run_epoch(
        run, state.params, state.opt_state, state.model_state, order,
        random.fold_in(run.keys[1], epoch))
    _raise_if_diverged(losses, (params, opt_state, model_state), state)
    history = {name: list(values) for name, values in state.history.items()}
    history["loss"].extend(losses.tolist())
    sizes = [run.split.size] * run.split.full + [run.split.tail] * (run.split.tail > 0)
    history["train_loss"].append(float(np.dot(losses, sizes) / run.split.rows))
    history["train_accuracy"].append(right / run.split.rows
                                     if is_classification(run.net.loss) else None)
    if run.validation is not None:
        val = _evaluate(run.net, params, model_state, *run.validation, 10_000)
        history["val_loss"].append(val["loss"])
        history["val_accuracy"].append(val["accuracy"])
    history["seconds"].append(time.perf_counter() - start)
    return state._replace(params=params, opt_state=opt_state, model_state=model_state,
                          epoch=epoch + 1, history=history)


def _call(hooks: tuple, name: str, state: FitState, info: FitInfo) -> FitState:
    """Call ``name`` on every hook, each on the state the one before returned (a returned
    state is checked; ``None`` keeps the state)."""
    for i, hook in enumerate(hooks):
        fn = getattr(hook, name, None)
        new = fn(state, info) if fn is not None else None
        if new is None:
            continue
        if not isinstance(new, FitState):
            raise TypeError(f"{name} of callback {i} returned a {type(new).__name__}; "
                            "expected a funcnn.callbacks.FitState or None")
        dtype, given = check_params(info.net, new.params), check_params(info.net, state.params)
        if dtype != given or check_same_backend(new.params, opt_state=new.opt_state) \
                != info.backend:
            raise TypeError(f"{name} of callback {i} returned {dtype} params on another "
                            f"backend or dtype than fit's {given} {info.backend} params")
        state = new._replace(epoch=check_count(f"the epoch on_start of callback {i} returned",
                                               new.epoch, minimum=0))
    return state


def fit(
    net: Network, params, optimizer: Optimizer, x, y, *, epochs: int, batch_size: int | None,
    key: Any, grad_fn=backward_grad, opt_state=None, state: Any = None,
    validation: tuple | None = None,
    shuffle: bool = True, shuffle_every: int = 1, drop_last: bool = False,
    initial_epoch: int = 0, callbacks: Sequence = (), progress: bool = True,
    devices: Any = None,
):
    """Train for epochs ``initial_epoch .. epochs - 1``; return ``(params, opt_state, history)``
    (and the model state last, ``(params, opt_state, history, state)``, when ``state`` is
    given: a net with BatchNorm needs it).

    Args:
      key: an int seed or a ``funcnn.random`` key; it decides shuffling and dropout.
      batch_size: rows per step; ``None`` for full-batch gradient descent.
      grad_fn: the gradient function of each step (see :mod:`funcnn.step`): the
        hand-written backward pass by default, ``funcnn.per_example.dp_grad(max_norm,
        noise_multiplier)`` for DP-SGD.
      opt_state: ``None`` starts a fresh optimizer state; pass one to continue it.
      state: the model state (``funcnn.init_state(net)``) of a net that keeps one.
      validation: ``(x_val, y_val)`` evaluated after every epoch.
      shuffle_every: draw a new row order every k-th epoch (and keep it in between).
      initial_epoch: the epoch to start from (its randomness is that of epoch ``e``).
      callbacks: objects with ``on_start``, ``on_epoch_end`` or ``on_end`` (see
        :mod:`funcnn.callbacks`), e.g. ``[funcnn.callbacks.early_stopping(5),
        funcnn.callbacks.checkpoint(path, resume=True)]``.
      progress: a progress bar on stderr (one line per epoch without tqdm).
      devices: ``None`` (one device), or jax devices or a ``Mesh`` with a ``"data"`` axis
        to split every batch over (data parallelism, see :mod:`funcnn.parallel`).

    ``history`` holds ``loss`` (every step), and per epoch ``train_loss``,
    ``train_accuracy`` (running, as Keras reports them), ``val_loss``, ``val_accuracy``
    and ``seconds`` (and what callbacks add, e.g. ``best_epoch`` after early stopping).
    A NaN or infinite loss (or, after an epoch, parameter or optimizer-state value) raises
    :class:`TrainingDiverged`, which carries the last finite state as ``state``; the
    callbacks' ``on_end`` gets that same state.
    """
    check_net(net)
    check_optimizer(optimizer)
    check_grad_fn(grad_fn)
    dtype = check_params(net, params)
    epochs = check_count("epochs", epochs)
    if batch_size is not None:
        batch_size = check_count("batch_size", batch_size)
    shuffle_every = check_count("shuffle_every", shuffle_every)
    initial_epoch = check_count("initial_epoch", initial_epoch, minimum=0)
    if not 0 <= initial_epoch <= epochs:
        raise ValueError(f"initial_epoch must be in [0, epochs={epochs}]; got {initial_epoch}")
    backend = check_same_backend(params, x=x, y=y, opt_state=opt_state, validation=validation,
                                 state=state)
    model_state = check_state(net, state, dtype)
    x, y = _prepare_data(net, params, x, y, dtype, backend)
    if validation is not None:
        if not (isinstance(validation, tuple | list) and len(validation) == 2):
            raise TypeError("validation must be a pair (x_val, y_val)")
        validation = _prepare_data(net, params, *validation, dtype, backend)
    split = split_batches(x.shape[0], batch_size, drop_last)
    # the short last batch is padded to a full one on jax: only full batches must divide
    mesh = parallel.fit_mesh(devices, split._replace(tail=0), x.shape[0], backend)
    hooks = check_callbacks(callbacks, progress)
    hooks = (*hooks, progress_bar()) if progress else hooks
    info = FitInfo(net, epochs, backend, validation is not None)
    given, state = state, FitState(
        params, optimizer.init(params) if opt_state is None else opt_state, initial_epoch,
        random.as_key(key, backend), {k: [] for k in _HISTORY}, None, model_state=model_state)
    try:
        state = _call(hooks, "on_start", state, info)
        state = _ready(state, backend)
        state, (x, y, validation) = parallel.place_fit(mesh, state, (x, y, validation))
        run = _Run(net, optimizer, grad_fn, x, y, validation, split,
                   {"shuffle": shuffle, "shuffle_every": shuffle_every},
                   random.split(random.as_key(state.key, "numpy")), mesh)
        while state.epoch < epochs and not state.stop:
            state = _train_epoch(run, state)
            state = _call(hooks, "on_epoch_end", state, info)
    finally:
        state = _call(hooks, "on_end", state, info)
    result = (state.params, state.opt_state, state.history)
    return result if given is None else (*result, state.model_state)


def _ready(state: FitState, backend: str) -> FitState:
    """The state training starts from, with the key on the backend. On NumPy, private
    copies: the updates write into their arrays, never into the caller's. jax arrays are
    immutable and fit donates none, so they are shared as they are (copying them cost
    ~9 ms a call)."""
    if backend == "jax":
        return state._replace(key=random.as_key(state.key, backend))
    return state._replace(params=copy_arrays(state.params),
                          opt_state=copy_arrays(state.opt_state),
                          model_state=copy_arrays(state.model_state),
                          key=random.as_key(state.key, backend))


# ---------------------------------------------------------------------------- checks


_HOOKS = ("on_start", "on_epoch_end", "on_end")


def check_callbacks(callbacks: Any, progress: Any) -> tuple:
    """``callbacks`` as a tuple, after checking that each one has a hook."""
    if any(hasattr(callbacks, n) for n in _HOOKS) or not isinstance(callbacks, Sequence) \
            or isinstance(callbacks, str):
        raise TypeError("callbacks must be a list of callbacks, e.g. "
                        f"[funcnn.callbacks.checkpoint(path)]; got {type(callbacks).__name__}")
    for i, cb in enumerate(callbacks):
        if not any(callable(getattr(cb, n, None)) for n in _HOOKS):
            raise TypeError(f"callbacks[{i}] is a {type(cb).__name__}; a callback has a method "
                            "on_start, on_epoch_end or on_end (see funcnn.callbacks.Callback)")
    if type(progress) is not bool:
        raise TypeError(f"progress must be True or False; got {type(progress).__name__}")
    return tuple(callbacks)
