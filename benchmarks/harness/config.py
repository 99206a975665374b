"""What one run measures: a configuration, a contender, and the named configurations."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

__all__ = ["B1", "B2", "EPS", "FLOOR", "FLOORS", "MAIN", "SMALL", "TINY", "WIDE", "Config",
           "Contender"]

B1, B2, EPS = 0.9, 0.999, 1e-8  # Adam's, for every contender that trains with Adam
FLOOR = "gemm-floor"  # the denominator of every ratio
FLOORS = (FLOOR, "jax-gemm-floor")


class Config(NamedTuple):
    """One configuration: the net, the batch, the data and how many timed epochs."""

    name: str
    sizes: tuple[int, ...]
    batch_size: int
    dtype: str
    samples: int
    repeats: int
    lr: float = 1e-3
    seed: int = 0
    activation: str = "relu"  # of the hidden layers: "relu" or "tanh"
    optimizer: str = "adam"  # "adam" or "sgd" (plain, no momentum)


class Contender(NamedTuple):
    """What a contender's ``build_*`` function gives the timer.

    ``epoch(i)`` trains one epoch in the order of permutation ``i`` and returns when the
    work is done (jax outputs blocked on), with the loss of the last batch or ``None``.
    """

    epoch: Callable[[int], float | None]
    dtype: str | Callable[[], str]  # what it computes in (a callable: known after a fit)
    steps: int  # optimizer steps per epoch
    nbytes: int  # bytes of data + params held by the contender
    memory: str  # "tracemalloc" (NumPy allocations) or "rss"
    note: str = ""


MAIN = dict(name="main", sizes=(784, 256, 128, 10), batch_size=128)
SMALL = dict(name="small", sizes=(784, 64, 10), batch_size=32)
TINY = dict(name="tiny", sizes=(784, 32, 10), batch_size=128, samples=2048, repeats=1)
# the shape of JAX's examples/mnist_classifier_fromscratch.py, with plain SGD and with Adam
# (6400 samples, 50 steps: a NumPy epoch of this net takes ~8x the main one's per row)
WIDE = [dict(name=f"wide-{opt}", sizes=(784, 1024, 1024, 10), batch_size=128, samples=6400,
             activation="tanh", optimizer=opt) for opt in ("sgd", "adam")]
