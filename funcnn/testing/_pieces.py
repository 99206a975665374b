"""Your own pieces against a referee: an activation's derivative, a loss's ``dL/dz``.

Both checks evaluate the hand-written derivative on a grid of hard points (0, +-1e-6,
moderate values and large magnitudes, plus any ``points`` you add), in float32 and
float64, and compare it with ``jax.grad`` of the forward function in float64 (or with
central finite differences without jax). The error of a point is
``|got - expected| / max|expected|`` over the grid, as for a gradient leaf; the worst
point is reported, and a mismatch raises :class:`GradientMismatch` naming the piece,
the dtype and the point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from funcnn._checks import check_count
from funcnn.activations import Activation, get_activation, name_of, softmax
from funcnn.backend import array_namespace
from funcnn.losses import Loss, get_loss
from funcnn.mlp import MLP
from funcnn.testing._reports import GradientMismatch, _resolve_reference, _x64

__all__ = ["PointReport", "check_activation", "check_loss"]

_MAGNITUDES = (0.0, 1e-6, 1e-3, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0)
GRID = tuple(sorted({s * v for v in _MAGNITUDES for s in (1.0, -1.0)}))
"""The points every activation is checked at: 0, +-1e-6 and up to +-100."""

_RTOL = {"float32": 1e-5, "float64": 1e-7}  # against jax.grad in float64
_RTOL_FD = 1e-5  # against finite differences (their own error is O(h) at a jump of f'')
_FD_STEP = 1e-6


class PointReport(NamedTuple):
    """The worst point of one dtype: where it is, the derivative there and the error.

    ``skipped`` counts the points left out because finite differences saw a kink there.
    """

    dtype: str
    point: Any
    got: float
    expected: float
    error: float
    skipped: int = 0


def _compare(what: str, dtype: str, points: list, got: np.ndarray, ref: np.ndarray,
             keep: np.ndarray, limit: float) -> PointReport:
    got, ref = got[keep], ref[keep]
    kept_points = [p for p, k in zip(points, keep.ravel(), strict=True) if k]
    scale = max(float(np.max(np.abs(ref), initial=0.0)), np.finfo(np.float64).tiny)
    err = np.where(np.isfinite(got), np.abs(got - ref), np.inf) / scale
    i = int(np.argmax(err)) if err.size else 0
    report = PointReport(dtype, kept_points[i] if err.size else None,
                         float(got.ravel()[i]) if err.size else 0.0,
                         float(ref.ravel()[i]) if err.size else 0.0,
                         float(err.ravel()[i]) if err.size else 0.0, int((~keep).sum()))
    if not report.error <= limit:
        raise GradientMismatch(
            f"{what}: the hand-written derivative is off at {report.point} in {dtype}: got "
            f"{report.got:.9g}, expected {report.expected:.9g} (error {report.error:.3g} of "
            f"the largest derivative on the grid; allowed {limit:g})"
        )
    return report


def _limit(reference: str, dtype: str, rtol: float | None) -> float:
    if rtol is not None:
        return rtol
    return _RTOL[dtype] if reference == "jax" else max(_RTOL[dtype], _RTOL_FD)


def _fd(f, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of the elementwise ``f`` at ``z``, and which points are smooth
    (their one-sided differences agree; a kink makes them differ)."""
    h = _FD_STEP * np.maximum(1.0, np.abs(z))
    up, mid, down = (np.asarray(f(z + s * h), np.float64) for s in (1.0, 0.0, -1.0))
    right, left = (up - mid) / h, (mid - down) / h
    smooth = np.abs(right - left) <= 1e-3 * np.maximum(1.0, np.abs(right) + np.abs(left))
    return (up - down) / (2 * h), smooth


def check_activation(act: str | Activation, *, reference: str = "jax",
                     points: Sequence[float] = (), dtypes: Sequence[str] = ("float32", "float64"),
                     rtol: float | None = None) -> list[PointReport]:
    """Check ``act.grad`` against the derivative of ``act.fn`` on :data:`GRID` and ``points``.

    Returns one :class:`PointReport` (the worst point) per dtype; raises
    :class:`GradientMismatch` naming the activation, the dtype and the point. Against
    finite differences, points where the function has a kink are skipped and counted.
    """
    act = get_activation(act)
    what = f"activation {act.name!r}"
    z = np.array(sorted(set(GRID) | {float(p) for p in points}), dtype=np.float64)
    reference = _resolve_reference(reference)
    if reference == "jax":
        with _x64() as jax:
            zj = jax.numpy.asarray(z)
            ref = np.asarray(jax.grad(lambda t: jax.numpy.sum(act.fn(t)))(zj), np.float64)
        keep = np.ones(z.shape, dtype=bool)
    else:
        ref, keep = _fd(act.fn, z)
    reports = []
    for dtype in dtypes:
        zd = z.astype(dtype)
        got = np.asarray(act.grad(zd, act.fn(zd)), dtype=np.float64)
        if got.shape != z.shape:
            raise GradientMismatch(f"{what}: grad returned shape {got.shape} for z of {z.shape}")
        limit = _limit(reference, dtype, rtol)
        reports.append(_compare(what, dtype, [f"z = {v:g}" for v in z], got, ref, keep, limit))
    return reports


