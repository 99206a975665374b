"""Where a NumPy training epoch of funcnn goes: gather, forward, loss, backward, optimizer,
metrics, each timed with ``time.perf_counter``, beside the step's own matrix products and
the optimizer alone on a warm cache."""

from __future__ import annotations

import statistics
import time

import numpy as np

import funcnn
from funcnn import network, step

__all__ = ["GEMMS", "PIECES", "epoch_pieces", "measure"]

PIECES = ("gather", "forward", "loss", "backward", "optimizer", "metrics")
GEMMS = ("forward GEMMs", "backward GEMMs")


def _gemms(params, cache, out: dict) -> tuple[float, float]:
    """The matrix products of the step alone, on the step's own operands, into the
    arrays of ``out`` (as the gemm-floor contender): (forward s, backward s)."""
    clock = time.perf_counter
    t0 = clock()
    for layer, a, z in zip(params, cache.inputs, cache.zs, strict=True):
        np.matmul(a, layer.W, out=z)
    t1 = clock()
    for l in range(len(params) - 1, -1, -1):
        dz = cache.zs[l]
        np.matmul(cache.inputs[l].T, dz, out=out.setdefault(("dW", l), np.empty_like(
            params[l].W)))
        if l > 0:
            np.matmul(dz, params[l].W.T, out=out.setdefault(("da", l), np.empty_like(
                cache.inputs[l])))
    return t1 - t0, clock() - t1


def epoch_pieces(net, opt, params, state, x, y, order, batch_size, out: dict):
    """Seconds spent in each piece over one epoch; returns (times, params, state).

    Each step also runs its forward and backward matrix products alone, right after
    the step, on copies of the same operands (the "GEMMs" rows), into ``out``."""
    times = dict.fromkeys(PIECES + GEMMS, 0.0)
    masks = (None,) * (net.n_layers - 1)
    clock = time.perf_counter
    for start in range(0, len(order) - batch_size + 1, batch_size):
        t0 = clock()
        i = order[start:start + batch_size]
        xb, yb = x[i], y[i]
        t1 = clock()
        cache = network.apply(net, params, xb, masks)
        t2 = clock()
        loss = network.loss_from_cache(net, cache, yb)
        t3 = clock()
        grads = network.backward(net, params, cache, yb)
        t4 = clock()
        new_params, state = opt.update(params, grads, state)
        t5 = clock()
        float(loss), float(step.n_correct(net, cache.out, yb))
        t6 = clock()
        scratch = cache._replace(zs=tuple(z.copy() for z in cache.zs))
        fwd, bwd = _gemms(params, scratch, out)
        params = new_params
        for name, dt in zip(PIECES + GEMMS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4,
                                             t6 - t5, fwd, bwd), strict=True):
            times[name] += dt
    return times, params, state


def measure(sizes: tuple[int, ...], batch_size: int = 128, samples: int = 60_000,
            repeats: int = 5) -> dict:
    """Median seconds per epoch of every piece over ``repeats`` epochs (after a warm-up), of
    their ``total``, and of ``optimizer alone``: as many updates with fixed gradients."""
    rng = np.random.default_rng(0)
    x = rng.random((samples, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], samples)
    net = funcnn.MLP(sizes)
    opt = funcnn.optim.adam(1e-3)
    params = funcnn.init_params(net, 0)
    state = opt.init(params)
    out: dict = {}
    runs = {name: [] for name in (*PIECES, "total", "optimizer alone", *GEMMS)}
    for r in range(repeats + 1):
        order = rng.permutation(samples)
        with funcnn.backend.flush_denormals():  # as fit does
            times, params, state = epoch_pieces(net, opt, params, state, x, y, order,
                                                batch_size, out)
        t = time.perf_counter()
        q, s = params, state
        for _ in range(samples // batch_size):  # same grads each time: cache-warm
            q, s = opt.update(q, params, s)
        alone = time.perf_counter() - t
        if r == 0:
            continue  # warm-up
        for name, v in times.items():
            runs[name].append(v)
        runs["total"].append(sum(times[name] for name in PIECES))
        runs["optimizer alone"].append(alone)
    return {name: statistics.median(values) for name, values in runs.items()}
