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
from funcnn import mlp, train  # noqa: E402

PIECES = ("gather", "forward", "loss", "backward", "optimizer", "metrics")


def epoch_pieces(net, opt, params, state, x, y, order, batch_size):
    """Seconds spent in each piece over one epoch; returns (times, params, state)."""
    times = dict.fromkeys(PIECES, 0.0)
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
        params, state = opt.update(params, grads, state)
        t5 = clock()
        float(loss), float(train._n_correct(net, cache.out, yb))
        t6 = clock()
        for name, dt in zip(PIECES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5),
                            strict=True):
            times[name] += dt
    return times, params, state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="784,256,128,10")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=60_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    rng = np.random.default_rng(0)
    x = rng.random((args.samples, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], args.samples)
    net = funcnn.MLP(sizes)
    opt = funcnn.optim.adam(1e-3)
    params = funcnn.init_params(net, 0)
    state = opt.init(params)
    runs = {name: [] for name in (*PIECES, "total", "optimizer alone")}
    for r in range(args.repeats + 1):
        order = rng.permutation(args.samples)
        times, params, state = epoch_pieces(net, opt, params, state, x, y, order,
                                            args.batch_size)
        t = time.perf_counter()
        q, s = params, state
        for _ in range(args.samples // args.batch_size):  # same grads each time: cache-warm
            q, s = opt.update(q, params, s)
        alone = time.perf_counter() - t
        if r == 0:
            continue  # warm-up
        for name, v in times.items():
            runs[name].append(v)
        runs["total"].append(sum(times.values()))
        runs["optimizer alone"].append(alone)
    n_params = sum(leaf.size for leaf in funcnn.tree.tree_leaves(params))
    print(f"sizes {sizes}, batch {args.batch_size}, {args.samples} samples, "
          f"{n_params} parameters; median of {args.repeats} epochs, seconds per epoch")
    for name, values in runs.items():
        print(f"  {name:16s} {statistics.median(values):7.3f}")


if __name__ == "__main__":
    main()
