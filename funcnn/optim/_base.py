"""What every optimizer shares: the ``Optimizer`` pair, one check per kind of
hyperparameter, hyperparameters split out as data for a compiled loop, the state checks
and the leaf-by-leaf loop.

Private: ``funcnn.optim`` re-exports the public names.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from funcnn._checks import (
    check_float_leaves,
    check_lr,
    check_params_like,
    check_positive,
    check_same_backend,
    check_update,
    same_numpy_layout,
)
from funcnn.backend import array_namespace, is_concrete, is_jax_array
from funcnn.tree import tree_leaves, tree_map, tree_unflatten

__all__ = ["COMPILED_IN", "Optimizer", "Static", "merge_hyper", "split_hyper"]


class Optimizer(NamedTuple):
    """A pair of pure functions: ``init(params) -> state`` and
    ``update(params, grads, state) -> (params, state)``."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], tuple[Any, Any]]


# ---------------------------------------------------------------------------- hyperparameters
# One check per kind of hyperparameter, called by the free functions (on every call) and
# by the factories (once): both refuse the same values with the same message. Values are
# checked when concrete; a jax tracer is not.


def _real(name: str, value: Any, expected: str) -> float | None:
    """``value`` as a Python float; ``None`` for a tracer; TypeError if not a real number."""
    if not is_concrete(value):
        return None
    array = isinstance(value, np.ndarray | np.generic) or is_jax_array(value)
    if array and value.shape == () and np.dtype(value.dtype).kind in "fiu":
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    what = f"an array of shape {tuple(value.shape)} and dtype {value.dtype}" if array else \
        f"{type(value).__name__} {value!r}"
    raise TypeError(f"{name} must be {expected}; got {what}")


def _check_fraction(name: str, value: Any) -> None:
    """``momentum``, ``b1``, ``b2``, ``decay``: a number in [0, 1)."""
    if type(value) is float and 0.0 <= value < 1.0:  # the common case, on every step
        return
    number = _real(name, value, "a number in [0, 1)")
    if number is not None and not 0.0 <= number < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {value!r}")


def _check_non_negative(name: str, value: Any) -> None:
    """``eps``, ``weight_decay``, ``initial_accumulator``: a finite number >= 0."""
    if type(value) is float and 0.0 <= value < math.inf:
        return
    number = _real(name, value, "a non-negative finite number")
    if number is not None and not 0.0 <= number < math.inf:
        raise ValueError(f"{name} must be non-negative and finite, in [0, inf); got {value!r}")


