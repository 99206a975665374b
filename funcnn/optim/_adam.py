"""Adam and AdamW (Adam with decoupled weight decay), and their weight-decay masks."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from funcnn import _fused
from funcnn._checks import check_params_like
from funcnn.backend import array_namespace, is_concrete
from funcnn.optim._base import (
    Optimizer,
    as_real,
    bias_correction,
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
from funcnn.tree import tree_leaves, tree_map, tree_paths, tree_unflatten

__all__ = ["AdamState", "adam", "adam_init", "adam_leaf", "adam_leaf_folded", "adam_update",
           "adamw", "adamw_update", "weights_only"]


class AdamState(NamedTuple):
    """The step count and the first and second moments ``mu``, ``nu``, shaped like the params."""

    count: Any
    mu: Any
    nu: Any


def adam_init(params) -> AdamState:
    """State for Adam and AdamW: the step count and zero first and second moments."""
    return AdamState(count0(params), zeros(params), zeros(params))


def adam_leaf(p, g, m, v, decayed=False, *, b1, b2, one_minus_b1, one_minus_b2, c1, c2, lr,
              eps, decay=None):
    """One leaf of Adam at step ``t`` (from 1), as the paper writes it (Kingma & Ba,
    Algorithm 1); ``c1 = 1 - b1^t`` and ``c2 = 1 - b2^t`` are the bias corrections,
    ``one_minus_b1 = 1 - b1`` (computed once a step). AdamW's ``decay = lr * weight_decay``
    applies where ``decayed`` is True (or 1). The definition; the updates run
    :func:`adam_leaf_folded`, tested equal to it."""
    m = b1 * m + one_minus_b1 * g              # first moment
    v = b2 * v + one_minus_b2 * (g * g)        # second moment
    m_hat = m / c1                             # bias corrections
    v_hat = v / c2
    p_new = p - lr * m_hat / (sqrt(v_hat) + eps)
    if decayed is not False:  # AdamW: decoupled weight decay, where the mask says so
        p_new = p_new - decay * (p if decayed is True else decayed * p)
    return p_new, m, v


def adam_leaf_folded(p, g, m, v, decayed=False, *, b1, b2, one_minus_b1, one_minus_b2,
                     step_size, eps_hat, decay=None):
    """:func:`adam_leaf` in fewer operations, the fast path the updates run: the bias
    corrections folded into two scalars (the paper's own "more efficient order of
    computation", end of its section 2),
    ``lr m_hat / (sqrt(v_hat) + eps) = step_size m / (sqrt(v) + eps_hat)`` with
    ``step_size = lr sqrt(c2) / c1`` and ``eps_hat = eps sqrt(c2)``, one division an entry
    instead of three, written as in-place passes over fresh arrays (no temporary per
    operation on NumPy; on jax ``x *= c`` just rebinds). The same results to rounding
    (``tests/test_optim.py``). Side by side (``benchmarks/numpy_optimizer.py``) a NumPy
    update takes about 0.7x the textbook leaf's time, and a jax epoch of ``fit`` on the
    main configuration about 0.94x (``--jax``)."""
    # Not the moving-average form m + (1 - b1) (g - m): with subnormals flushed to zero
    # (fit on NumPy, XLA on CPU) its increment underflows and a decaying moment stops at ~1e-38.
    m_new = g * one_minus_b1
    m_new += b1 * m
    v_new = g * g
    v_new *= one_minus_b2
    v_new += b2 * v
    p_new = sqrt(v_new)
    p_new += eps_hat
    p_new = m_new / p_new
    p_new *= -step_size
    p_new += p                     # p - step_size m / (sqrt(v) + eps_hat)
    if decayed is not False:
        p_new -= decay * (p if decayed is True else decayed * p)
    return p_new, m_new, v_new


def _adam(params, grads, state, *, lr, b1, b2, eps, weight_decay=None, decayed=None):
    check_state(AdamState, state, params, grads)
    masks = () if decayed is None else (decayed,)
    t = state.count + 1
    lr, eps, weight_decay, t_real = as_real(params, learning_rate(lr, state.count), eps,
                                            weight_decay, t)
    c1, root_c2 = bias_correction(b1, t_real), sqrt(bias_correction(b2, t_real))
    leaf = _fused.optimizer_leaf("adam", params) or adam_leaf_folded  # one pass with numba
    new_params, mu, nu = leafwise(
        leaf, params, grads, state.mu, state.nu, *masks, b1=b1, b2=b2,
        one_minus_b1=one_minus(b1), one_minus_b2=one_minus(b2), step_size=lr * root_c2 / c1,
        eps_hat=eps * root_c2, decay=None if weight_decay is None else lr * weight_decay)
    return new_params, AdamState(t, mu, nu)


def adam_update(params, grads, state: AdamState, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Adam (Kingma & Ba, 2015), leaf by leaf, at step ``t`` (from 1)::

        mu = b1 * mu + (1 - b1) * g            mu_hat = mu / (1 - b1^t)
        nu = b2 * nu + (1 - b2) * g^2          nu_hat = nu / (1 - b2^t)
        p  = p - lr * mu_hat / (sqrt(nu_hat) + eps)

    ``b1``, ``b2`` in [0, 1); ``eps`` >= 0, added outside the square root (as PyTorch and
    optax do).
    """
    check_hyper(lr=lr, b1=b1, b2=b2, eps=eps)
    return _adam(params, grads, state, lr=lr, b1=b1, b2=b2, eps=eps)


def adamw_update(params, grads, state: AdamState, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                 weight_decay=1e-2, mask=None):
    """AdamW (Loshchilov & Hutter, 2019): Adam plus decoupled weight decay::

        p = p - lr * (mu_hat / (sqrt(nu_hat) + eps) + weight_decay * p)

    The decay does not pass through the moments. ``mask`` chooses what decays: ``None``
    (every leaf, PyTorch's default), a callable ``params -> mask`` such as
    :func:`weights_only` (leave the biases out), or a tree like ``params`` whose leaves are
    bools, 0-d bool arrays or bool arrays of the leaf's shape (entry by entry).
    """
    check_hyper(lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    decayed = _decayed(mask, params)  # checked even when nothing decays
    weight_decay = off_if_zero(weight_decay)
    if weight_decay is None:
        decayed = None
    return _adam(params, grads, state, lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                 decayed=decayed)


def weights_only(params):
    """A weight-decay mask: True for matrices (``ndim >= 2``), False for biases."""
    return tree_map(lambda p: p.ndim >= 2, params)


# ---------------------------------------------------------------------------- masks

_MASK_LEAF = "a bool, a 0-d bool array or a bool array of the leaf's shape"


def _is_bool(leaf: Any) -> bool:
    return isinstance(leaf, bool | np.bool_) or (
        hasattr(leaf, "shape") and np.dtype(getattr(leaf, "dtype", None)).kind == "b")


def _check_mask_leaves(mask: Any) -> None:
    for path, leaf in tree_paths(mask):
        if not _is_bool(leaf):
            shape = getattr(leaf, "shape", None)
            got = f"of type {type(leaf).__name__}" if shape is None else \
                f"an array of dtype {leaf.dtype} and shape {tuple(shape)}"
            raise TypeError(f"mask{path} is {got}; each mask leaf must be {_MASK_LEAF}")


def _decayed(mask: Any, params: Any) -> Any:
    """A tree like ``params`` of what decays: True, False, or a 0/1 array in the leaf's dtype."""
    if mask is None:
        return tree_map(lambda _: True, params)
    tree = mask(params) if callable(mask) else mask
    check_params_like("mask", tree_map(lambda _: True, tree), tree_map(lambda _: True, params))
    _check_mask_leaves(tree)
    out = []
    for (path, leaf), p in zip(tree_paths(tree), tree_leaves(params), strict=True):
        shape = getattr(leaf, "shape", ())
        if shape not in ((), p.shape):
            raise ValueError(f"mask{path} has shape {tuple(shape)} but params{path} has shape "
                             f"{tuple(p.shape)}; each mask leaf must be {_MASK_LEAF}")
        if shape == () and is_concrete(leaf):
            out.append(bool(leaf))
        else:  # an array (or a traced bool) of entries to decay: 1 where True, 0 where False
            out.append(array_namespace(p).asarray(leaf, dtype=p.dtype))
    return tree_unflatten(params, out)


# ---------------------------------------------------------------------------- factories


def adam(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8) -> Optimizer:
    """Adam as an :class:`Optimizer`; see :func:`adam_update`."""
    return make(adam_init, adam_update, lr=lr, b1=b1, b2=b2, eps=eps)


def adamw(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, mask=None) -> Optimizer:
    """AdamW as an :class:`Optimizer`; see :func:`adamw_update`. A mask with array
    leaves is data like the learning rate (``fit`` traces it, see ``split_hyper``)."""
    if mask is not None and not callable(mask):
        _check_mask_leaves(mask)
    return make(adam_init, adamw_update, lr=lr, b1=b1, b2=b2, eps=eps,
                weight_decay=weight_decay, mask=mask)
