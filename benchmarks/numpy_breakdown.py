"""Where a NumPy training epoch of funcnn goes: gather, forward, loss, backward, optimizer.

    python benchmarks/numpy_breakdown.py [--sizes 784,256,128,10] [--batch-size 128]

Runs funcnn's own step pieces (the ones ``fit`` calls) over one epoch of random
MNIST-shaped data, timing each piece with ``time.perf_counter``, and also the
optimizer update alone on a quiet cache. Prints the median over ``--repeats``
epochs of each piece, in seconds per epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import funcnn  # noqa: E402
from funcnn import mlp, step  # noqa: E402

PIECES = ("gather", "forward", "loss", "backward", "optimizer", "metrics")
GEMMS = ("forward GEMMs", "backward GEMMs")
TARGET = 1.2  # forward and backward each within 1.2x their own matrix products


def _gemms(params, xb, cache):
    """The matrix products of the step alone, on the step's own operands, into
    preallocated outputs (as benchmarks/_baselines.py's gemm-floor): (forward s, backward s)."""
    clock = time.perf_counter
    t0 = clock()
    for layer, a, z in zip(params, cache.inputs, cache.zs, strict=True):
        np.matmul(a, layer.W, out=z)
    t1 = clock()
    for l in range(len(params) - 1, -1, -1):
        dz = cache.zs[l]
        np.matmul(cache.inputs[l].T, dz, out=_OUT.setdefault(("dW", l), np.empty_like(
            params[l].W)))
        if l > 0:
            np.matmul(dz, params[l].W.T, out=_OUT.setdefault(("da", l), np.empty_like(
                cache.inputs[l])))
    return t1 - t0, clock() - t1


_OUT: dict = {}


def epoch_pieces(net, opt, params, state, x, y, order, batch_size):
    """Seconds spent in each piece over one epoch; returns (times, params, state).

    Each step also runs its forward and backward matrix products alone, right after
    the step, on copies of the same operands (the "GEMMs" rows)."""
    times = dict.fromkeys(PIECES + GEMMS, 0.0)
    masks = (None,) * (net.n_layers - 1)
    clock = time.perf_counter
    for start in range(0, len(order) - batch_size + 1, batch_size):
        t0 = clock()
        i = order[start:start + batch_size]
        xb, yb = x[i], y[i]
        t1 = clock()
        cache = mlp.apply(net, params, xb, masks)
        t2 = clock()
        loss = mlp.loss_from_cache(net, cache, yb)
        t3 = clock()
        grads = mlp.backward(net, params, cache, yb)
        t4 = clock()
        new_params, state = opt.update(params, grads, state)
        t5 = clock()
        float(loss), float(step.n_correct(net, cache.out, yb))
        t6 = clock()
        scratch = cache._replace(zs=tuple(z.copy() for z in cache.zs))
        fwd, bwd = _gemms(params, xb, scratch)
        params = new_params
        for name, dt in zip(PIECES + GEMMS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4,
                                             t6 - t5, fwd, bwd), strict=True):
            times[name] += dt
    return times, params, state


def measure(sizes: tuple[int, ...], batch_size: int = 128, samples: int = 60_000,
            repeats: int = 5) -> dict:
    """Median seconds per epoch of every piece over ``repeats`` epochs (after a warm-up)."""
    rng = np.random.default_rng(0)
    x = rng.random((samples, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], samples)
    net = funcnn.MLP(sizes)
    opt = funcnn.optim.adam(1e-3)
    params = funcnn.init_params(net, 0)
    state = opt.init(params)
    runs = {name: [] for name in (*PIECES, "total", "optimizer alone", *GEMMS)}
    for r in range(repeats + 1):
        order = rng.permutation(samples)
        with funcnn.flush_denormals():  # as fit does
            times, params, state = epoch_pieces(net, opt, params, state, x, y, order,
                                                batch_size)
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


def targets(seconds: dict) -> list[tuple[str, str, bool]]:
    """``(target, measured, met)``: forward and backward against their own products."""
    out = []
    for piece, gemm in (("forward", "forward GEMMs"), ("backward", "backward GEMMs")):
        ratio = seconds[piece] / seconds[gemm]
        out.append((f"NumPy {piece} <= {TARGET} x its own GEMMs", f"{ratio:.2f} x",
                    ratio <= TARGET))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="784,256,128,10")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=60_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    seconds = measure(sizes, args.batch_size, args.samples, args.repeats)
    n_params = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:], strict=True))
    print(f"sizes {sizes}, batch {args.batch_size}, {args.samples} samples, "
          f"{n_params} parameters; median of {args.repeats} epochs, seconds per epoch")
    for name, value in seconds.items():
        print(f"  {name:16s} {value:7.3f}")
    print("\ntargets")
    for label, measured, met in targets(seconds):
        print(f"  {label:40s} {measured:8s} {'met' if met else 'NOT met'}")
    return {"seconds": seconds, "targets": targets(seconds)}


if __name__ == "__main__":
    main()
