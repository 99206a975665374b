"""RMSProp, with PyTorch's options ``momentum`` and ``centered``."""

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
    one_minus,
    sqrt,
    zeros,
)

__all__ = ["RMSPropState", "rmsprop", "rmsprop_init", "rmsprop_update"]


class RMSPropState(NamedTuple):
    """The step count and, shaped like the params: ``nu`` the running mean of ``g^2``,
    ``velocity`` the momentum buffer (stays zero without momentum) and ``mu`` the running
    mean of ``g`` (stays zero unless centered)."""

    count: Any
    nu: Any
    velocity: Any
    mu: Any


def rmsprop_init(params) -> RMSPropState:
    """State for RMSProp, with every option: the step count and three zero trees."""
    return RMSPropState(count0(params), zeros(params), zeros(params), zeros(params))


def _rmsprop_leaf(p, g, nu, velocity, mu, *, lr, decay, one_minus_decay, eps, momentum,
                  centered):
    """One leaf; ``momentum=None`` switches the momentum buffer off."""
    nu = decay * nu + one_minus_decay * g * g
    if centered:
        mu = decay * mu + one_minus_decay * g
        step = g / (sqrt(nu - mu * mu) + eps)
    else:
        step = g / (sqrt(nu) + eps)
    if momentum is not None:
        velocity = momentum * velocity + step
        step = velocity
    return p - lr * step, nu, velocity, mu


def rmsprop_update(params, grads, state: RMSPropState, *, lr=1e-3, decay=0.9, eps=1e-8,
                   momentum=0.0, centered=False):
    """RMSProp (Hinton, 2012) as PyTorch writes it, leaf by leaf::

        nu = decay * nu + (1 - decay) * g^2
        mu = decay * mu + (1 - decay) * g             (centered only)
        d  = g / (sqrt(nu - mu^2 if centered else nu) + eps)
        v  = momentum * v + d                         (momentum > 0 only; then d = v)
        p  = p - lr * d

    Conventions: ``eps`` outside the square root and ``lr`` applied after the momentum
    buffer, as in PyTorch (``torch.optim.RMSprop``, whose ``alpha`` is ``decay``); the
    default ``decay=0.9`` is optax's (PyTorch's ``alpha`` defaults to 0.99). optax's
    ``rmsprop`` puts ``eps`` inside the square root unless ``eps_in_sqrt=False``, and scales
    by ``lr`` before its momentum (the same updates for a constant ``lr``); with
    ``eps_in_sqrt=False, initial_scale=0`` it matches this function.
    """
    check_hyper(lr=lr, decay=decay, eps=eps, momentum=momentum, centered=centered)
    check_state(RMSPropState, state, params, grads)
    leaf = _fused.optimizer_leaf("rmsprop", params) or _rmsprop_leaf  # one pass with numba
    new_params, nu, velocity, mu = leafwise(
        leaf, params, grads, state.nu, state.velocity, state.mu,
        lr=learning_rate(lr, state.count), decay=decay, one_minus_decay=one_minus(decay), eps=eps,
        momentum=off_if_zero(momentum), centered=bool(centered))
    return new_params, RMSPropState(state.count + 1, nu, velocity, mu)


def rmsprop(lr=1e-3, decay=0.9, eps=1e-8, momentum=0.0, centered=False) -> Optimizer:
    """RMSProp as an :class:`Optimizer`; see :func:`rmsprop_update`."""
    return make(rmsprop_init, rmsprop_update, lr=lr, decay=decay, eps=eps, momentum=momentum,
                centered=centered)
