"""The cost model: what one training step must compute and move, and the copy bandwidth
that bounds its element-wise work."""

from __future__ import annotations

import numpy as np

from .config import Config
from .timing import timed

__all__ = ["copy_bandwidth", "step_cost"]


def step_cost(cfg: Config) -> dict:
    """FLOPs and bytes of one training step of ``cfg`` (the bytes an ideal step must move).

    FLOPs: the matrix products of the GEMM floor (forward ``a @ W``, ``dW = a.T @ dz`` for
    every layer, ``dz @ W.T`` for all but the first), 2 per multiply-add.
    Bytes: the weights read forward and backward and the gradient written (``3 P``); the
    optimizer reading ``p, g`` and writing ``p`` (SGD, ``3 P``) or reading ``p, g, m, v``
    and writing ``p, m, v`` (Adam, ``7 P``); every activation and delta written once and
    read once; the input batch read once.
    """
    item, b, sizes = np.dtype(cfg.dtype).itemsize, cfg.batch_size, cfg.sizes
    mn = [m * n for m, n in zip(sizes[:-1], sizes[1:], strict=True)]
    params = sum(mn) + sum(sizes[1:])
    return {
        "params": params,
        "flops": 2 * b * (2 * sum(mn) + sum(mn[1:])),
        "gemm_bytes": 3 * params * item,
        "optimizer_bytes": (3 if cfg.optimizer == "sgd" else 7) * params * item,
        "activation_bytes": (4 * b * sum(sizes[1:]) + b * sizes[0]) * item,
    }


def copy_bandwidth(nbytes: int = 64 * 2**20, repeats: int = 5) -> float:
    """Bytes per second that one ``np.copyto`` moves (read + write) on a 64 MiB array, best of 5:
    the speed an element-wise pass over arrays much larger than the caches cannot beat."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = min(timed(lambda _: np.copyto(dst, src), 0)[0] for _ in range(repeats))
    return 2 * nbytes / best
