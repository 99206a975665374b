"""Adagrad, with PyTorch's defaults."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

from funcnn import _fused
from funcnn.backend import array_namespace
from funcnn.optim._base import (
    Optimizer,
    check_hyper,
    check_state,
    count0,
    leafwise,
    learning_rate,
    make,
    sqrt,
)
from funcnn.tree import tree_map

__all__ = ["AdagradState", "adagrad", "adagrad_init", "adagrad_update"]


class AdagradState(NamedTuple):
    """The step count and ``sum_sq``, the sum of squared gradients, shaped like the params."""

    count: Any
    sum_sq: Any


def adagrad_init(params, *, initial_accumulator=0.0) -> AdagradState:
    """State for Adagrad: the step count and ``sum_sq`` filled with ``initial_accumulator``."""
    check_hyper(initial_accumulator=initial_accumulator)
    count = count0(params)
    return AdagradState(count, tree_map(
        lambda p: array_namespace(p).full_like(p, initial_accumulator), params))


def _adagrad_leaf(p, g, s, *, lr, eps):
    s = s + g * g
    return p - lr * g / (sqrt(s) + eps), s


def adagrad_update(params, grads, state: AdagradState, *, lr=1e-2, eps=1e-10):
    """Adagrad (Duchi et al., 2011), leaf by leaf::

        s = s + g^2
        p = p - lr * g / (sqrt(s) + eps)

    PyTorch's conventions and defaults (``torch.optim.Adagrad``: ``eps=1e-10`` outside
    the square root, ``initial_accumulator_value=0``, given to :func:`adagrad_init`).
    optax's ``adagrad`` defaults to ``initial_accumulator_value=0.1, eps=1e-7`` and puts
    ``eps`` inside the square root, ``g / sqrt(s + eps)``; with ``eps=0`` both agree.
    """
    check_hyper(lr=lr, eps=eps)
    check_state(AdagradState, state, params, grads)
    leaf = _fused.optimizer_leaf("adagrad", params) or _adagrad_leaf  # one pass with numba
    new_params, sum_sq = leafwise(leaf, params, grads, state.sum_sq,
                                  lr=learning_rate(lr, state.count), eps=eps)
    return new_params, AdagradState(state.count + 1, sum_sq)


def adagrad(lr=1e-2, eps=1e-10, initial_accumulator=0.0) -> Optimizer:
    """Adagrad as an :class:`Optimizer` whose ``init`` fills ``sum_sq`` with
    ``initial_accumulator``; see :func:`adagrad_update`."""
    check_hyper(initial_accumulator=initial_accumulator)
    return make(partial(adagrad_init, initial_accumulator=initial_accumulator), adagrad_update,
                lr=lr, eps=eps)
