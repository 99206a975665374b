"""The GEMM floors: the matrix products of one training step and nothing else, on NumPy
(``gemm-floor``, the denominator of every ratio) and on XLA (``jax-gemm-floor``)."""

from __future__ import annotations

import numpy as np

from ..config import Config, Contender
from ..data import init_weights, nbytes

__all__ = ["build_gemm_floor", "build_jax_gemm_floor"]


def build_gemm_floor(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    """The matrix products of one training step and nothing else.

    Per batch: forward ``a[i+1] = a[i] @ W[i]``; backward ``dW[i] = a[i].T @ dz[i]``
    and ``da[i] = dz[i] @ W[i].T`` for every layer but the first (no training
    loop needs the gradient with respect to the input). No bias, activation,
    loss or optimizer; every output is preallocated and batches are views.
    """
    dt, bs = np.dtype(cfg.dtype), cfg.batch_size
    xs = np.ascontiguousarray(x, dtype=dt)
    ws = [w for w, _ in init_weights(cfg.sizes, cfg.seed, dt)]
    acts = [np.empty((bs, n), dt) for n in cfg.sizes[1:]]
    dzs = [np.full((bs, n), 1e-3, dt) for n in cfg.sizes[1:]]
    dws = [np.empty_like(w) for w in ws]
    das = [np.empty((bs, n), dt) for n in cfg.sizes[1:-1]]
    steps = cfg.samples // bs

    def epoch(_: int) -> None:
        for s in range(steps):
            a = xs[s * bs : (s + 1) * bs]
            ins = [a]
            for w, out in zip(ws, acts, strict=True):
                np.matmul(ins[-1], w, out=out)
                ins.append(out)
            for i in reversed(range(len(ws))):
                np.matmul(ins[i].T, dzs[i], out=dws[i])
                if i > 0:
                    np.matmul(dzs[i], ws[i].T, out=das[i - 1])

    return Contender(epoch, dt.name, steps, nbytes(xs, *ws), "tracemalloc")


def build_jax_gemm_floor(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    """The products of :func:`build_gemm_floor`, but run by XLA in one jitted ``lax.scan``.

    Shows how fast XLA's own CPU matmuls are on these shapes: a jax training loop
    cannot beat this. Each step's products feed a scalar so that none is dropped.
    """
    import jax
    import jax.numpy as jnp

    dt, bs = np.dtype(cfg.dtype), cfg.batch_size
    steps = cfg.samples // bs
    xd = jnp.asarray(np.ascontiguousarray(x[: steps * bs], dtype=dt)).reshape(steps, bs, -1)
    ws = [jnp.asarray(w) for w, _ in init_weights(cfg.sizes, cfg.seed, dt)]
    dzs = [jnp.full((bs, n), 1e-3, dt) for n in cfg.sizes[1:]]

    @jax.jit
    def run_epoch(ws, dzs, xd):
        def body(total, a):
            ins = [a]
            for w in ws:
                ins.append(ins[-1] @ w)
            for i in reversed(range(len(ws))):
                total = total + jnp.sum(ins[i].T @ dzs[i])
                if i > 0:
                    total = total + jnp.sum(dzs[i] @ ws[i].T)
            return total + jnp.sum(ins[-1]), None

        return jax.lax.scan(body, jnp.zeros((), dt), xd)[0]

    def epoch(_: int) -> None:
        run_epoch(ws, dzs, xd).block_until_ready()

    return Contender(epoch, dt.name, steps, nbytes(np.asarray(xd), *map(np.asarray, ws)), "rss",
                     "XLA's matmuls alone, one lax.scan")
