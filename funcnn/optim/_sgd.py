"""Stochastic gradient descent, with optional (Nesterov) momentum and weight decay."""

from __future__ import annotations

from typing import Any, NamedTuple

from funcnn import _fused
from funcnn.optim._base import (
    Optimizer,
    check_hyper,
    check_state,
    count0,
    leafwise,
    learning_rate,
    make,
    off_if_zero,
    zeros,
)

__all__ = ["SGDState", "sgd", "sgd_init", "sgd_update"]


class SGDState(NamedTuple):
    """The step count and the velocity (momentum buffer), shaped like the params."""

    count: Any
    velocity: Any


def sgd_init(params) -> SGDState:
    """State for SGD: the step count and a zero velocity (used with momentum)."""
    return SGDState(count0(params), zeros(params))


def _sgd_leaf(p, g, v, *, lr, momentum, nesterov, weight_decay):
    """One leaf; ``None`` switches a term off (a zero ``momentum`` or ``weight_decay``)."""
    if weight_decay is not None:
        g = g + weight_decay * p
    if momentum is None:  # plain SGD: the velocity is passed on unchanged
        return p - lr * g, v
    v = momentum * v + g
    step = g + momentum * v if nesterov else v
    return p - lr * step, v


def sgd_update(params, grads, state: SGDState, *, lr=1e-2, momentum=0.0, nesterov=False,
               weight_decay=0.0):
    """SGD as in PyTorch (``torch.optim.SGD`` with ``dampening=0``), leaf by leaf::

        g = grad + weight_decay * p
        v = momentum * v + g
        p = p - lr * (g + momentum * v   if nesterov else   v)

    ``momentum`` in [0, 1), ``weight_decay`` >= 0 (L2, coupled into the gradient);
    ``nesterov`` needs ``momentum > 0``. With ``momentum = 0`` this is ``p = p - lr * g``.
    ``lr`` is a number or a schedule ``lr(count)`` (count 0 at the first update).

    Returns ``(new_params, new_state)``: the updated parameters, a tree like ``params``,
    and ``SGDState(count + 1, velocity)`` holding the new ``v`` of every leaf (with
    ``momentum = 0`` the velocity passes through unchanged). ``params`` and ``state``
    are left as they were.
    """
    check_hyper(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    check_state(SGDState, state, params, grads)
    leaf = _fused.optimizer_leaf("sgd", params) or _sgd_leaf  # one pass with numba
    new_params, velocity = leafwise(
        leaf, params, grads, state.velocity, lr=learning_rate(lr, state.count),
        momentum=off_if_zero(momentum), nesterov=bool(nesterov),
        weight_decay=off_if_zero(weight_decay))
    return new_params, SGDState(state.count + 1, velocity)


def sgd(lr=1e-2, momentum=0.0, nesterov=False, weight_decay=0.0) -> Optimizer:
    """SGD as an :class:`Optimizer`; see :func:`sgd_update`."""
    return make(sgd_init, sgd_update, lr=lr, momentum=momentum, nesterov=nesterov,
                weight_decay=weight_decay)
