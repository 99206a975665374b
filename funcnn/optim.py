"""Optimizers as pure functions over parameter pytrees.

Each optimizer has a typed NamedTuple state with the step ``count`` inside,
and two free functions, e.g.::

    state = adam_init(params)
    params, state = adam_update(params, grads, state, lr=1e-3)

and a factory that closes over its hyperparameters and returns an
:class:`Optimizer` ``(init, update)`` for composing loops::

    opt = funcnn.optim.adam(lr=1e-3)
    state = opt.init(params)
    params, state = opt.update(params, grads, state)

``lr`` is a number or a schedule ``lr(count)`` (see ``funcnn.schedules``).
Nothing is mutated: updates return new trees. Scalars are cast to the
parameter dtype, so float32 parameters stay float32. Optimizers built from the
same hyperparameters compare equal, so a jitted loop compiled for one is
reused for the other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from funcnn._checks import (
    check_float_leaves,
    check_lr,
    check_params_like,
    check_positive,
    check_same_backend,
    check_update,
    same_numpy_layout,
)
from funcnn.backend import array_namespace
from funcnn.tree import tree_leaves, tree_map, tree_unflatten

__all__ = [
    "AdagradState",
    "AdamState",
    "Optimizer",
    "RMSPropState",
    "SGDState",
    "adagrad",
    "adagrad_init",
    "adagrad_update",
    "adam",
    "adam_init",
    "adam_update",
    "adamw",
    "adamw_init",
    "adamw_update",
    "clip_by_global_norm",
    "global_norm",
    "rmsprop",
    "rmsprop_init",
    "rmsprop_update",
    "sgd",
    "sgd_init",
    "sgd_update",
    "weights_only",
    "with_clipping",
]


class Optimizer(NamedTuple):
    """A pair of pure functions: ``init(params) -> state`` and
    ``update(params, grads, state) -> (params, state)``."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], tuple[Any, Any]]


class SGDState(NamedTuple):
    """SGD's state: the step ``count`` and the ``velocity``, a tree like the params."""
    count: Any
    velocity: Any


class AdamState(NamedTuple):
    """Adam's and AdamW's state: the step ``count`` and the moments ``mu`` and ``nu``."""
    count: Any
    mu: Any
    nu: Any


class RMSPropState(NamedTuple):
    """RMSProp's state: the step ``count`` and ``nu``, the running mean of ``g**2``."""
    count: Any
    nu: Any


class AdagradState(NamedTuple):
    """Adagrad's state: the step ``count`` and ``sum_sq``, the running sum of ``g**2``."""
    count: Any
    sum_sq: Any


# ---------------------------------------------------------------------------- helpers


def _zeros(params):
    return tree_map(lambda p: array_namespace(p).zeros_like(p), params)


def _count0(params):
    check_same_backend(params)
    check_float_leaves("params", params)
    return array_namespace(*tree_leaves(params)[:1]).zeros((), dtype="int32")


def _scalar(value, like):
    """A 0-d array of ``like``'s dtype (keeps float32 float32 under NumPy's promotion rules)."""
    return array_namespace(like).asarray(value, dtype=like.dtype)


def _lr(lr, count):
    check_lr(lr)
    return lr(count) if callable(lr) else lr


def _check_state(kind, state, params, grads, fields):
    if not isinstance(state, kind):
        raise TypeError(
            f"state must be a {kind.__name__} (from the matching init); got {type(state).__name__}"
        )
    others = [grads, *(getattr(state, field) for field in fields)]
    if same_numpy_layout(params, *others):  # the common case, in one walk
        return
    check_params_like("grads", grads, params)
    for field in fields:
        check_params_like(f"state.{field}", getattr(state, field), params)
    check_update(params, grads, state, fields)


def _leafwise(fn, params, *trees):
    """Apply ``fn(p, *leaves) -> tuple`` leaf by leaf; return one tree per output."""
    outs = [fn(*leaves) for leaves in zip(*(tree_leaves(t) for t in (params, *trees)), strict=True)]
    return tuple(tree_unflatten(params, list(col)) for col in zip(*outs, strict=True))


# ---------------------------------------------------------------------------- SGD


def sgd_init(params) -> SGDState:
    """State for SGD: the step count and a zero velocity (used with momentum)."""
    return SGDState(_count0(params), _zeros(params))


def sgd_update(params, grads, state: SGDState, *, lr=1e-2, momentum=0.0, nesterov=False,
               weight_decay=0.0):
    """Stochastic gradient descent, with optional (Nesterov) momentum, as in PyTorch::

        g = grad + weight_decay * p
        v = momentum * v + g
        p = p - lr * (g + momentum * v   if nesterov else   v)

    With ``momentum = 0`` this is ``p = p - lr * g`` and the velocity is passed on unchanged.
    """
    _check_state(SGDState, state, params, grads, ("velocity",))
    if nesterov and not momentum > 0:
        raise ValueError("nesterov=True needs momentum > 0")
    lr_t = _lr(lr, state.count)

    def one(p, g, v):
        if weight_decay:
            g = g + _scalar(weight_decay, p) * p
        if not momentum:
            return p - _scalar(lr_t, p) * g, v
        v = _scalar(momentum, p) * v + g
        d = g + _scalar(momentum, p) * v if nesterov else v
        return p - _scalar(lr_t, p) * d, v

    new_params, velocity = _leafwise(one, params, grads, state.velocity)
    return new_params, SGDState(state.count + 1, velocity)


# ---------------------------------------------------------------------------- Adam, AdamW


def adam_init(params) -> AdamState:
    """State for Adam and AdamW: the step count and zero first and second moments."""
    return AdamState(_count0(params), _zeros(params), _zeros(params))


def _adam(params, grads, state, lr, b1, b2, eps, weight_decay, mask):
    _check_state(AdamState, state, params, grads, ("mu", "nu"))
    count = state.count + 1
    lr_t = _lr(lr, state.count)
    t = _scalar(count, tree_leaves(params)[0])
    # m_hat / (sqrt(v_hat) + eps) == mu * c2 / c1 / (sqrt(nu) + eps * c2),
    # with c1 = 1 - b1^t and c2 = sqrt(1 - b2^t): the bias corrections become scalars.
    c1 = 1 - b1**t
    c2 = (1 - b2**t) ** 0.5
    decay = _decay_mask(mask, params) if weight_decay else None

    @functools.cache
    def consts(dtype, xp):  # the scalars, cast once per dtype and backend, not once per leaf
        lr_, c1_, c2_, eps_, wd_ = (xp.asarray(v, dtype=dtype)
                                    for v in (lr_t, c1, c2, eps, weight_decay))
        return (*(xp.asarray(v, dtype=dtype) for v in (b1, 1 - b1, b2, 1 - b2)),
                eps_ * c2_, lr_ * c2_ / c1_, lr_ * wd_)

    def one(p, g, m, v, *wd):
        b1_, b1c, b2_, b2c, eps_t, step_size, decay_size = consts(p.dtype, array_namespace(p))
        # In-place operators touch only arrays made here (on jax they rebind): on NumPy
        # this halves the temporaries of the hot loop.
        m = m * b1_
        m += g * b1c
        v = v * b2_
        g2 = g * g
        g2 *= b2c
        v += g2
        den = array_namespace(p).sqrt(v)
        den += eps_t
        step = m / den
        step *= step_size
        if wd and wd[0]:
            step += p * decay_size
        return p - step, m, v

    extra = (decay,) if decay is not None else ()
    new_params, mu, nu = _leafwise(one, params, grads, state.mu, state.nu, *extra)
    return new_params, AdamState(count, mu, nu)


adamw_init = adam_init  # AdamW keeps Adam's state; the name is here for symmetry


