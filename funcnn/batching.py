"""Mini-batches as index arrays, drawn from an explicit key.

``batches(key, n, batch_size)`` yields the row indices of each mini-batch of
one epoch. Give each epoch its own key (``funcnn.random.fold_in(key, epoch)``),
or pass ``epoch=`` and let ``shuffle_every`` decide when the order changes::

    for epoch in range(10):
        for idx in funcnn.batches(key, len(x), 128, epoch=epoch, shuffle_every=2):
            xb, yb = x[idx], y[idx]

With ``shuffle_every=k`` the order is drawn anew at epochs ``0, k, 2k, ...``
and kept in between, which reproduces a loop that shuffles its data in place
every k-th epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from funcnn import random
from funcnn._checks import check_count

__all__ = ["BatchSplit", "batches", "epoch_order", "num_batches", "split_batches"]


class BatchSplit(NamedTuple):
    """How one epoch of ``n`` rows splits: ``full`` batches of ``size`` rows, then a short
    batch of ``tail`` rows (0 when there is none or it is dropped)."""

    size: int
    full: int
    tail: int

    @property
    def count(self) -> int:
        """How many batches the epoch has."""
        return self.full + (1 if self.tail else 0)

    @property
    def rows(self) -> int:
        """How many rows the epoch uses."""
        return self.full * self.size + self.tail


def split_batches(n: int, batch_size: int | None, drop_last: bool = False) -> BatchSplit:
    """The one rule for batch sizes: ``batch_size=None`` (or ``>= n``) is one full batch,
    and the last ``n % batch_size`` rows form a short batch unless ``drop_last``."""
    n = check_count("n", n)
    if batch_size is not None:
        batch_size = check_count("batch_size", batch_size)
    size = n if batch_size is None else min(batch_size, n)
    full, rest = divmod(n, size)
    return BatchSplit(size, full, 0 if drop_last else rest)


def num_batches(n: int, batch_size: int | None, drop_last: bool = False) -> int:
    """How many batches one epoch of ``n`` rows has."""
    return split_batches(n, batch_size, drop_last).count


def epoch_order(key: Any, n: int, *, epoch: int = 0, shuffle: bool = True,
                shuffle_every: int = 1) -> Any:
    """The row order of epoch ``epoch``: a permutation (or ``arange(n)`` without shuffling)."""
    n = check_count("n", n)
    epoch = check_count("epoch", epoch, minimum=0)
    shuffle_every = check_count("shuffle_every", shuffle_every)
    if not shuffle:
        return np.arange(n)
    drawn_at = epoch - epoch % shuffle_every
    return random.permutation(random.fold_in(random.as_key(key), drawn_at), n)


def batches(
    key: Any, n: int, batch_size: int | None, *, shuffle: bool = True, drop_last: bool = False,
    epoch: int = 0, shuffle_every: int = 1,
) -> Iterator[Any]:
    """Yield index arrays of the mini-batches of one epoch of ``n`` rows.

    ``batch_size=None`` means the full batch. ``drop_last`` drops a final short batch.
    ``key`` is an int seed or a ``funcnn.random`` key (ignored when ``shuffle=False``).
    Arguments are checked when ``batches`` is called, not when iteration starts.
    """
    split = split_batches(n, batch_size, drop_last)
    order = epoch_order(key, n, epoch=epoch, shuffle=shuffle, shuffle_every=shuffle_every)
    return (order[start:start + split.size] for start in range(0, split.rows, split.size))
