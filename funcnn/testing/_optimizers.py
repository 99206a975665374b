"""Optimizers against a reference optimizer, step by step, leaf by leaf."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from funcnn import random
from funcnn._checks import check_count
from funcnn.backend import to_backend
from funcnn.mlp import Dense
from funcnn.testing._reports import GradientMismatch, LeafReport, _raise_if_bad, _rel_report
from funcnn.tree import (
    describe,
    first_difference,
    tree_leaves,
    tree_paths,
    tree_structure,
    tree_unflatten,
)

__all__ = ["check_optimizer"]


def _example_params(key: Any) -> tuple[Dense, ...]:
    """A small float64 tree of two :class:`~funcnn.Dense` layers, every leaf random."""
    shapes = ((3, 4), (4,), (4, 2), (2,))
    keys = random.split(key, len(shapes))
    W1, b1, W2, b2 = (random.normal(k, s, "float64") for k, s in zip(keys, shapes, strict=True))
    return (Dense(W1, b1), Dense(W2, b2))


def _is_optimizer(obj: Any) -> bool:
    return isinstance(obj, tuple) and len(obj) == 2 and all(map(callable, obj))


def check_optimizer(
    update: Callable[[Any, Any, Any], tuple[Any, Any]], init: Callable[[Any], Any] | None = None,
    *, reference: Any, params: Any = None, steps: int = 5, key: Any = 0, rtol: float = 1e-6,
) -> list[list[LeafReport]]:
    """Run an optimizer ``update`` and a ``reference`` optimizer side by side; raise on a mismatch.

    ``update(params, grads, state) -> (params, state)`` is the update under test (for
    example a hand-written Adam), or an :class:`funcnn.optim.Optimizer` (then its own
    ``init`` is used unless ``init`` is given), and
    ``reference`` an ``Optimizer`` it should agree with, e.g. ``funcnn.optim.adam(1e-3)``.
    Both start from the same ``params`` (default: a small random tree of ``Dense``
    leaves) and fresh states, ``init(params)`` for ``update`` (default ``reference.init``)
    and ``reference.init(params)``, and each receives the same random float64 NumPy
    gradients at every step ``1..steps``, drawn from ``key``.

    After each step the updated params are compared leaf by leaf through the change each
    optimizer made, ``d = new_params - params`` along its own trajectory, with the relative
    error ``max|d - d_ref| / max|d_ref|`` (so a learning rate 10% off is an error of 0.1,
    however large the params are; the reported values are those changes). Beyond ``rtol``
    it raises :class:`GradientMismatch` naming the step (from 1) and the leaf, e.g.
    ``step 1, params[0].W``. Returns one list of :class:`LeafReport` per step.

    Everything is float64; an update that computes in float32 (e.g. jax without
    ``jax_enable_x64``) differs by float32 rounding and needs ``rtol`` near ``1e-3``.
    """
    if not _is_optimizer(reference):
        raise TypeError(
            "reference must be a funcnn.optim.Optimizer(init, update), e.g. "
            f"funcnn.optim.adam(1e-3); got {type(reference).__name__}"
        )
    if _is_optimizer(update):  # an Optimizer under test brings its own init
        init = update.init if init is None else init
        update = update.update
    if not callable(update):
        raise TypeError(
            "update must be a function (params, grads, state) -> (params, state) or an "
            f"Optimizer; got {update!r}"
        )
    steps = check_count("steps", steps)
    key = random.as_key(key, "numpy")
    k_params, k_grads = random.split(key)
    if params is None:
        params = _example_params(k_params)
    params = to_backend(params, "numpy", dtype="float64")
    init = reference.init if init is None else init
    mine, theirs = params, params
    my_state, ref_state = init(params), reference.init(params)
    n_leaves = len(tree_leaves(params))
    reports = []
    for step in range(1, steps + 1):
        keys = random.split(random.fold_in(k_grads, step), n_leaves)
        grads = tree_unflatten(params, [
            random.normal(k, np.shape(leaf), "float64")
            for k, leaf in zip(keys, tree_leaves(params), strict=True)
        ])
        new_mine, my_state = update(mine, grads, my_state)
        new_theirs, ref_state = reference.update(theirs, grads, ref_state)
        new_mine = to_backend(new_mine, "numpy")
        if tree_structure(new_mine) != tree_structure(params):
            raise GradientMismatch(
                f"step {step}: update returned params of structure {describe(new_mine)}; "
                f"expected {describe(params)} (first difference at "
                f"{first_difference(new_mine, params)})"
            )
        new_theirs = to_backend(new_theirs, "numpy")
        step_reports = [
            _rel_report(f"step {step}, params{path}",
                        np.asarray(got, np.float64) - np.asarray(old, np.float64),
                        np.asarray(want, np.float64) - np.asarray(ref_old, np.float64))
            for (path, got), old, want, ref_old in zip(
                tree_paths(new_mine), tree_leaves(mine), tree_leaves(new_theirs),
                tree_leaves(theirs), strict=True)
        ]
        _raise_if_bad(step_reports, rtol, 0.0, f"the reference optimizer (update of step {step})",
                      check="optimizer check")
        reports.append(step_reports)
        mine, theirs = new_mine, new_theirs
    return reports
