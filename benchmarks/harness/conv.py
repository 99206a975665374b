"""What the convolutional benchmark measures (``benchmarks/conv_epoch.py``): its
configurations, the net, the images, and the matrix products of one step with their FLOPs.

The net is the small MNIST net of issue 20, channels-last, float32::

    3x3 conv c1 ("same") -> relu -> 2x2 max-pool -> 3x3 conv c2 ("same") -> relu
    -> 2x2 max-pool -> flatten -> dense hidden -> relu -> dense 10

with softmax + cross-entropy and Adam (lr 1e-3). ``conv`` is (c1, c2, hidden) = (32, 64, 128)
with batch 128; ``conv-tiny`` a seconds-long version for CI.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from funcnn.layers import Activation, Conv2D, Dense, Flatten, MaxPool2D, Serial

from .config import Config
from .data import load_data

__all__ = ["CONV", "CONV_TINY", "IMAGE", "ConvConfig", "Product", "conv_net", "load_images",
           "order", "products", "step_flops"]

IMAGE = (28, 28, 1)  # one MNIST image, channels last
CLASSES = 10


class ConvConfig(NamedTuple):
    """One convolutional configuration. Each timed run trains ``steps`` batches of the
    epoch's order (``steps`` None: the whole epoch, ``samples // batch_size`` batches)."""

    name: str
    channels: tuple[int, int]
    hidden: int
    batch_size: int
    samples: int
    repeats: int
    steps: int | None = None
    dtype: str = "float32"
    lr: float = 1e-3
    seed: int = 0

    @property
    def epoch_steps(self) -> int:
        """Optimizer steps in a whole epoch (full batches only)."""
        return self.samples // self.batch_size

    @property
    def run_steps(self) -> int:
        """Optimizer steps in one timed run."""
        return min(self.steps or self.epoch_steps, self.epoch_steps)


CONV = dict(name="conv", channels=(32, 64), hidden=128, batch_size=128, samples=60000,
            repeats=3)
CONV_TINY = dict(name="conv-tiny", channels=(4, 8), hidden=16, batch_size=32, samples=256,
                 repeats=1, steps=4)


def conv_net(cfg: ConvConfig) -> Serial:
    """The net of the configuration as ``funcnn.layers`` (params at indices 0, 3, 7, 9)."""
    c1, c2 = cfg.channels
    return Serial([Conv2D(c1, 3, padding="same"), Activation("relu"), MaxPool2D(2),
                   Conv2D(c2, 3, padding="same"), Activation("relu"), MaxPool2D(2),
                   Flatten(), Dense(cfg.hidden), Activation("relu"), Dense(CLASSES)])


def load_images(cfg: ConvConfig, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``cfg.samples`` images ``(n, 28, 28, 1)`` in [0, 1) and their labels: uniform random
    from ``cfg.seed``, or MNIST's training images from ``data_dir``
    (:func:`harness.data.load_data`)."""
    flat = Config(cfg.name, (IMAGE[0] * IMAGE[1] * IMAGE[2], CLASSES), cfg.batch_size,
                  cfg.dtype, cfg.samples, cfg.repeats, seed=cfg.seed)
    x, y = load_data(flat, data_dir)
    return np.ascontiguousarray(x.reshape(-1, *IMAGE)), y


def order(cfg: ConvConfig, permutation: np.ndarray) -> np.ndarray:
    """The rows of each batch of one timed run, ``(run_steps, batch_size)``."""
    n = cfg.run_steps * cfg.batch_size
    return permutation[:n].reshape(cfg.run_steps, cfg.batch_size)


class Product(NamedTuple):
    """One layer's forward product ``(rows, k) @ (k, n)``; its backward pass runs
    ``(k, rows) @ (rows, n)`` for the weights and, when ``dx``, ``(rows, n) @ (n, k)``
    for the input (the first layer's input gradient is needed by no one)."""

    name: str
    rows: int
    k: int
    n: int
    dx: bool


def products(cfg: ConvConfig) -> list[Product]:
    """The matrix products of one training step in the patch form: a convolution is
    ``patches (m*H*W, 9*C) @ W (9*C, F)``, a dense layer ``(m, n_in) @ (n_in, n_out)``."""
    (h, w, c), (c1, c2), m = IMAGE, cfg.channels, cfg.batch_size
    return [Product("conv1", m * h * w, 9 * c, c1, False),
            Product("conv2", m * (h // 2) * (w // 2), 9 * c1, c2, True),
            Product("dense1", m, (h // 4) * (w // 4) * c2, cfg.hidden, True),
            Product("dense2", m, cfg.hidden, CLASSES, True)]


def step_flops(cfg: ConvConfig) -> dict[str, Any]:
    """FLOPs of one step's products: forward, backward, and per layer."""
    per = {p.name: (2 * p.rows * p.k * p.n, 2 * p.rows * p.k * p.n * (1 + p.dx))
           for p in products(cfg)}
    return {"forward": sum(f for f, _ in per.values()),
            "backward": sum(b for _, b in per.values()),
            "layers": {name: f + b for name, (f, b) in per.items()}}
