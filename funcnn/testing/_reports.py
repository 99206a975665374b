"""What every check in funcnn.testing shares: the mismatch error, per-leaf reports,
float64 jax, and the fallback to finite differences when jax is missing."""

from __future__ import annotations

import contextlib
import warnings
from typing import NamedTuple

import numpy as np

from funcnn.backend import jax_available

__all__ = ["GradientMismatch", "LeafReport"]


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
    # Relative to the reference; an all-zero reference is measured against the gradient
    # itself, so a nonzero gradient there is an error of 1 (100%), not worst / tiny, and
    # two all-zero leaves agree exactly.
    scale = float(np.max(np.abs(ref))) or float(np.max(np.abs(got)))
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
