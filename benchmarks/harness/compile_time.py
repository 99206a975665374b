"""Where the first jax epoch of ``funcnn.fit`` spends its time, and what the compilation
cache saves; every measurement in a fresh Python process (jax keeps compiled programs for
the life of a process), one after the other:

- ``stages``: ``jax.stages`` timings of one epoch program, ``trace`` (Python to jaxpr),
  ``lower`` (to StableHLO) and ``compile`` (XLA), with the size of the StableHLO text and
  of XLA's optimized HLO, for funcnn's epoch program (with the short last batch that
  ``fit`` trains on, padded into the scan, and without one) and for ``jax-scan-ref``'s
  (full batches only);
- ``first``: the first epoch (compile included) and a steady epoch of ``fit`` and of
  ``jax-scan-ref``, with how many programs jax compiled during the first epoch;
- ``cache``: the same for ``fit`` with ``funcnn.train.enable_compilation_cache(dir)``
  called first (on an empty directory), in two processes one after the other: the
  second one reads what the first one wrote.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

from funcnn import train

from . import BENCHMARKS, child_env
from .config import MAIN, Config
from .contenders.funcnn_fit import build_funcnn_jax_scan, fit_epoch_inputs
from .contenders.jax_refs import build_jax_scan_ref, jax_reference, scan_ref_program
from .data import load_data
from .targets import compile_targets

__all__ = ["CACHE_ENV", "CHILD", "FIRST", "STAGES", "child", "config", "measure"]

CHILD = "--child"  # the entry script's hidden flag: run one measurement in this process
CACHE_ENV = "FUNCNN_COMPILATION_CACHE"  # a child enables the compilation cache in this folder
STAGES = (("funcnn", "funcnn fit (full + padded short batch)"),
          ("funcnn-no-tail", "funcnn fit (full batches only)"),
          ("jax-scan-ref", "jax-scan-ref (full batches only)"))
FIRST = (("funcnn", "funcnn fit", False), ("jax-scan-ref", "jax-scan-ref", False),
         ("funcnn", "fit, cache on, 1st process", True),
         ("funcnn", "fit, cache on, 2nd process", True))


def config(sizes: tuple[int, ...] | None, batch_size: int, samples: int,
           activation: str = "relu", optimizer: str = "adam") -> Config:
    """The configuration measured; ``sizes`` None is the main configuration's."""
    sizes = sizes or MAIN["sizes"]
    return Config("main" if sizes == MAIN["sizes"] else "custom", sizes, batch_size,
                  "float32", samples, 3, activation=activation, optimizer=optimizer)


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
    import jax.numpy as jnp

    x, y = load_data(cfg, None)
    full = cfg.samples // cfg.batch_size * cfg.batch_size
    if which == "jax-scan-ref":
        step, params, state, xd, yd, _ = jax_reference(cfg, x, y)
        program = scan_ref_program(step, cfg.samples // cfg.batch_size, cfg.batch_size)
        return _stages(program, params, state, xd, yd, jnp.arange(full))
    rows = cfg.samples if which == "funcnn" else full
    args, statics, _ = fit_epoch_inputs(cfg, x[:rows], y[:rows])
    return _stages(train._jax_programs()[0], *args, **statics)


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


def child(mode: str, which: str, cfg: Config) -> dict:
    """One measurement (``mode`` "stages" or "first") in this fresh process, with the
    compilation cache on first when the parent asked for it."""
    if os.environ.get(CACHE_ENV):  # before jax computes anything
        train.enable_compilation_cache(os.environ[CACHE_ENV])
    return (child_stages if mode == "stages" else child_first)(cfg, which)


def _run_child(cfg: Config, mode: str, which: str, env: dict | None = None) -> dict:
    command = [sys.executable, str(BENCHMARKS / "compile_time.py"), CHILD, mode, which,
               "--sizes", ",".join(map(str, cfg.sizes)), "--samples", str(cfg.samples),
               "--batch-size", str(cfg.batch_size), "--activation", cfg.activation,
               "--optimizer", cfg.optimizer]
    env = {**child_env(env), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(cfg: Config) -> dict:
    """Every measurement, each in a fresh process: ``{"config", "load_before", "stages",
    "first", "targets"}``."""
    report: dict = {"config": cfg._asdict(), "load_before": os.getloadavg(), "stages": {}}
    for which, label in STAGES:
        print(f"[compile] stages of {label} ...", flush=True)
        report["stages"][which] = _run_child(cfg, "stages", which)
    report["first"] = {}
    with tempfile.TemporaryDirectory() as cache:
        for which, label, cached in FIRST:
            print(f"[compile] first epoch, {label} ...", flush=True)
            env = {CACHE_ENV: cache} if cached else None
            report["first"][label] = _run_child(cfg, "first", which, env)
    report["targets"] = compile_targets(report["first"])
    return report
