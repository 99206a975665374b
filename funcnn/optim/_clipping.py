"""Gradient clipping by global norm, alone or in front of an optimizer."""

from __future__ import annotations

import functools
from functools import partial
from typing import Any

from funcnn._checks import check_same_backend
from funcnn.backend import array_namespace
from funcnn.optim._base import Optimizer, check_hyper
from funcnn.tree import tree_leaves, tree_map

__all__ = ["clip_by_global_norm", "global_norm", "with_clipping"]


def _scaled_norm(leaves: list) -> tuple[Any, Any]:
    """``(peak, r)`` with ``global norm = peak * r``: ``peak`` the largest ``|element|``
    and ``r = sqrt(sum (leaf / peak)^2)`` in ``[1, sqrt(size)]`` (0 for all zeros).

    Scaled as LAPACK's ``nrm2`` scales: squaring the leaves themselves overflows for a
    float32 gradient of 1e20 (and gives 0 for one of 1e-30), scaled ones cannot."""
    xp = array_namespace(*leaves)
    peak = functools.reduce(xp.maximum, [xp.max(xp.abs(leaf), initial=0) for leaf in leaves])
    safe = xp.where(peak > 0, peak, 1)
    return peak, xp.sqrt(sum(xp.sum((leaf / safe) ** 2) for leaf in leaves))


def global_norm(tree) -> Any:
    """``sqrt(sum of squares of every leaf)``, a 0-d array, finite whenever the norm is
    representable (computed scaled, see :func:`_scaled_norm`); inf where an element is."""
    peak, r = _scaled_norm(tree_leaves(tree))
    xp = array_namespace(peak)
    return xp.where(xp.isinf(peak), peak, peak * r)


def clip_by_global_norm(grads, max_norm):
    """``grads * min(1, max_norm / global_norm(grads))``, each leaf in its own dtype.

    Computed as ``(g / peak) * (max_norm / r)`` (see :func:`_scaled_norm`) when clipping,
    so that any finite gradient, even one whose squares overflow, clips to ``max_norm``;
    below the bound the gradients come back unchanged."""
    check_hyper(max_norm=max_norm)
    check_same_backend(grads)
    peak, r = _scaled_norm(tree_leaves(grads))
    xp = array_namespace(peak)
    limit = xp.asarray(max_norm, dtype=peak.dtype)
    clip = peak * r > limit  # True for an infinite norm too
    divisor = xp.where(clip, peak, 1)
    factor = xp.where(clip, limit / xp.maximum(r, 1), 1)  # r >= 1 whenever clip is True

    def clipped(g):
        ns = array_namespace(g)
        return g / ns.asarray(divisor, dtype=g.dtype) * ns.asarray(factor, dtype=g.dtype)

    return tree_map(clipped, grads)


def _clipped_update(params, grads, state, *, update, max_norm):
    """``update`` of the gradients clipped to global norm ``max_norm``."""
    return update(params, clip_by_global_norm(grads, max_norm), state)


def with_clipping(optimizer: Optimizer, max_norm) -> Optimizer:
    """The same optimizer, with the gradients clipped to global norm ``max_norm`` first."""
    check_hyper(max_norm=max_norm)
    return Optimizer(optimizer.init, partial(_clipped_update, update=optimizer.update,
                                             max_norm=max_norm))
