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
from typing import Any

import numpy as np

from funcnn import random
from funcnn._checks import check_positive

__all__ = ["batches", "epoch_order", "num_batches"]


def num_batches(n: int, batch_size: int | None, drop_last: bool = False) -> int:
    """How many batches one epoch of ``n`` rows has."""
    check_positive("n", n, integer=True)
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
    if batch_size is None or batch_size >= n:
        return 1
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(key: Any, n: int, *, epoch: int = 0, shuffle: bool = True,
                shuffle_every: int = 1) -> Any:
    """The row order of epoch ``epoch``: a permutation (or ``arange(n)`` without shuffling)."""
    check_positive("shuffle_every", shuffle_every, integer=True)
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
    check_positive("n", n, integer=True)
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
    order = epoch_order(key, n, epoch=epoch, shuffle=shuffle, shuffle_every=shuffle_every)
    size = n if batch_size is None else min(batch_size, n)
    stop = n - n % size if drop_last else n
    return (order[start:start + size] for start in range(0, stop, size))
