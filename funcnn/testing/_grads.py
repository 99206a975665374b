"""Gradients against a referee: ``jax.grad`` in float64, or central finite differences."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from funcnn import random
from funcnn._checks import check_count
from funcnn.backend import backend_of, to_backend
from funcnn.checked import check_x, check_y, prepare
from funcnn.mlp import MLP
from funcnn.network import Network, apply, backward, loss_from_cache
from funcnn.testing._reports import (
    GradientMismatch,
    LeafReport,
    _raise_if_bad,
    _rel_report,
    _resolve_reference,
    _x64,
)
from funcnn.tree import tree_leaves, tree_paths, tree_structure, tree_unflatten

__all__ = ["KINKED", "check_gradient", "check_grads", "finite_difference_grads"]


def _sample_size(max_per_leaf: int | None) -> int | None:
    return None if max_per_leaf is None else check_count("max_per_leaf", max_per_leaf)


def finite_difference_grads(
    f: Callable[[Any], float], params: Any, *, eps: float = 1e-6, max_per_leaf: int | None = None,
    key: Any = 0, kinks: Callable[[Any], np.ndarray] | None = None,
) -> tuple[Any, Any]:
    """Central differences ``(f(p + eps e_i) - f(p - eps e_i)) / 2 eps`` in float64.

    Returns ``(grads, checked)``: a NumPy tree of estimates and a tree of boolean masks
    of the elements estimated: all, or ``max_per_leaf`` per leaf drawn from ``key``.
    With ``kinks(p) -> bool array`` (which side of its kink each pre-activation is on),
    an element whose perturbation changes that pattern is left out of ``checked``.
    """
    max_per_leaf = _sample_size(max_per_leaf)
    leaves = [np.array(leaf, dtype=np.float64) for leaf in tree_leaves(params)]
    key = random.as_key(key, "numpy")
    estimates, masks = [], []
    for i, leaf in enumerate(leaves):
        est = np.zeros_like(leaf)
        mask = np.zeros(leaf.shape, dtype=bool)
        flat_idx = np.arange(leaf.size)
        if max_per_leaf is not None and leaf.size > max_per_leaf:
            flat_idx = np.asarray(random.permutation(random.fold_in(key, i), leaf.size))
            flat_idx = flat_idx[:max_per_leaf]
        for j in flat_idx:
            idx = np.unravel_index(j, leaf.shape)
            old = leaf[idx]
            leaf[idx] = old + eps
            up = float(f(tree_unflatten(params, leaves)))
            side_up = None if kinks is None else kinks(tree_unflatten(params, leaves))
            leaf[idx] = old - eps
            down = float(f(tree_unflatten(params, leaves)))
            side_down = None if kinks is None else kinks(tree_unflatten(params, leaves))
            leaf[idx] = old
            est[idx] = (up - down) / (2 * eps)
            mask[idx] = kinks is None or bool(np.array_equal(side_up, side_down))
        estimates.append(est)
        masks.append(mask)
    return tree_unflatten(params, estimates), tree_unflatten(params, masks)


def check_gradient(
    f: Callable[[Any], Any], grads: Any, params: Any, *, reference: str = "jax",
    rtol: float | None = None, atol: float = 0.0, eps: float = 1e-6,
    max_per_leaf: int | None = 64, name: str = "params", key: Any = 0,
    kinks: Callable[[Any], np.ndarray] | None = None,
) -> list[LeafReport]:
    """Compare ``grads`` with the gradient of the scalar function ``f(params)``.

    ``reference="jax"`` uses ``jax.grad(f)`` in float64 (``f`` must be jax-traceable;
    without jax installed it falls back to finite differences, with a warning);
    ``"finite_differences"`` needs only NumPy and checks up to ``max_per_leaf`` elements
    per leaf, drawn from ``key``, skipping those whose perturbation crosses a kink (see
    :func:`finite_difference_grads`). Returns one :class:`LeafReport` per leaf; raises
    :class:`GradientMismatch`.
    """
    max_per_leaf = _sample_size(max_per_leaf)
    reference = _resolve_reference(reference)
    if reference == "jax":
        rtol = 1e-7 if rtol is None else rtol
        with _x64() as jax:
            p64 = to_backend(params, "jax", dtype="float64")
            ref = to_backend(jax.grad(f)(p64), "numpy")
        masks = None
    else:
        rtol = 1e-5 if rtol is None else rtol
        p64 = to_backend(params, "numpy", dtype="float64")
        ref, masks = finite_difference_grads(f, p64, eps=eps, max_per_leaf=max_per_leaf,
                                             key=key, kinks=kinks)
    got = tree_paths(to_backend(grads, "numpy"))
    want = tree_leaves(ref)
    if len(got) != len(want):
        raise GradientMismatch(f"grads have {len(got)} leaves but {name} have {len(want)}")
    reports = []
    mask_leaves = tree_leaves(masks) if masks is not None else [None] * len(want)
    for (path, g), r, m in zip(got, want, mask_leaves, strict=True):
        g = np.asarray(g, dtype=np.float64)
        skipped = 0
        if m is not None:
            sampled = g.size if max_per_leaf is None else min(g.size, max_per_leaf)
            skipped = sampled - int(m.sum())
            report = _rel_report(f"{name}{path}", g[m], np.asarray(r)[m], skipped)
            if report.worst_index:  # an index into the checked elements: back to the leaf's
                where = np.argwhere(m)[report.worst_index[0]]
                report = report._replace(worst_index=tuple(int(i) for i in where))
            reports.append(report)
            continue
        reports.append(_rel_report(f"{name}{path}", g, r, skipped))
    _raise_if_bad(reports, rtol, atol, "jax.grad" if reference == "jax" else "finite differences")
    return reports


def check_grads(
    net: Network, params: Any, x: Any, y: Any, *, key: Any = None, train: bool = False,
    state: Any = None,
    reference: str = "jax", rtol: float | None = None, atol: float = 0.0,
    grad_fn: Callable[..., Any] | None = None, eps: float = 1e-6, max_per_leaf: int | None = 64,
) -> list[LeafReport]:
    """Check a backward pass for ``net`` on ``(x, y)`` leaf by leaf; raise on a mismatch.

    ``grad_fn(net, params, x, y)`` is the backward pass under test (default: funcnn's
    forward + ``backprop``); it may return ``grads`` or ``(loss, grads)``. The reference
    differentiates ``funcnn.loss`` with the dropout masks drawn from ``key`` (a custom
    ``grad_fn`` must use the same masks, so check it with ``train=False``). A net with
    model state (BatchNorm) takes ``state=``; with ``train=True`` its batch statistics
    are differentiated through, as in training. Computation
    is in float64; ``rtol`` defaults to 1e-7 against jax and 1e-5 against finite differences.
    Against finite differences, elements whose perturbation crosses the kink of a ReLU or
    leaky ReLU are skipped and counted in ``LeafReport.skipped``.
    """
    max_per_leaf = _sample_size(max_per_leaf)
    params64 = to_backend(params, "numpy", dtype="float64")
    x64 = check_x(net, to_backend(x, "numpy"), np.float64)
    y_np = to_backend(y, "numpy")
    y64 = check_y(net, y_np, x64.shape[0], np.float64)
    state64 = None if state is None else to_backend(state, "numpy", dtype="float64")
    b = prepare(net, params64, x64, state=state64, key=key, train=train)
    masks = None if b.noise is None else tuple(
        mk if mk is None or np.asarray(mk).dtype.kind != "f" else np.asarray(mk, np.float64)
        for mk in b.noise)
    if grad_fn is None:
        cache = apply(net, params64, x64, masks, state=b.state, train=train)
        grads = backward(net, params64, cache, y64)
    else:
        grads = grad_fn(net, params64, x64, y_np)
        if tree_structure(grads) != tree_structure(params64) and isinstance(grads, tuple) \
                and len(grads) == 2 and tree_structure(grads[1]) == tree_structure(params64):
            grads = grads[1]  # a (loss, grads) pair

    def loss_of(p):
        xs = to_backend((x64, y64, masks, b.state), backend_of(p))
        cache = apply(net, p, xs[0], xs[2], state=xs[3], train=train)
        return loss_from_cache(net, cache, xs[1])

    return check_gradient(
        loss_of, grads, params64, reference=reference, rtol=rtol, atol=atol, eps=eps,
        max_per_leaf=max_per_leaf, kinks=_kink_sides(net, x64, masks),
    )


KINKED = ("relu", "leaky_relu")
"""Activations with a kink at 0, where finite differences see no derivative."""


def _kink_sides(net: Network, x: Any, masks: tuple) -> Callable[[Any], np.ndarray] | None:
    """``p -> which side of 0 every pre-activation of a kinked activation is on``, or None
    (for an MLP; a ``Net``'s kinks are not tracked)."""
    if not isinstance(net, MLP):
        return None
    hidden = net.hidden in KINKED and net.n_layers > 1
    output = net.output in KINKED and net.loss == "mse"
    if not (hidden or output):
        return None

    def sides(p):
        zs = apply(net, p, x, masks).zs
        chosen = (zs[:-1] if hidden else ()) + ((zs[-1],) if output else ())
        return np.concatenate([np.asarray(z).ravel() > 0 for z in chosen])

    return sides
