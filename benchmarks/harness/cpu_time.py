"""CPU seconds of an epoch on one thread: the NumPy contenders measured where the wall clock
cannot be trusted (a machine shared with other work).

Every thread pool is held to one thread (OpenBLAS through threadpoolctl, torch through
``torch.set_num_threads(1)`` after its build), and each epoch is timed with
``time.process_time``: the CPU seconds this process ran, which other processes' load
changes far less than the wall clock (they still share caches and memory bandwidth).
Contenders run interleaved, one epoch each per round; the ratios divide by the one-thread
``gemm-floor`` of the same run. On an idle machine ``mlp_epoch.py`` is the measurement;
this one says what the NumPy paths cost on one core when it is not idle.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from threadpoolctl import threadpool_limits

from .config import FLOOR, MAIN, WIDE, Config
from .contenders import CONTENDERS
from .data import load_data

__all__ = ["NAMES", "cpu_time_main", "measure"]

NAMES = (FLOOR, "funcnn-numpy", "funcnn-numpy-fused", "torch-eager-ftz")


def measure(cfg: Config, names=NAMES) -> dict:
    """``{name: {"cpu_s": [...], "wall_s": [...]}}`` of ``cfg.repeats`` epochs after a
    warm-up; a contender that cannot be built is ``{"skipped": reason}``."""
    x, y = load_data(cfg, None)
    built, out = {}, {}
    with threadpool_limits(1):
        for name in names:
            try:
                built[name] = CONTENDERS[name](cfg, x, y)
            except ImportError as e:
                out[name] = {"skipped": str(e)}
                continue
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(1)
            built[name].epoch(0)
            out[name] = {"cpu_s": [], "wall_s": []}
        for r in range(cfg.repeats):
            for name, c in built.items():
                cpu, wall = time.process_time(), time.perf_counter()
                c.epoch(r + 1)
                out[name]["cpu_s"].append(time.process_time() - cpu)
                out[name]["wall_s"].append(time.perf_counter() - wall)
    return out


def cpu_time_main(argv: list[str] | None = None) -> dict:
    """``benchmarks/numpy_cpu_time.py``: the table of :func:`measure` per configuration."""
    p = argparse.ArgumentParser(description="CPU seconds of a one-thread epoch, NumPy paths.")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samples", type=int, default=12800)
    p.add_argument("--wide", action="store_true", help="also the two wide configurations")
    args = p.parse_args(argv)
    configs = [MAIN] + (WIDE if args.wide else [])
    report = {"load_before": os.getloadavg(), "configs": {}}
    for c in configs:
        cfg = Config(**{**c, "dtype": "float32", "samples": args.samples,
                        "repeats": args.repeats})
        result = measure(cfg)
        report["configs"][cfg.name] = result
        floor = statistics.median(result[FLOOR]["cpu_s"])
        print(f"\n[{cfg.name}] {'-'.join(map(str, cfg.sizes))}, {cfg.activation}, "
              f"{cfg.optimizer}, {cfg.samples} samples; one thread, CPU s per epoch")
        print(f"{'contender':20} {'median':>8} {'min':>8} {'x floor':>8} {'wall median':>12}")
        for name, r in result.items():
            if "skipped" in r:
                print(f"{name:20} skipped: {r['skipped']}")
                continue
            med = statistics.median(r["cpu_s"])
            print(f"{name:20} {med:8.3f} {min(r['cpu_s']):8.3f} {med / floor:8.2f} "
                  f"{statistics.median(r['wall_s']):12.3f}")
    report["load_after"] = os.getloadavg()
    print(f"\nload average {report['load_before'][0]:.1f} before, "
          f"{report['load_after'][0]:.1f} after")
    return report
