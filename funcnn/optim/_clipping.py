"""Gradient clipping by global norm, alone or in front of an optimizer."""

from __future__ import annotations

from functools import partial
from typing import Any

from funcnn._checks import check_same_backend
from funcnn.backend import array_namespace
from funcnn.optim._base import Optimizer, check_hyper
from funcnn.tree import tree_leaves, tree_map

__all__ = ["clip_by_global_norm", "global_norm", "with_clipping"]


def global_norm(tree) -> Any:
    """``sqrt(sum of squares of every leaf)``, a 0-d array."""
    leaves = tree_leaves(tree)
    xp = array_namespace(*leaves)
    return xp.sqrt(sum(xp.sum(leaf * leaf) for leaf in leaves))


def clip_by_global_norm(grads, max_norm):
    """``grads * min(1, max_norm / global_norm(grads))``, each leaf in its own dtype."""
    check_hyper(max_norm=max_norm)
    check_same_backend(grads)
    norm = global_norm(grads)
    xp = array_namespace(norm)
    limit = xp.asarray(max_norm, dtype=norm.dtype)
    scale = limit / xp.maximum(norm, limit)
    return tree_map(lambda g: g * array_namespace(g).asarray(scale, dtype=g.dtype), grads)


def _clipped_update(params, grads, state, *, update, max_norm):
    """``update`` of the gradients clipped to global norm ``max_norm``."""
    return update(params, clip_by_global_norm(grads, max_norm), state)


def with_clipping(optimizer: Optimizer, max_norm) -> Optimizer:
    """The same optimizer, with the gradients clipped to global norm ``max_norm`` first."""
    check_hyper(max_norm=max_norm)
    return Optimizer(optimizer.init, partial(_clipped_update, update=optimizer.update,
                                             max_norm=max_norm))
