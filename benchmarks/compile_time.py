"""Where the first jax epoch of ``funcnn.fit`` spends its time, and what the cache saves.

    python benchmarks/compile_time.py                 # main config: stages, first epochs, cache
    python benchmarks/compile_time.py --sizes 784,1024,1024,10 --json out.json

Every measurement runs in a fresh Python process (jax keeps compiled programs for the
life of a process), one after the other:

- ``stages``: ``jax.stages`` timings of one epoch program, ``trace`` (Python to jaxpr),
  ``lower`` (to StableHLO) and ``compile`` (XLA), with the size of the StableHLO text and
  of XLA's optimized HLO, for funcnn's epoch program (with the short last batch that
  ``fit`` trains on, padded into the scan, and without one) and for ``jax-scan-ref``'s
  (full batches only).
- ``first``: the first epoch (compile included) and a steady epoch of ``fit`` and of
  ``jax-scan-ref``, with how many programs jax compiled during the first epoch.
- ``cache``: the same for ``fit`` with ``funcnn.train.enable_compilation_cache(dir)``
  called first (on an empty directory), in two processes one after the other: the
  second one reads what the first one wrote.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _baselines import Config, _jax_reference, build_jax_scan_ref, scan_ref_program
from mlp_epoch import MAIN, ROOT, build_funcnn_jax_scan, load_data

CHILD = "--child"


def _config(args) -> Config:
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else MAIN["sizes"]
    return Config("main" if sizes == MAIN["sizes"] else "custom", sizes, args.batch_size,
                  "float32", args.samples, 3, activation=args.activation,
                  optimizer=args.optimizer)


def _hlo_size(text: str) -> int:
    """Instructions of an HLO or StableHLO module: its lines that assign a value."""
    return sum(" = " in line for line in text.splitlines())


def _stages(jitted, *args, **kwargs) -> dict:
    t0 = time.perf_counter()
    traced = jitted.trace(*args, **kwargs)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    return {"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2,
            "stablehlo_ops": _hlo_size(lowered.as_text()),
            "optimized_hlo_ops": _hlo_size(compiled.as_text())}


def child_stages(cfg: Config, which: str) -> dict:
    """jax.stages timings of one epoch program, in this (fresh) process."""
    import jax
    import jax.numpy as jnp

    import funcnn
    from funcnn import batching, train

    x, y = load_data(cfg, None)
    full = cfg.samples // cfg.batch_size * cfg.batch_size
    if which == "jax-scan-ref":
        step, params, state, xd, yd, _ = _jax_reference(cfg, x, y)
        program = scan_ref_program(step, cfg.samples // cfg.batch_size, cfg.batch_size)
        return _stages(program, params, state, xd, yd, jnp.arange(full))
    rows = cfg.samples if which == "funcnn" else full
    net = funcnn.MLP(cfg.sizes, hidden=cfg.activation, output="softmax")
    params = funcnn.init_params(net, cfg.seed, backend="jax")
    opt = (funcnn.optim.sgd if cfg.optimizer == "sgd" else funcnn.optim.adam)(lr=cfg.lr)
    xd, yd = jax.device_put(x), jax.device_put(y.astype(np.int32))
    split = batching.split_batches(rows, cfg.batch_size, False)
    epoch = train._jax_programs()[0]
    order, tail = train._padded(np.arange(rows, dtype=np.int32), split)  # as fit does
    keys = funcnn.random.split(funcnn.random.key(cfg.seed), split.full + 1)
    static, hyper = funcnn.optim.split_hyper(opt)
    return _stages(epoch, params, opt.init(params), xd[:rows], yd[:rows], order, keys, hyper,
                   net=net, optimizer=static, grad_fn=funcnn.step.backward_grad,
                   batch_size=split.size, tail=tail, mesh=None)


def child_first(cfg: Config, which: str) -> dict:
    """The first epoch (compile included), programs compiled in it, and a steady epoch."""
    import jax

    x, y = load_data(cfg, None)
    build = build_funcnn_jax_scan if which == "funcnn" else build_jax_scan_ref
    contender = build(cfg, x, y)
    compiles = []

    class Log(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Finished XLA compilation"):
                compiles.append(float(message.split()[-2]))

    logging.getLogger("jax").addHandler(Log())
    with jax.log_compiles(True):
        t = time.perf_counter()
        contender.epoch(0)
        first = time.perf_counter() - t
    steady = []
    for i in range(1, 4):
        t = time.perf_counter()
        contender.epoch(i)
        steady.append(time.perf_counter() - t)
    return {"first_s": first, "steady_s": statistics.median(steady),
            "programs_compiled": len(compiles), "xla_compile_s": sum(compiles)}


def _run_child(args, mode: str, which: str, env: dict | None = None) -> dict:
    command = [sys.executable, __file__, CHILD, mode, which, "--samples", str(args.samples),
               "--batch-size", str(args.batch_size), "--activation", args.activation,
               "--optimizer", args.optimizer]
    if args.sizes:
        command += ["--sizes", args.sizes]
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", help="layer sizes, e.g. 784,1024,1024,10 (784-256-128-10)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=60000)
    p.add_argument("--activation", default="relu", choices=("relu", "tanh"))
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(CHILD, nargs=2, metavar=("MODE", "WHICH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = _config(args)
    if args.child:
        mode, which = args.child
        if os.environ.get("FUNCNN_COMPILATION_CACHE"):  # before jax computes anything
            from funcnn.train import enable_compilation_cache

            enable_compilation_cache(os.environ["FUNCNN_COMPILATION_CACHE"])
        result = (child_stages if mode == "stages" else child_first)(cfg, which)
        print(json.dumps(result))
        return result

    report: dict = {"config": cfg._asdict(), "load_before": os.getloadavg()}
    print(f"{'-'.join(map(str, cfg.sizes))}, batch {cfg.batch_size}, {cfg.samples} samples, "
          f"{cfg.activation}, {cfg.optimizer}; every row a fresh process")
    print(f"\n{'epoch program':38} {'trace s':>8} {'lower s':>8} {'compile s':>9} "
          f"{'StableHLO ops':>13} {'optimized HLO ops':>17}")
    report["stages"] = {}
    for which, label in (("funcnn", "funcnn fit (full + padded short batch)"),
                         ("funcnn-no-tail", "funcnn fit (full batches only)"),
                         ("jax-scan-ref", "jax-scan-ref (full batches only)")):
        r = report["stages"][which] = _run_child(args, "stages", which)
        print(f"{label:38} {r['trace_s']:8.3f} {r['lower_s']:8.3f} {r['compile_s']:9.3f} "
              f"{r['stablehlo_ops']:13d} {r['optimized_hlo_ops']:17d}")

    print(f"\n{'first epoch':34} {'first s':>8} {'steady s':>8} {'programs':>9} "
          f"{'XLA compile s':>13}")
    rows = report["first"] = {}
    with tempfile.TemporaryDirectory() as cache:
        runs = (("funcnn", "funcnn fit", None), ("jax-scan-ref", "jax-scan-ref", None),
                ("funcnn", "fit, cache on, 1st process", cache),
                ("funcnn", "fit, cache on, 2nd process", cache))
        for which, label, cache_dir in runs:
            env = {"FUNCNN_COMPILATION_CACHE": cache_dir} if cache_dir else None
            r = rows[label] = _run_child(args, "first", which, env)
            print(f"{label:34} {r['first_s']:8.3f} {r['steady_s']:8.3f} "
                  f"{r['programs_compiled']:9d} {r['xla_compile_s']:13.3f}")
    ours, ref = rows["funcnn fit"]["first_s"], rows["jax-scan-ref"]["first_s"]
    second = rows["fit, cache on, 2nd process"]
    report["targets"] = [
        ("first funcnn epoch <= 1.2 x jax-scan-ref's", f"{ours / ref:.2f} x", ours <= 1.2 * ref),
        ("cache on: 2nd process's first epoch <= 1.5 x steady",
         f"{second['first_s'] / second['steady_s']:.2f} x",
         second["first_s"] <= 1.5 * second["steady_s"]),
    ]
    print("\ntargets")
    for label, measured, met in report["targets"]:
        print(f"  {label:54} {measured:10} {'met' if met else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