def _logit_rows(k: int) -> np.ndarray:
    base = [np.zeros(k), np.full(k, 1e-6), np.linspace(-1.0, 2.0, k), np.linspace(5.0, -5.0, k),
            np.linspace(-30.0, 30.0, k), np.linspace(100.0, -100.0, k), np.full(k, -1e-6)]
    return np.stack(base)


def _default_targets(loss: Loss, m: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if loss.name == "cross_entropy":
        return np.eye(k)[np.arange(m) % k]
    if loss.name == "binary_cross_entropy":
        return (np.arange(m * k).reshape(m, k) % 2).astype(np.float64)
    return rng.uniform(0.0, 1.0, size=(m, k))


def check_loss(loss: str | Loss, *, output: Any = None, k: int = 3, y: Any = None,
               reference: str = "jax", dtypes: Sequence[str] = ("float32", "float64"),
               rtol: float | None = None) -> list[PointReport]:
    """Check ``loss.delta`` against the gradient of ``loss.value`` with respect to the logits.

    The logits are rows of ``k`` values over the hard points (all zeros, +-1e-6, moderate,
    +-30 and +-100); ``y`` are targets of shape ``(rows, k)`` (default: one-hot rows for
    cross-entropy, 0/1 for binary cross-entropy, uniform in [0, 1) otherwise); ``output``
    is the output activation the loss is fused with: by default the loss's own (the first
    of ``loss.outputs``: softmax for cross-entropy, sigmoid for binary cross-entropy),
    softmax for a loss that takes any output (MSE). A pairing that :class:`funcnn.MLP`
    refuses (binary cross-entropy on softmax) is refused here with the same ``ValueError``.
    Returns the worst point per dtype.
    """
    loss = get_loss(loss)
    k = check_count("k", k)
    if output is None:
        output = loss.outputs[0] if loss.outputs else "softmax"
    MLP((1, k), output=output, loss=loss)  # refuses what a net refuses, with its message
    f_out = softmax if output == "softmax" else get_activation(output).fn
    what = f"loss {loss.name!r} with output {name_of(output)!r}"
    z = _logit_rows(k)
    y = _default_targets(loss, *z.shape) if y is None else np.asarray(y, dtype=np.float64)

    def value(t, targets):
        return loss.value(output, t, f_out(t), targets)

    reference = _resolve_reference(reference)
    if reference == "jax":
        with _x64() as jax:
            zj, yj = jax.numpy.asarray(z), jax.numpy.asarray(y)
            ref = np.asarray(jax.grad(value)(zj, yj), dtype=np.float64)
        keep = np.ones(z.shape, dtype=bool)
    else:
        ref, keep = np.zeros_like(z), np.ones(z.shape, dtype=bool)
        mid = float(value(z, y))
        for idx in np.ndindex(*z.shape):
            h = _FD_STEP * max(1.0, abs(z[idx]))
            up, down = z.copy(), z.copy()
            up[idx] += h
            down[idx] -= h
            right, left = (float(value(up, y)) - mid) / h, (mid - float(value(down, y))) / h
            ref[idx] = (right + left) / 2
            keep[idx] = abs(right - left) <= 1e-3 * max(1.0, abs(right) + abs(left))
    points = [f"row {i} (z = {np.array2string(z[i], precision=3)}), column {j}"
              for i, j in np.ndindex(*z.shape)]
    reports = []
    for dtype in dtypes:
        zd, yd = z.astype(dtype), y.astype(dtype)
        xp = array_namespace(zd)
        got = np.asarray(loss.delta(output, zd, f_out(zd), xp.asarray(yd)), dtype=np.float64)
        if got.shape != z.shape:
            raise GradientMismatch(f"{what}: delta returned shape {got.shape} for z of {z.shape}")
        reports.append(_compare(what, dtype, points, got, ref, keep,
                                _limit(reference, dtype, rtol)))
    return reports
