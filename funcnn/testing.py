"""Check hand-written gradients against autodiff or finite differences.

Point it at funcnn's backward pass or at your own::

    report = funcnn.testing.check_grads(net, params, x, y)            # jax.grad as referee
    report = funcnn.testing.check_grads(net, params, x, y, reference="finite_differences")
    report = funcnn.testing.check_grads(net, params, x, y, grad_fn=my_backprop)

Each leaf is compared by its relative error ``max|g - r| / max(max|r|, max|g|)``
(0 when both are all zeros); a leaf beyond ``rtol`` raises :class:`GradientMismatch`
naming the leaf (for example ``params[0].W``) and by how much it is off. The check
runs in float64 (with ``jax_enable_x64`` on when the jax reference is used). Without
jax installed, the jax reference falls back to finite differences, with a warning.

Finite differences cannot see a derivative at a kink (ReLU at 0): an element whose
``+-eps`` perturbation moves a pre-activation of a kinked activation across 0 is
skipped, and the report counts it (``LeafReport.skipped``), instead of failing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from funcnn import mlp, random
from funcnn._checks import check_positive
from funcnn._mlp_checks import check_x, check_y
from funcnn.backend import backend_of, jax_available, to_backend
from funcnn.tree import (
    describe,
    first_difference,
    tree_leaves,
    tree_paths,
    tree_structure,
    tree_unflatten,
)

__all__ = [
    "GradientMismatch",
    "LeafReport",
    "check_grads",
    "check_gradient",
    "check_optimizer",
    "finite_difference_grads",
]


class GradientMismatch(AssertionError):
    """Raised when a gradient leaf disagrees with the reference."""


class LeafReport(NamedTuple):
    """How one leaf compares: its path, relative error and the worst element.

    ``skipped`` counts the elements left out because finite differences straddled a
    kink there (always 0 against jax).
    """

    path: str
    rel_error: float
    max_abs_error: float
    worst_index: tuple[int, ...]
    got: float
    expected: float
    skipped: int = 0


def _rel_report(path: str, got: np.ndarray, ref: np.ndarray, skipped: int = 0) -> LeafReport:
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise GradientMismatch(f"{path}: shape {got.shape} but the reference has {ref.shape}")
    if not np.isfinite(got).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(got))[0])
        return LeafReport(path, float("inf"), float("inf"), idx, float(got[idx]),
                          float(ref[idx]), skipped)
    if not got.size:
        return LeafReport(path, 0.0, 0.0, (), 0.0, 0.0, skipped)
    diff = np.abs(got - ref)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    worst = float(diff[idx])
    # The larger of the two magnitudes: an all-zero reference against a nonzero gradient
    # is an error of 1 (100%), not worst / tiny; two all-zero leaves agree exactly.
    scale = max(float(np.max(np.abs(ref))), float(np.max(np.abs(got))))
    return LeafReport(path, worst / scale if scale > 0 else 0.0, worst,
                      tuple(int(i) for i in idx), float(got[idx]), float(ref[idx]), skipped)


def _raise_if_bad(reports: list[LeafReport], rtol: float, atol: float, what: str,
                  check: str = "gradient check") -> None:
    bad = [r for r in reports if not (r.rel_error <= rtol or r.max_abs_error <= atol)]
    if not bad:
        return
    lines = [
        f"  {r.path}: relative error {r.rel_error:.3g} (max abs {r.max_abs_error:.3g} at "
        f"{r.worst_index}: got {r.got:.9g}, expected {r.expected:.9g})"
        for r in bad
    ]
    raise GradientMismatch(
        f"{check} against {what} failed for {len(bad)} of {len(reports)} leaves "
        f"(rtol={rtol:g}, atol={atol:g}):\n" + "\n".join(lines)
    )


@contextlib.contextmanager
def _x64():
    import jax

    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield jax
    finally:
        jax.config.update("jax_enable_x64", old)


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


def _resolve_reference(reference: str) -> str:
    if reference not in ("jax", "finite_differences"):
        raise ValueError(f"reference must be 'jax' or 'finite_differences'; got {reference!r}")
    if reference == "jax" and not jax_available():
        warnings.warn(
            "jax is not installed, so the gradients are checked against finite differences "
            "instead of jax.grad (install it with `pip install \"funcnn[jax]\"`)",
            UserWarning, stacklevel=3,
        )
        return "finite_differences"
    return reference


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
            g, r = g[m], np.asarray(r)[m]
        reports.append(_rel_report(f"{name}{path}", g, r, skipped))
    _raise_if_bad(reports, rtol, atol, "jax.grad" if reference == "jax" else "finite differences")
    return reports


def check_grads(
    net: mlp.MLP, params: Any, x: Any, y: Any, *, key: Any = None, train: bool = False,
    reference: str = "jax", rtol: float | None = None, atol: float = 0.0,
    grad_fn: Callable[..., Any] | None = None, eps: float = 1e-6, max_per_leaf: int | None = 64,
) -> list[LeafReport]:
    """Check a backward pass for ``net`` on ``(x, y)`` leaf by leaf; raise on a mismatch.

    ``grad_fn(net, params, x, y)`` is the backward pass under test (default: funcnn's
    forward + ``backprop``); it may return ``grads`` or ``(loss, grads)``. The reference
    differentiates ``funcnn.loss`` with the dropout masks drawn from ``key`` (a custom
    ``grad_fn`` must use the same masks, so check it with ``train=False``). Computation
    is in float64; ``rtol`` defaults to 1e-7 against jax and 1e-5 against finite differences.
    Against finite differences, elements whose perturbation crosses the kink of a ReLU or
    leaky ReLU are skipped and counted in ``LeafReport.skipped``.
    """
    params64 = to_backend(params, "numpy", dtype="float64")
    x64 = check_x(net, to_backend(x, "numpy"), np.float64)
    y_np = to_backend(y, "numpy")
    y64 = check_y(net, y_np, x64.shape[0], np.float64)
    masks = mlp.prepare_inputs(net, params64, x64, key, train)[1]
    masks = tuple(None if mk is None else np.asarray(mk, np.float64) for mk in masks)
    if grad_fn is None:
        grads = mlp.backward(net, params64, mlp.apply(net, params64, x64, masks), y64)
    else:
        grads = grad_fn(net, params64, x64, y_np)
        if tree_structure(grads) != tree_structure(params64) and isinstance(grads, tuple) \
                and len(grads) == 2 and tree_structure(grads[1]) == tree_structure(params64):
            grads = grads[1]  # a (loss, grads) pair

    def loss_of(p):
        xs = to_backend((x64, y64, masks), backend_of(p))
        cache = mlp.apply(net, p, xs[0], xs[2])
        return mlp.loss_from_cache(net, cache, xs[1])

    return check_gradient(
        loss_of, grads, params64, reference=reference, rtol=rtol, atol=atol, eps=eps,
        max_per_leaf=max_per_leaf, kinks=_kink_sides(net, x64, masks),
    )


KINKED = ("relu", "leaky_relu")
"""Activations with a kink at 0, where finite differences see no derivative."""


def _kink_sides(net: mlp.MLP, x: Any, masks: tuple) -> Callable[[Any], np.ndarray] | None:
    """``p -> which side of 0 every pre-activation of a kinked activation is on``, or None."""
    hidden = net.hidden in KINKED and net.n_layers > 1
    output = net.output in KINKED and net.loss == "mse"
    if not (hidden or output):
        return None

    def sides(p):
        zs = mlp.apply(net, p, x, masks).zs
        chosen = (zs[:-1] if hidden else ()) + ((zs[-1],) if output else ())
        return np.concatenate([np.asarray(z).ravel() > 0 for z in chosen])

    return sides


# ---------------------------------------------------------------------------- optimizers


def _example_params(key: Any) -> tuple[mlp.Dense, ...]:
    """A small float64 tree of two :class:`~funcnn.Dense` layers, every leaf random."""
    shapes = ((3, 4), (4,), (4, 2), (2,))
    keys = random.split(key, len(shapes))
    W1, b1, W2, b2 = (random.normal(k, s, "float64") for k, s in zip(keys, shapes, strict=True))
    return (mlp.Dense(W1, b1), mlp.Dense(W2, b2))


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
    check_positive("steps", steps, integer=True)
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
