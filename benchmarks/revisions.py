"""Before and after: fit's steady epoch of the main configuration in two checkouts of
funcnn, timed alternately in fresh processes, so that a change can be shown to cost
nothing (or what it costs) on this machine, in this run.

    python benchmarks/revisions.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 4] [--backends numpy,jax]

Each round runs each checkout once per backend in a child process (``PYTHONPATH`` set to
the checkout): 784-256-128-10 ReLU/softmax, Adam 1e-3, batch 128, float32, 60 000
synthetic MNIST-shaped rows, one warm-up epoch then 3 timed ones. NumPy uses one BLAS
thread and jax one intra-op thread, and both the process CPU time and the wall time are
reported: on a shared machine the CPU time is the steadier of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import funcnn
backend = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.normal(size=(60000, 784)).astype(np.float32)
y = rng.integers(0, 10, 60000)
net = funcnn.MLP((784, 256, 128, 10))
params = funcnn.init_params(net, 0, backend=backend)
opt = funcnn.optim.adam(1e-3)
if backend == "jax":
    x, y = funcnn.to_backend((x, y.astype(np.int32)), "jax")
state, out = None, []
for e in range(4):
    c0, w0 = time.process_time(), time.perf_counter()
    params, state, _ = funcnn.fit(net, params, opt, x, y, epochs=1, batch_size=128, key=e,
                                  opt_state=state, progress=False)
    if backend == "jax":
        import jax
        jax.block_until_ready(params)
    out.append((time.process_time() - c0, time.perf_counter() - w0))
print(json.dumps({"cpu": [o[0] for o in out[1:]], "wall": [o[1] for o in out[1:]]}))
"""


def run(checkout: str, backend: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout), "OPENBLAS_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, backend], capture_output=True,
                          text=True, env=env, cwd=os.path.abspath(checkout), check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--backends", default="numpy,jax")
    args = parser.parse_args(argv)
    times: dict = {}
    for _ in range(args.rounds):
        for backend in args.backends.split(","):
            for name in ("old", "new"):
                got = run(getattr(args, name), backend)
                for kind in ("cpu", "wall"):
                    times.setdefault((backend, name, kind), []).extend(got[kind])
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    for backend in args.backends.split(","):
        for kind in ("cpu", "wall"):
            old = statistics.median(times[(backend, "old", kind)])
            new = statistics.median(times[(backend, "new", kind)])
            n = len(times[(backend, "old", kind)])
            print(f"{backend:5s} {kind:4s}  old {old:.3f} s  new {new:.3f} s  "
                  f"new/old {new / old:.3f}  (medians of {n} epochs each)")


if __name__ == "__main__":
    main()
