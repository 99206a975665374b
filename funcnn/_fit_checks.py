"""What ``fit`` and ``make_train_step`` accept as an optimizer and as callbacks.

Checked by duck typing, so this module imports nothing from funcnn: an optimizer
is a pair ``(init, update)`` of callables (an optax ``GradientTransformation`` is
refused with a pointer to :func:`funcnn.optax_adapter.from_optax`), hashable when
jax compiles for it; a callback has ``on_start``, ``on_epoch_end`` or ``on_end``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

__all__ = ["check_callbacks", "check_hashable", "check_optimizer"]

_HOOKS = ("on_start", "on_epoch_end", "on_end")


def check_optimizer(optimizer: Any) -> None:
    """Raise TypeError unless ``optimizer`` is a funcnn ``Optimizer(init, update)``."""
    if type(optimizer).__module__.partition(".")[0] == "optax":
        raise TypeError(
            "fit and make_train_step take a funcnn.optim.Optimizer, whose update is "
            "(params, grads, state) -> (params, state); got an optax "
            f"{type(optimizer).__name__}, whose update is (updates, state, params). Wrap it: "
            "funcnn.optax_adapter.from_optax(tx)"
        )
    if not (isinstance(optimizer, tuple) and len(optimizer) == 2 and all(map(callable, optimizer))):
        raise TypeError(
            "optimizer must be a funcnn.optim.Optimizer(init, update), e.g. "
            f"funcnn.optim.adam(1e-3); got {type(optimizer).__name__}"
        )


def _unhashable(obj: Any, name: str) -> tuple[str, Any] | None:
    """``(name, value)`` of the first part of ``obj`` that cannot be hashed, or ``None``.

    Dataclass fields and ``(name, value)`` pairs (the hyperparameters of funcnn's
    optimizers) give the name; other tuples keep the name of what holds them."""
    try:
        hash(obj)
        return None
    except TypeError:
        pass
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        parts = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    elif isinstance(obj, tuple) and len(obj) == 2 and type(obj[0]) is str:
        parts = [obj]
    elif isinstance(obj, tuple):
        parts = [(name, item) for item in obj]
    else:
        return name, obj
    return next(filter(None, (_unhashable(v, n) for n, v in parts)), (name, obj))


def check_hashable(optimizer: Any) -> None:
    """Raise TypeError naming the hyperparameter that keeps ``optimizer`` from being
    hashed: jax compiles fit's epoch once per optimizer, a static (cache key) argument."""
    bad = _unhashable(optimizer, "optimizer")
    if bad is not None:
        name, value = bad
        shape = getattr(value, "shape", None)
        what = type(value).__name__ + ("" if shape is None else f" of shape {tuple(shape)}")
        raise TypeError(
            f"the optimizer's {name} is a {what}, which cannot be hashed; fit on jax compiles "
            "one program per optimizer and needs hashable hyperparameters: pass Python "
            f"numbers (e.g. {name}=float(...)) or tuples instead"
        )


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