def adam_update(params, grads, state: AdamState, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Adam (Kingma & Ba, 2015)::

        mu = b1 mu + (1 - b1) g            m_hat = mu / (1 - b1^t)
        nu = b2 nu + (1 - b2) g^2          v_hat = nu / (1 - b2^t)
        p  = p - lr * m_hat / (sqrt(v_hat) + eps)

    with ``t`` the step number from 1. ``eps`` is added outside the square root, the
    convention of PyTorch and optax. The bias corrections are folded into two scalars
    (an exact rewrite of the same formula).
    """
    return _adam(params, grads, state, lr, b1, b2, eps, 0.0, None)


def adamw_update(params, grads, state: AdamState, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                 weight_decay=1e-2, mask=None):
    """AdamW (Loshchilov & Hutter, 2019): Adam plus decoupled weight decay::

        p = p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)

    The decay does not pass through the moments. ``mask`` chooses the decayed leaves: a
    pytree of bools like ``params``, or a callable ``params -> bools`` such as
    :func:`weights_only` (leave biases out); ``None`` decays every leaf (PyTorch's default).
    """
    return _adam(params, grads, state, lr, b1, b2, eps, weight_decay, mask)


def weights_only(params):
    """A weight-decay mask: True for matrices (``ndim >= 2``), False for biases."""
    return tree_map(lambda p: p.ndim >= 2, params)


def _decay_mask(mask, params):
    if mask is None:
        return tree_map(lambda _: True, params)
    tree = mask(params) if callable(mask) else mask
    check_params_like("mask", tree, tree_map(lambda _: True, params))
    return tree


# ---------------------------------------------------------------------------- RMSProp, Adagrad


def rmsprop_init(params) -> RMSPropState:
    """State for RMSProp: the step count and a zero running mean of squared gradients."""
    return RMSPropState(_count0(params), _zeros(params))


def rmsprop_update(params, grads, state: RMSPropState, *, lr=1e-3, decay=0.9, eps=1e-8):
    """RMSProp (Hinton, 2012)::

        nu = decay nu + (1 - decay) g^2
        p  = p - lr * g / (sqrt(nu) + eps)
    """
    _check_state(RMSPropState, state, params, grads, ("nu",))
    lr_t = _lr(lr, state.count)

    def one(p, g, v):
        v = _scalar(decay, p) * v + _scalar(1 - decay, p) * (g * g)
        return p - _scalar(lr_t, p) * g / (array_namespace(p).sqrt(v) + _scalar(eps, p)), v

    new_params, nu = _leafwise(one, params, grads, state.nu)
    return new_params, RMSPropState(state.count + 1, nu)


def adagrad_init(params, *, initial_accumulator=0.0) -> AdagradState:
    """State for Adagrad: the step count and the sum of squared gradients."""
    return AdagradState(
        _count0(params), tree_map(lambda p: array_namespace(p).full_like(p, initial_accumulator),
                                  params)
    )


def adagrad_update(params, grads, state: AdagradState, *, lr=1e-2, eps=1e-10):
    """Adagrad (Duchi et al., 2011)::

        s = s + g^2
        p = p - lr * g / (sqrt(s) + eps)
    """
    _check_state(AdagradState, state, params, grads, ("sum_sq",))
    lr_t = _lr(lr, state.count)

    def one(p, g, s):
        s = s + g * g
        return p - _scalar(lr_t, p) * g / (array_namespace(p).sqrt(s) + _scalar(eps, p)), s

    new_params, sum_sq = _leafwise(one, params, grads, state.sum_sq)
    return new_params, AdagradState(state.count + 1, sum_sq)


# ---------------------------------------------------------------------------- clipping


def global_norm(tree) -> Any:
    """``sqrt(sum of squares of every leaf)``."""
    leaves = tree_leaves(tree)
    xp = array_namespace(*leaves)
    return xp.sqrt(sum(xp.sum(leaf * leaf) for leaf in leaves))


def clip_by_global_norm(grads, max_norm: float):
    """Scale ``grads`` by ``min(1, max_norm / global_norm(grads))``."""
    check_positive("max_norm", max_norm)
    check_same_backend(grads)
    norm = global_norm(grads)
    xp = array_namespace(norm)
    scale = max_norm / xp.maximum(norm, max_norm)
    return tree_map(lambda g: g * _scalar(scale, g), grads)


# ---------------------------------------------------------------------------- factories


@dataclass(frozen=True)
class _Bound:
    """An update function with its hyperparameters bound; equal when they are equal."""

    fn: Callable[..., Any]
    hyper: tuple[tuple[str, Any], ...]

    def __call__(self, params, grads, state):
        return self.fn(params, grads, state, **dict(self.hyper))


def _make(init, update, lr, **hyper) -> Optimizer:
    check_lr(lr)
    return Optimizer(init, _Bound(update, (("lr", lr), *sorted(hyper.items()))))


def sgd(lr=1e-2, momentum=0.0, nesterov=False, weight_decay=0.0) -> Optimizer:
    """SGD as an :class:`Optimizer`; see :func:`sgd_update`."""
    check_positive("momentum", momentum, allow_zero=True)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True needs momentum > 0")
    return _make(sgd_init, sgd_update, lr, momentum=momentum, nesterov=nesterov,
                 weight_decay=weight_decay)


def _check_betas(**betas):
    for name, b in betas.items():
        check_positive(name, b, allow_zero=True)
        if not 0 <= b < 1:
            raise ValueError(f"{name} must be in [0, 1); got {b!r}")


def adam(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8) -> Optimizer:
    """Adam as an :class:`Optimizer`; see :func:`adam_update`."""
    _check_betas(b1=b1, b2=b2)
    return _make(adam_init, adam_update, lr, b1=b1, b2=b2, eps=eps)


def adamw(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, mask=None) -> Optimizer:
    """AdamW as an :class:`Optimizer`; see :func:`adamw_update`."""
    _check_betas(b1=b1, b2=b2)
    return _make(adam_init, adamw_update, lr, b1=b1, b2=b2, eps=eps,
                 weight_decay=weight_decay, mask=mask)


def rmsprop(lr=1e-3, decay=0.9, eps=1e-8) -> Optimizer:
    """RMSProp as an :class:`Optimizer`; see :func:`rmsprop_update`."""
    _check_betas(decay=decay)
    return _make(rmsprop_init, rmsprop_update, lr, decay=decay, eps=eps)


def adagrad(lr=1e-2, eps=1e-10) -> Optimizer:
    """Adagrad as an :class:`Optimizer`; see :func:`adagrad_update`."""
    return _make(adagrad_init, adagrad_update, lr, eps=eps)


@dataclass(frozen=True)
class _Clipped:
    inner: Callable[..., Any]
    max_norm: float

    def __call__(self, params, grads, state):
        return self.inner(params, clip_by_global_norm(grads, self.max_norm), state)


def with_clipping(optimizer: Optimizer, max_norm: float) -> Optimizer:
    """The same optimizer, with gradients clipped to global norm ``max_norm`` first."""
    check_positive("max_norm", max_norm)
    return Optimizer(optimizer.init, _Clipped(optimizer.update, max_norm))
