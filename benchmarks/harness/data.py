"""The training rows, the order every contender trains them in, initial weights, and the
bytes a contender holds."""

from __future__ import annotations

from typing import Any

import numpy as np

import funcnn

from .config import Config

__all__ = ["init_weights", "jax_data", "load_data", "nbytes", "permutation"]


def load_data(cfg: Config, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``cfg.samples`` rows of float32 inputs in [0, 1) and integer labels: uniform random
    from ``cfg.seed``, or the first rows of MNIST's training set in ``data_dir``."""
    if data_dir is None:
        rng = np.random.default_rng(cfg.seed)
        x = rng.random((cfg.samples, cfg.sizes[0]), dtype=np.float32)
        return x, rng.integers(0, cfg.sizes[-1], cfg.samples)
    mnist = funcnn.data.load_mnist(data_dir)  # float32 (60000, 784) in [0, 1], int64 labels
    x, y = mnist.x_train, mnist.y_train
    if x.shape[1] != cfg.sizes[0] or len(x) < cfg.samples:
        raise SystemExit(f"--data gives {x.shape}, need {cfg.samples} rows of {cfg.sizes[0]}")
    return x[: cfg.samples], y[: cfg.samples]


def permutation(cfg: Config, epoch: int) -> np.ndarray:
    """The sample order of ``epoch``; the same for every contender."""
    return np.random.default_rng((cfg.seed, epoch)).permutation(cfg.samples)


def init_weights(sizes: tuple[int, ...], seed: int, dtype: Any) -> list[tuple[np.ndarray, ...]]:
    """He-normal weights ``W[i]`` of shape (fan_in, fan_out) and zero biases."""
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((m, n)) * np.sqrt(2.0 / m)).astype(dtype),
            np.zeros(n, dtype=dtype),
        )
        for m, n in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def nbytes(*arrays: Any) -> int:
    return sum(int(a.nbytes) for a in arrays)


def jax_data(cfg: Config, x: np.ndarray, y: np.ndarray):
    """Inputs in ``cfg.dtype`` and int32 labels, on the jax device (x64 enabled for float64)."""
    import jax

    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    data = (jax.device_put(np.ascontiguousarray(x, dtype=cfg.dtype)),
            jax.device_put(y.astype(np.int32)))
    return jax.block_until_ready(data)  # placed before any epoch is timed
