"""funcnn's ``fit`` on NumPy with and without the fused numba loops (``funcnn[fast]``), in
the same run: ``funcnn-numpy`` is the pure NumPy path (``use_fused(False)``, what runs
without the extra), ``funcnn-numpy-fused`` the loops (a skipped row without numba)."""

from __future__ import annotations

from funcnn import _fused

from ..config import Config, Contender
from .funcnn_fit import build_funcnn_numpy

__all__ = ["build_funcnn_numpy_fused", "build_funcnn_numpy_pure"]


def _scoped(c: Contender, on: bool, note: str) -> Contender:
    """``c`` whose epochs run inside ``use_fused(on)`` (and so its warm-up too)."""

    def epoch(i: int) -> float | None:
        with _fused.use_fused(on):
            return c.epoch(i)

    return c._replace(epoch=epoch, note=f"{c.note}; {note}")


def build_funcnn_numpy_pure(cfg: Config, x, y) -> Contender:
    return _scoped(build_funcnn_numpy(cfg, x, y), False, "pure NumPy")


def build_funcnn_numpy_fused(cfg: Config, x, y) -> Contender:
    if not _fused.available():
        raise ImportError("numba is not installed (pip install 'funcnn[fast]')")
    return _scoped(build_funcnn_numpy(cfg, x, y), True, "numba loops")
