"""What a call of ``fit`` costs on jax beyond its training: ``fit(epochs=1)`` on 256 rows
(two steps of 128) against the same two steps of a jitted ``make_train_step``, in one
process, medians of interleaved calls. The difference is fit's per-call overhead: its
checks of the data, the host-side row order and keys, the finite check after the epoch.

    python benchmarks/fit_overhead.py [--calls 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args(argv)
    import jax

    import funcnn

    rng = np.random.default_rng(0)
    net = funcnn.MLP((784, 256, 128, 10))
    x = jax.device_put(rng.normal(size=(256, 784)).astype(np.float32))
    y = jax.device_put(rng.integers(0, 10, 256).astype(np.int32))
    opt = funcnn.optim.adam(1e-3)
    params = funcnn.init_params(net, 0, backend="jax")
    opt_state = opt.init(params)
    step = jax.jit(funcnn.make_train_step(net, opt))

    def by_fit(i):
        return funcnn.fit(net, params, opt, x, y, epochs=1, batch_size=128, key=i,
                          opt_state=opt_state, progress=False)[0]

    def by_step(i):
        p, s = params, opt_state
        for j in range(2):
            p, s, _ = step(p, s, x[128 * j:128 * (j + 1)], y[128 * j:128 * (j + 1)])
        return p

    times: dict = {"fit": [], "step": []}
    for i in range(args.calls + 3):
        for name, run in (("fit", by_fit), ("step", by_step)):
            t = time.perf_counter()
            jax.block_until_ready(run(i))
            if i >= 3:  # the first calls compile
                times[name].append(time.perf_counter() - t)
    fit, steps = (statistics.median(times[k]) * 1e3 for k in ("fit", "step"))
    print(f"load average {os.getloadavg()[0]:.1f}; medians of {args.calls} calls each")
    print(f"fit(epochs=1), 256 rows:          {fit:7.2f} ms")
    print(f"2 jitted make_train_step calls:   {steps:7.2f} ms")
    print(f"fit's per-call overhead:          {fit - steps:7.2f} ms")


if __name__ == "__main__":
    main()
