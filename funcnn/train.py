"""Training loops built from the pure pieces: a train step, ``fit`` and ``evaluate``.

``make_train_step(net, optimizer)`` returns the pure function every loop is
made of::

    step = funcnn.make_train_step(net, funcnn.optim.adam(1e-3))
    params, opt_state, loss = step(params, opt_state, xb, yb)          # or jax.jit(step)

``fit`` runs whole epochs. On the jax backend it shuffles on the device and
runs each epoch as one compiled ``lax.scan`` over the batches, donating the
parameter and optimizer buffers; the compiled epoch is cached by (net,
optimizer, shapes), so calling ``fit`` again does not recompile. On NumPy it
runs the same pure step in a Python loop.

Randomness comes from the one ``key``: it is split into a shuffling key and a
dropout key, and epoch ``e`` uses ``fold_in(., e)`` of each, so a run resumed
at epoch ``e`` draws exactly what an uninterrupted run would have.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from typing import Any

import numpy as np

from funcnn import random
from funcnn._checks import check_positive
from funcnn._mlp_checks import check_x, check_y
from funcnn.backend import array_namespace, check_same_backend, is_jax_array, namespace
from funcnn.batching import epoch_order
from funcnn.mlp import MLP, apply, backward, check_net, check_params, dropout_masks, loss_from_cache
from funcnn.optim import Optimizer
from funcnn.tree import tree_map

__all__ = ["TrainingDiverged", "evaluate", "fit", "make_train_step"]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; ``epoch`` and ``step`` say where (from 0)."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch = epoch
        self.step = step


# ---------------------------------------------------------------------------- the step


def _n_correct(net: MLP, out: Any, y: Any) -> Any:
    """How many rows are classified right (a fraction per row for multi-label sigmoid)."""
    xp = array_namespace(out)
    if net.loss == "cross_entropy":
        labels = y if y.ndim == 1 else xp.argmax(y, axis=1)
        return xp.sum(xp.argmax(out, axis=1) == labels)
    if net.loss == "binary_cross_entropy":
        return xp.sum((out > 0.5) == (y > 0.5)) / out.shape[1]
    return xp.zeros((), dtype=out.dtype)


def _step(net: MLP, optimizer: Optimizer, params, opt_state, x, y, key):
    """One update on a prepared batch: ``(params, opt_state, loss, n_correct)``."""
    if net.dropout > 0 and key is not None:
        backend = "jax" if is_jax_array(x) else "numpy"
        masks = dropout_masks(net, key, x.shape[0], x.dtype, backend)
    else:
        masks = (None,) * (net.n_layers - 1)
    cache = apply(net, params, x, masks)
    loss = loss_from_cache(net, cache, y)
    grads = backward(net, params, cache, y)
    params, opt_state = optimizer.update(params, grads, opt_state)
    return params, opt_state, loss, _n_correct(net, cache.out, y)


def make_train_step(net: MLP, optimizer: Optimizer):
    """A pure step ``(params, opt_state, x, y, key=None) -> (params, opt_state, loss)``.

    It checks shapes and dtypes (also while ``jax.jit`` traces it) and applies dropout
    when ``key`` is given and the net has dropout. Jit it with ``jax.jit(step)``.
    """
    check_net(net)
    _check_optimizer(optimizer)

    def step(params, opt_state, x, y, key=None):
        dtype = check_params(net, params)
        check_same_backend(params, x=x, y=y)
        x = check_x(net, x, dtype)
        y = check_y(net, y, x.shape[0], dtype)
        params, opt_state, loss, _ = _step(net, optimizer, params, opt_state, x, y, key)
        return params, opt_state, loss

    return step


def _check_optimizer(optimizer: Any) -> None:
    if not (isinstance(optimizer, tuple) and len(optimizer) == 2 and all(map(callable, optimizer))):
        raise TypeError(
            "optimizer must be a funcnn.optim.Optimizer(init, update), e.g. "
            f"funcnn.optim.adam(1e-3); got {type(optimizer).__name__}"
        )


# ---------------------------------------------------------------------------- jax programs


def _epoch_scan(params, opt_state, x, y, order, keys, *, net, optimizer, batch_size):
    """One epoch as one program: a ``lax.scan`` over the full batches, then the short
    last batch (if ``order`` has one); returns per-step losses and counts.

    ``keys`` holds one dropout key per batch (or is ``None``).
    """
    import jax
    import jax.numpy as jnp

    n_full = order.shape[0] // batch_size
    idx = order[: n_full * batch_size].reshape(n_full, batch_size)

    def body(carry, inputs):
        p, s = carry
        i, k = inputs
        p, s, loss, correct = _step(net, optimizer, p, s, x[i], y[i], k)
        return (p, s), (loss, correct)

    scan_keys = None if keys is None else keys[:n_full]
    (params, opt_state), (losses, correct) = jax.lax.scan(
        body, (params, opt_state), (idx, scan_keys)
    )
    if order.shape[0] > n_full * batch_size:  # static: the tail is compiled in, not apart
        i = order[n_full * batch_size:]
        k = None if keys is None else keys[n_full]
        params, opt_state, loss, n = _step(net, optimizer, params, opt_state, x[i], y[i], k)
        losses = jnp.append(losses, loss)
        correct = jnp.append(correct, n)
    return params, opt_state, losses, correct


def _eval_batch(params, x, y, *, net):
    cache = apply(net, params, x, (None,) * (net.n_layers - 1))
    return loss_from_cache(net, cache, y) * x.shape[0], _n_correct(net, cache.out, y)


@functools.cache
def _jax_programs():
    import jax

    epoch = jax.jit(_epoch_scan, static_argnames=("net", "optimizer", "batch_size"),
                    donate_argnums=(0, 1))
    evaluate_batch = jax.jit(_eval_batch, static_argnames=("net",))
    return epoch, evaluate_batch


# ---------------------------------------------------------------------------- evaluate


def _evaluate(net, params, x, y, batch_size):
    jax_backend = is_jax_array(x)
    total_loss, total_correct = 0.0, 0.0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        if jax_backend:
            loss_sum, correct = _jax_programs()[1](params, xb, yb, net=net)
        else:
            loss_sum, correct = _eval_batch(params, xb, yb, net=net)
        total_loss += float(loss_sum)
        total_correct += float(correct)
    n = x.shape[0]
    accuracy = None if net.loss == "mse" else total_correct / n
    return {"loss": total_loss / n, "accuracy": accuracy}


def _prepare_data(net, params, x, y, dtype, backend):
    x = check_x(net, x, dtype)
    y = check_y(net, y, x.shape[0], dtype)
    if backend == "jax":
        jnp = namespace("jax")
        x, y = jnp.asarray(x), jnp.asarray(y)
    return x, y


def evaluate(net: MLP, params, x, y, *, batch_size: int = 10_000) -> dict:
    """``{"loss": mean loss, "accuracy": fraction right}`` on ``(x, y)``, without dropout.

    Accuracy is the argmax match for softmax, ``p > 0.5`` for sigmoid, and ``None`` for MSE.
    """
    check_net(net)
    dtype = check_params(net, params)
    check_positive("batch_size", batch_size, integer=True)
    backend = check_same_backend(params, x=x, y=y)
    x, y = _prepare_data(net, params, x, y, dtype, backend)
    return _evaluate(net, params, x, y, batch_size)


# ---------------------------------------------------------------------------- fit


def _progress(total: int, enabled: bool, initial: int):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="epoch", file=sys.stderr, dynamic_ncols=True)


def _copy(tree):
    return tree_map(lambda a: array_namespace(a).array(a, copy=True), tree)


def _raise_if_diverged(losses: np.ndarray, epoch: int) -> None:
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        step = int(bad[0])
        raise TrainingDiverged(
            f"the loss became {losses[step]} at epoch {epoch}, step {step} (counted from 0); "
            "lower the learning rate, clip gradients (funcnn.optim.with_clipping) or check "
            "the data",
            epoch, step,
        )


def _run_epoch(net, optimizer, params, opt_state, x, y, order, drop_key, batch_size, drop_last):
    """One epoch on either backend: ``(params, opt_state, step_losses, n_correct, n_seen)``."""
    n = order.shape[0]
    size = n if batch_size is None else min(batch_size, n)
    n_full = n // size
    tail = 0 if drop_last else n - n_full * size
    keys = random.split(drop_key, n_full + 1) if net.dropout > 0 else [None] * (n_full + 1)
    if is_jax_array(params[0].W):
        params, opt_state, losses, correct = _jax_programs()[0](
            params, opt_state, x, y, order[: n_full * size + tail],
            None if keys[0] is None else keys, net=net, optimizer=optimizer, batch_size=size,
        )
        return params, opt_state, np.asarray(losses), float(np.sum(np.asarray(correct))), \
            n_full * size + tail
    losses = np.full(n_full + (1 if tail else 0), np.nan)
    n_correct = 0.0
    for j in range(losses.size):
        i = order[j * size:(j + 1) * size]
        # divergence is reported by TrainingDiverged (as on jax), not by NumPy's warnings
        with np.errstate(over="ignore", invalid="ignore"):
            params, opt_state, loss, correct = _step(net, optimizer, params, opt_state, x[i],
                                                     y[i], keys[j])
        losses[j] = loss
        n_correct += float(correct)
        if not math.isfinite(losses[j]):
            break
    return params, opt_state, losses, n_correct, n_full * size + tail


def fit(
    net: MLP, params, optimizer: Optimizer, x, y, *, epochs: int, batch_size: int | None,
    key: Any, opt_state=None, validation: tuple | None = None, progress: bool = True,
    shuffle: bool = True, shuffle_every: int = 1, drop_last: bool = False,
    early_stopping: int | None = None, initial_epoch: int = 0,
    checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1, resume: bool = False,
):
    """Train for epochs ``initial_epoch .. epochs - 1``; return ``(params, opt_state, history)``.

    Args:
      key: an int seed or a ``funcnn.random`` key; it decides shuffling and dropout.
      batch_size: rows per step; ``None`` for full-batch gradient descent.
      opt_state: ``None`` starts a fresh optimizer state; pass one to continue it.
      validation: ``(x_val, y_val)`` evaluated after every epoch.
      shuffle_every: draw a new row order every k-th epoch (and keep it in between).
      early_stopping: stop after this many epochs without a lower validation loss and
        return the best parameters (and their optimizer state).
      checkpoint: a file that gets params, optimizer state, key, epoch and history every
        ``checkpoint_every`` epochs and after the last one (written atomically).
      resume: if ``checkpoint`` exists, continue from it: its params, optimizer state, key,
        epoch and history replace the arguments, and training goes on to ``epochs``. The
        result is bit-identical to a run that was never interrupted.
      initial_epoch: the epoch to start from (its randomness is that of epoch ``e``).

    ``history`` holds ``loss`` (every step), and per epoch ``train_loss``,
    ``train_accuracy`` (running, as Keras reports them), ``val_loss``, ``val_accuracy``
    and ``seconds``. A NaN or infinite loss raises :class:`TrainingDiverged`.
    """
    check_net(net)
    _check_optimizer(optimizer)
    dtype = check_params(net, params)
    check_positive("epochs", epochs, integer=True)
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
    check_positive("checkpoint_every", checkpoint_every, integer=True)
    if early_stopping is not None:
        check_positive("early_stopping", early_stopping, integer=True)
        if validation is None:
            raise ValueError("early_stopping needs validation=(x_val, y_val)")
    check_positive("initial_epoch", initial_epoch, integer=True, allow_zero=True)
    if not 0 <= initial_epoch <= epochs:
        raise ValueError(f"initial_epoch must be in [0, epochs={epochs}]; got {initial_epoch}")
    backend = check_same_backend(params, x=x, y=y, opt_state=opt_state,
                                 validation=validation)
    x, y = _prepare_data(net, params, x, y, dtype, backend)
    if validation is not None:
        if not (isinstance(validation, tuple | list) and len(validation) == 2):
            raise TypeError("validation must be a pair (x_val, y_val)")
        xv, yv = _prepare_data(net, params, *validation, dtype, backend)
    history = _new_history()
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        params, opt_state, key, initial_epoch, history = _resume(checkpoint, net, backend)
        _check_resumed(checkpoint, net, params, dtype)
    root = random.as_key(key, backend)
    shuffle_key, dropout_key = random.split(root)
    params = _copy(params)  # the jax programs donate their inputs; the caller's stay valid
    opt_state = optimizer.init(params) if opt_state is None else _copy(opt_state)
    best = (math.inf, params, opt_state, initial_epoch)
    bar = _progress(epochs, progress, initial_epoch)
    n = x.shape[0]
    try:
        for epoch in range(initial_epoch, epochs):
            start = time.perf_counter()
            order = epoch_order(shuffle_key, n, epoch=epoch, shuffle=shuffle,
                                shuffle_every=shuffle_every)
            if backend == "jax" and not is_jax_array(order):
                order = namespace("jax").asarray(order)
            params, opt_state, losses, n_correct, seen = _run_epoch(
                net, optimizer, params, opt_state, x, y, order,
                random.fold_in(dropout_key, epoch), batch_size, drop_last,
            )
            _raise_if_diverged(losses, epoch)
            history["loss"].extend(float(v) for v in losses)
            sizes = _batch_sizes(n, batch_size, drop_last)
            history["train_loss"].append(float(np.dot(losses, sizes) / sizes.sum()))
            history["train_accuracy"].append(None if net.loss == "mse" else n_correct / seen)
            if validation is not None:
                val = _evaluate(net, params, xv, yv, 10_000)
                history["val_loss"].append(val["loss"])
                history["val_accuracy"].append(val["accuracy"])
            history["seconds"].append(time.perf_counter() - start)
            stop = False
            if early_stopping is not None:
                if history["val_loss"][-1] < best[0]:
                    best = (history["val_loss"][-1], _copy(params), _copy(opt_state), epoch + 1)
                elif epoch + 1 - best[3] >= early_stopping:
                    stop = True
            if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0 or stop
                                           or epoch + 1 == epochs):
                _save(checkpoint, net, params, opt_state, root, epoch + 1, history)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(_postfix(history), refresh=False)
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
    if early_stopping is not None and math.isfinite(best[0]):
        params, opt_state = best[1], best[2]
        history["best_epoch"] = [best[3] - 1]
    return params, opt_state, history


def _new_history() -> dict:
    keys = ("loss", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
    return {k: [] for k in keys}


def _batch_sizes(n: int, batch_size: int | None, drop_last: bool) -> np.ndarray:
    size = n if batch_size is None else min(batch_size, n)
    sizes = [size] * (n // size)
    if not drop_last and n % size:
        sizes.append(n % size)
    return np.asarray(sizes, dtype=np.float64)


def _postfix(history: dict) -> dict:
    out = {"loss": f"{history['train_loss'][-1]:.4f}"}
    if history["train_accuracy"][-1] is not None:
        out["acc"] = f"{history['train_accuracy'][-1]:.4f}"
    if history["val_loss"]:
        out["val_loss"] = f"{history['val_loss'][-1]:.4f}"
        if history["val_accuracy"][-1] is not None:
            out["val_acc"] = f"{history['val_accuracy'][-1]:.4f}"
    return out


def _save(path, net, params, opt_state, key, epoch, history):
    from funcnn.checkpoint import save

    metadata = {"epoch": epoch, "key": [int(v) for v in np.asarray(key)], "history": history}
    save(path, params, opt_state, net=net, metadata=metadata)


def _check_resumed(path, net, params, dtype):
    """The checkpoint's params must have the dtype the data were cast to."""
    saved = check_params(net, params)
    if saved != dtype:
        raise TypeError(
            f"checkpoint {os.fspath(path)!r} holds {saved} params but the params passed to fit "
            f"are {dtype}; pass params of the checkpoint's dtype (the data are cast to it)"
        )


def _resume(path, net, backend):
    from funcnn.checkpoint import load

    ckpt = load(path, backend=backend, net=net)
    meta = ckpt.metadata or {}
    if not {"epoch", "key", "history"} <= set(meta):
        raise ValueError(f"{os.fspath(path)} is not a checkpoint written by fit (no epoch/key)")
    key = np.asarray(meta["key"], dtype=np.uint32)
    history = {k: list(v) for k, v in meta["history"].items()}
    return ckpt.params, ckpt.opt_state, key, int(meta["epoch"]), history
