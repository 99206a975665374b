"""The quick test tier: ``python -m pytest -m "not slow"`` runs in under two minutes.

A large matrix of cases (every activation x loss x depth) keeps a spread-out sample in the
quick tier and marks the rest ``slow``; CI and ``python -m pytest`` run all of them.
"""

from __future__ import annotations

import pytest

__all__ = ["sample_quick"]


def sample_quick(rows: list, every: int, ids: list | None = None) -> list:
    """``rows`` as ``pytest.param``s: rows ``0, every, 2 * every, ...`` quick, the others slow."""
    ids = ids or [None] * len(rows)
    return [
        pytest.param(*(row if isinstance(row, tuple) else (row,)), id=name,
                     marks=() if i % every == 0 else pytest.mark.slow)
        for i, (row, name) in enumerate(zip(rows, ids, strict=True))
    ]
