"""Small deterministic toy data sets for tests, examples and quick experiments.

Each takes an explicit ``key`` (a funcnn.random key or an int seed): the same
key gives the same data, bit for bit. All return NumPy arrays: float32 inputs
and int64 class labels (or float32 regression targets).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from funcnn import random as fnr
from funcnn._checks import check_count, check_positive

__all__ = ["regression", "spirals", "xor"]


def _check_noise(noise: Any) -> float:
    check_positive("noise", noise, allow_zero=True)
    return float(noise)


def _keys(key: Any, n: int) -> np.ndarray:
    return fnr.split(fnr.as_key(key, backend="numpy"), n)


def spirals(
    key: Any, n: int = 200, noise: float = 0.1, classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved spiral arms, one per class, in shuffled order.

    Returns ``x`` float32 ``(n, 2)`` and ``y`` int64 ``(n,)`` in ``[0, classes)``,
    with classes as balanced as ``n`` allows. A point at radius ``t`` in [0, 1)
    on arm ``c`` has angle ``2 pi c / classes + 3 pi t`` (1.5 turns); ``noise``
    is the std of Gaussian jitter added to each coordinate.
    """
    classes = check_count("classes", classes, minimum=2)
    n = check_count("n", n, minimum=classes)
    noise = _check_noise(noise)
    k_t, k_noise, k_order = _keys(key, 3)
    y = np.arange(n) % classes
    t = fnr.uniform(k_t, (n,), "float64")
    angle = 2 * np.pi * y / classes + 3 * np.pi * t
    x = t[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x = x + noise * fnr.normal(k_noise, (n, 2), "float64")
    order = fnr.permutation(k_order, n)
    return x[order].astype(np.float32), y[order].astype(np.int64)


def xor(key: Any, n: int = 200, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Four Gaussian blobs at ``(+-1, +-1)``; the label is 1 where the signs differ.

    Returns ``x`` float32 ``(n, 2)`` and ``y`` int64 ``(n,)`` in {0, 1} (use
    ``y[:, None]`` as targets for a single sigmoid output). ``noise`` is the std
    of each blob.
    """
    n = check_count("n", n)
    noise = _check_noise(noise)
    k_corner, k_noise = _keys(key, 2)
    signs = fnr.bernoulli(k_corner, 0.5, (n, 2))
    centres = np.where(signs, 1.0, -1.0)
    x = centres + noise * fnr.normal(k_noise, (n, 2), "float64")
    y = signs[:, 0] != signs[:, 1]
    return x.astype(np.float32), y.astype(np.int64)


def regression(
    key: Any, n: int = 200, features: int = 1, noise: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth nonlinear target: ``y = mean_j sin(pi x_j) + noise * N(0, 1)``.

    Inputs are uniform in ``[-1, 1)``. Returns ``x`` float32 ``(n, features)`` and
    ``y`` float32 ``(n, 1)``.
    """
    n = check_count("n", n)
    features = check_count("features", features)
    noise = _check_noise(noise)
    k_x, k_noise = _keys(key, 2)
    x = fnr.uniform(k_x, (n, features), "float64", -1.0, 1.0)
    y = np.mean(np.sin(np.pi * x), axis=1, keepdims=True)
    y = y + noise * fnr.normal(k_noise, (n, 1), "float64")
    return x.astype(np.float32), y.astype(np.float32)
