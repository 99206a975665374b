"""Small MNIST-layout IDX files for tests that must run without the real MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import funcnn


def write_digits(folder: Path, n_train: int = 2400, n_test: int = 600, seed: int = 0) -> Path:
    """Write the four MNIST files of 28x28 uint8 'digits' into ``folder`` (gzip-compressed).

    Class ``c`` is a bright 8x4 bar at the c-th of ten places, jittered by up to one
    pixel, over noise: learnable in one epoch, but not perfectly.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 120, size=(n, 28, 28)).astype(np.uint8)
        jitter = rng.integers(-1, 2, size=(n, 2))
        for i, c in enumerate(labels):
            r = 4 + 12 * (c // 5) + jitter[i, 0]
            col = 3 + 5 * (c % 5) + jitter[i, 1]
            images[i, r:r + 8, col:col + 4] = 255
        funcnn.data.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        funcnn.data.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder
