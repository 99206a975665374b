"""Small, pure preprocessing steps: one-hot targets, standardization, a seeded split, and
random pixel shifts of images (data augmentation)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from funcnn import random as fnr
from funcnn._checks import check_count
from funcnn.backend import array_namespace, concrete_value
from funcnn.losses import one_hot as _one_hot_rows

__all__ = ["one_hot", "random_shift", "standardize", "train_val_split"]


def one_hot(labels: Any, k: int, dtype: Any = "float32") -> Any:
    """One-hot rows: ``labels`` of shape ``(n,)`` with values in ``[0, k)`` -> ``(n, k)``.

    Works on NumPy and jax arrays (any leading shape ``s`` gives ``s + (k,)``).
    Raises ``ValueError`` naming the first label outside ``[0, k)`` and its
    index; values are not checked under ``jax.jit``, where they are unknown.
    """
    k = check_count("k", k)
    xp = array_namespace(labels)
    labels = xp.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"labels must have an integer dtype; got {labels.dtype} "
            "(use labels.astype(int) if they hold whole numbers)"
        )
    values = concrete_value(labels)
    if values is not None:
        bad = (values < 0) | (values >= k)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            where = index[0] if len(index) == 1 else index
            raise ValueError(f"labels must be in [0, {k}); labels[{where}] = {values[index]}")
    return _one_hot_rows(labels, k, dtype)


def standardize(
    x: Any, mean: Any = None, std: Any = None, eps: float = 1e-8
) -> tuple[Any, Any, Any]:
    """Centre and scale each feature: ``(x - mean) / std`` -> ``(x_std, mean, std)``.

    ``x`` has shape ``(n, ...)``; ``mean`` and ``std`` have shape ``x.shape[1:]``.
    With neither given they are fitted on ``x`` (the training set); pass both to
    apply the training statistics to other data. Features with ``std <= eps``
    (e.g. a pixel that is always black) are only centred, so they cannot blow
    up on new data. Integer ``x`` is converted to float32.
    """
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std (statistics to reuse) or neither (to fit them)")
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative; got {eps}")
    xp = array_namespace(x, mean, std)
    x = xp.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype("float32")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (n, ...) with n >= 1; got {x.shape}")
    if mean is None:
        mean, std = xp.mean(x, axis=0), xp.std(x, axis=0)
    else:
        mean, std = xp.asarray(mean, dtype=x.dtype), xp.asarray(std, dtype=x.dtype)
        for name, stat in (("mean", mean), ("std", std)):
            if stat.shape != x.shape[1:]:
                raise ValueError(
                    f"{name} has shape {stat.shape}; expected x.shape[1:] = {x.shape[1:]}"
                )
    scale = xp.where(std > eps, std, xp.ones_like(std))
    row = (1,) + x.shape[1:]  # explicit broadcast: safe under strict rank promotion
    return (x - xp.reshape(mean, row)) / xp.reshape(scale, row), mean, std


def train_val_split(
    key: Any, x: Any, y: Any, val_fraction: float = 0.1
) -> tuple[Any, Any, Any, Any]:
    """Shuffle with ``key`` (a funcnn.random key or int seed), then split off a validation set.

    Returns ``(x_train, y_train, x_val, y_val)``; the validation set holds
    ``round(n * val_fraction)`` examples. Both sets must be non-empty.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
        raise TypeError(f"val_fraction must be a number; got {type(val_fraction).__name__}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    xp = array_namespace(x, y)
    x, y = xp.asarray(x), xp.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"x and y must have a leading example axis; got {x.shape} and {y.shape}")
    n, n_y = len(x), len(y)
    if n != n_y:
        raise ValueError(f"x and y must have the same length; got {n} and {n_y}")
    n_val = math.floor(n * val_fraction + 0.5)
    if not 0 < n_val < n:
        raise ValueError(
            f"val_fraction={val_fraction} of {n} examples leaves an empty "
            f"{'validation' if n_val == 0 else 'training'} set"
        )
    order = np.asarray(fnr.permutation(fnr.as_key(key), n))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def random_shift(
    key: Any, images: Any, max_shift: int = 1, image_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Each image moved by its own random whole-pixel offset, the uncovered border set to 0.

    ``images`` has shape ``(n, h, w)``, or ``(n, h * w)`` with ``image_shape=(h, w)``
    (MNIST's flattened rows: ``image_shape=(28, 28)``); the result has the same shape
    and dtype. Image ``i`` moves ``dy[i]`` rows down and ``dx[i]`` columns right,
    each drawn uniformly from ``{-max_shift, ..., max_shift}`` with ``key`` (a
    funcnn.random key or int seed)::

        out[i, r, c] = images[i, r - dy[i], c - dx[i]]   (0 where that is outside)

    A host step (data augmentation before training): the result is a NumPy array.
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, numbers.Integral):
        raise TypeError(f"max_shift must be an int; got {type(max_shift).__name__} {max_shift!r}")
    images = np.asarray(images)
    if image_shape is None:
        if images.ndim != 3:
            raise ValueError(f"images must have shape (n, h, w), or (n, h * w) with "
                             f"image_shape=(h, w); got {images.shape}")
        h, w = images.shape[1:]
    else:
        h, w = (int(d) for d in image_shape)
        if images.ndim != 2 or images.shape[1] != h * w:
            raise ValueError(f"images must have shape (n, {h * w}) for image_shape=({h}, {w}); "
                             f"got {images.shape}")
    if not 0 <= max_shift < min(h, w):
        raise ValueError(f"max_shift must be in [0, {min(h, w)}) for {h}x{w} images; "
                         f"got {max_shift}")
    n, k = len(images), 2 * max_shift + 1
    grid = images.reshape(n, h, w)
    u = np.asarray(fnr.uniform(fnr.as_key(key), (n, 2)))
    offsets = np.minimum(np.floor(u * k).astype(np.int64), k - 1)  # (n, 2) in [0, k)
    codes = offsets[:, 0] * k + offsets[:, 1]  # (n,): which of the k * k moves
    out = np.zeros_like(grid)
    for code in np.unique(codes):  # one block copy per move, not one per image
        rows = np.flatnonzero(codes == code)
        dy, dx = int(code // k) - max_shift, int(code % k) - max_shift
        out[rows, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            grid[rows][:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out.reshape(images.shape)
