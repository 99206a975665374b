"""What ``fit`` and ``make_train_step`` accept as an optimizer, a gradient function and
callbacks.

Checked by duck typing, so this module imports nothing from funcnn: an optimizer
is a pair ``(init, update)`` of callables (an optax ``GradientTransformation`` is
refused with a pointer to :func:`funcnn.optax_adapter.from_optax`); a gradient function
is callable; a callback has ``on_start``, ``on_epoch_end`` or ``on_end``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["check_callbacks", "check_grad_fn", "check_optimizer"]

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


def check_grad_fn(grad_fn: Any) -> None:
    """Raise TypeError unless ``grad_fn`` is callable (a gradient function, see ``funcnn.step``)."""
    if not callable(grad_fn):
        raise TypeError(
            "grad_fn must be a gradient function grad_fn(net, params, cache, dz, *, rows, key) "
            "-> grads, e.g. funcnn.step.backward_grad (the default) or "
            f"funcnn.per_example.dp_grad(max_norm); got {type(grad_fn).__name__}"
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