def _check_flag(name: str, value: Any) -> None:
    """``nesterov``, ``centered``: True or False."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "lr": lambda name, value: check_lr(value, name),  # positive and finite, or a schedule
    "max_norm": check_positive,  # positive and finite
    **dict.fromkeys(("momentum", "b1", "b2", "decay"), _check_fraction),
    **dict.fromkeys(("eps", "weight_decay", "initial_accumulator"), _check_non_negative),
    **dict.fromkeys(("nesterov", "centered"), _check_flag),
}


def check_hyper(**values: Any) -> None:
    """Check each hyperparameter by its kind, e.g. ``check_hyper(lr=lr, b1=b1)``."""
    for name, value in values.items():
        _CHECKS[name](name, value)
    momentum = values.get("momentum", 0.0)
    if values.get("nesterov") and is_concrete(momentum) and not float(momentum) > 0:
        raise ValueError(f"nesterov=True needs momentum > 0; got momentum={momentum!r}")


def off_if_zero(value: Any) -> Any:
    """``None`` for a concrete zero (the leaf updates skip that term), else ``value``."""
    return None if is_concrete(value) and not callable(value) and float(value) == 0 else value


# ---------------------------------------------------------------------------- factories


def make(init: Callable[..., Any], update: Callable[..., Any], **hyper: Any) -> Optimizer:
    """``Optimizer(init, partial(update, **hyper))``, after checking ``hyper`` as the free
    functions do: a factory's hyperparameters stay plain data, readable as
    ``opt.update.keywords``."""
    check_hyper(**{k: v for k, v in hyper.items() if k in _CHECKS})
    return Optimizer(init, partial(update, **hyper))


# ------------------------------------------------------------------------ hyperparameters as data

COMPILED_IN = frozenset({"momentum", "b1", "b2", "decay", "nesterov", "centered"})
"""Hyperparameters that :func:`split_hyper` leaves in the program rather than tracing: the
flags, which change its operations, and the fractions, whose ``1 - b`` and ``log b`` are
computed on the host from the exact number (in float32 on a device, ``1 - 0.999`` would be
off by 1.3e-5 relative, see :func:`one_minus`)."""


class Static(NamedTuple):
    """A ``functools.partial`` without its traced hyperparameters: hashable, for a jit cache."""

    func: Callable[..., Any]
    args: tuple
    keywords: tuple  # sorted (name, value) pairs


def _traced(name: str, value: Any) -> bool:
    return not (name in COMPILED_IN or value is None or callable(value)
                or isinstance(value, bool | np.bool_ | str))


def _plain(value: Any) -> Any:
    """A concrete 0-d array as a Python number (hashable); anything else as it is."""
    if isinstance(value, np.ndarray | np.generic) or is_jax_array(value):
        return value.item()
    return value


def split_hyper(fn: Any) -> tuple[Any, Any]:
    """``(static, hyper)``: ``fn`` without its numeric hyperparameters, and them.

    ``fn`` is an :class:`Optimizer` (split field by field), a ``functools.partial`` as the
    factories build, or any other callable (returned as ``static``, with ``hyper = {}``).
    Of a partial, ``hyper`` is the dict of its keyword numbers and arrays (the learning
    rate, ``eps``, ``weight_decay``, an array mask; a nested partial gives a nested dict);
    ``static`` keeps the function, the flags, the callables (schedules, masks) and the
    :data:`COMPILED_IN` fractions. ``merge_hyper(static, hyper)`` rebuilds ``fn``.

    This is how ``fit`` compiles one epoch program per kind of optimizer: ``static`` is a
    static (hashed) argument of the jitted program and ``hyper`` a traced one, so
    optimizers built alike share the program and a new learning rate does not recompile.
    """
    if isinstance(fn, Optimizer):
        init, update = split_hyper(fn.init), split_hyper(fn.update)
        return Optimizer(init[0], update[0]), Optimizer(init[1], update[1])
    if not isinstance(fn, partial):
        return fn, {}
    static, hyper = [], {}
    for name, value in fn.keywords.items():
        if isinstance(value, partial):
            inner, hyper[name] = split_hyper(value)
            static.append((name, inner))
        elif _traced(name, value):
            hyper[name] = value
        else:
            static.append((name, _plain(value)))
    return Static(fn.func, fn.args, tuple(sorted(static, key=lambda kv: kv[0]))), hyper


def merge_hyper(static: Any, hyper: Any) -> Any:
    """The inverse of :func:`split_hyper`: ``static`` with the values of ``hyper`` put back."""
    if isinstance(static, Optimizer):
        return Optimizer(merge_hyper(static.init, hyper.init),
                         merge_hyper(static.update, hyper.update))
    if not isinstance(static, Static):
        return static
    keywords = {name: merge_hyper(value, hyper[name]) if isinstance(value, Static) else value
                for name, value in static.keywords}
    keywords.update((name, value) for name, value in hyper.items() if name not in keywords)
    return partial(static.func, *static.args, **keywords)


# ---------------------------------------------------------------------------- states and leaves


def zeros(params: Any) -> Any:
    """Zeros shaped like ``params``."""
    return tree_map(lambda p: _zeros(p, p.shape, p.dtype), params)


def _zeros(like: Any, shape: tuple, dtype: Any) -> Any:
    """Zeros on the backend of ``like``. For a concrete jax array on the default device,
    NumPy zeros moved there: ``jnp.zeros`` would compile a program per shape (~25 ms
    each, paid by every new process before its first step)."""
    if is_jax_array(like) and is_concrete(like) and like.is_fully_addressable \
            and not like.committed:
        return sys.modules["jax"].device_put(np.zeros(shape, dtype))
    if is_jax_array(like) and shape == like.shape:
        return array_namespace(like).zeros_like(like, dtype=dtype)  # keeps its sharding
    return array_namespace(like).zeros(shape, dtype=dtype)


def count0(params: Any) -> Any:
    """The step count of a fresh state, after checking that ``params`` are float arrays."""
    check_same_backend(params)
    check_float_leaves("params", params)
    leaves = tree_leaves(params)
    return _zeros(leaves[0], (), "int32") if leaves else np.zeros((), "int32")


def learning_rate(lr: Any, count: Any) -> Any:
    return lr(count) if callable(lr) else lr


def check_state(kind: type, state: Any, params: Any, grads: Any) -> None:
    """``state`` is a ``kind`` whose per-leaf fields (all but ``count``) and ``grads`` match
    ``params`` in structure, shapes, dtypes and backend."""
    if not isinstance(state, kind):
        raise TypeError(
            f"state must be a {kind.__name__} (from the matching init); got {type(state).__name__}"
        )
    fields = state._fields[1:]
    if same_numpy_layout(params, grads, *state[1:]):  # the common case, in one walk
        return
    check_params_like("grads", grads, params)
    for field in fields:
        check_params_like(f"state.{field}", getattr(state, field), params)
    check_update(params, grads, state, fields)


def leafwise(leaf_update: Callable[..., tuple], params: Any, *trees: Any, **scalars: Any):
    """Run ``leaf_update(p, *leaves, **scalars)`` on each leaf of ``params``; return one
    tree per output.

    Each scalar is cast to the leaf's dtype (so float32 stays float32, also under jax's
    strict promotion), once per dtype; ``None`` and ``bool`` scalars are passed as they are.
    """
    leaves = tree_leaves(params)
    xp = array_namespace(*leaves[:1])
    cast: dict[Any, dict[str, Any]] = {}
    outs = []
    for p, *rest in zip(leaves, *map(tree_leaves, trees), strict=True):
        if p.dtype not in cast:
            cast[p.dtype] = {k: v if v is None or isinstance(v, bool)
                             else xp.asarray(v, dtype=p.dtype) for k, v in scalars.items()}
        outs.append(leaf_update(p, *rest, **cast[p.dtype]))
    return tuple(tree_unflatten(params, list(column)) for column in zip(*outs, strict=True))


def as_real(params: Any, *values: Any) -> tuple:
    """Numbers (the step count, a learning rate, ...) as 0-d arrays of the params' widest
    float type on their backend, for the scalar maths done once a step (``leafwise``
    then casts the results to each leaf's dtype); ``None`` stays ``None``."""
    leaves = tree_leaves(params)
    if not leaves:
        return values
    xp, dtype = array_namespace(leaves[0]), np.result_type(*(leaf.dtype for leaf in leaves))
    return tuple(None if v is None else xp.asarray(v, dtype=dtype) for v in values)


def one_minus(b: Any) -> Any:
    """``1 - b`` from ``b``'s own value when it is known (a Python float: exact to
    float64), not after rounding it to float32: ``1 - float32(0.999)`` is off by
    1.3e-5 relative, which would go straight into Adam's second moment."""
    return 1.0 - float(b) if is_concrete(b) else 1 - b


def bias_correction(b: Any, t: Any) -> Any:
    """``1 - b^t`` for the step count ``t`` (a real 0-d array, see :func:`as_real`), as
    ``-expm1(t log b)``: as accurate in float32 as in float64, where ``1 - b**t`` loses
    digits for ``b`` near 1 and small ``t``."""
    xp = array_namespace(t)
    if not is_concrete(b):  # a traced b = 0 gives log 0 = -inf and 1 - 0^t = 1 all the same
        return -xp.expm1(t * xp.log(xp.asarray(b, dtype=t.dtype)))
    return xp.ones_like(t) if float(b) == 0.0 else -xp.expm1(t * math.log(float(b)))


def sqrt(x: Any) -> Any:
    return array_namespace(x).sqrt(x)
