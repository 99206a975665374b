"""The first NumPy epoch of ``funcnn.fit`` in a new process beside its steady epochs, pure
and with the fused numba loops, and the targets of the fused path.

Each row is a fresh Python process (numba keeps loaded kernels for the life of a process):

- ``pure``: ``FUNCNN_FUSED=0``, what runs without the extra;
- ``fused, cold cache``: numba's disk cache in an empty ``NUMBA_CACHE_DIR``, so the first
  epoch imports numba and compiles every kernel it calls (what a user's very first run
  pays, once per machine and funcnn version);
- ``fused, warm cache``: the same directory again: numba loads the kernels compiled by the
  row before (what every later process pays).

``import_s`` is ``import funcnn`` alone: it must not import numba.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from . import BENCHMARKS, child_env
from .config import FLOOR, Config

__all__ = ["ROWS", "fused_targets", "measure", "print_numpy_first"]

ROWS = ("pure", "fused, cold cache", "fused, warm cache")

_CHILD = """
import json, statistics, sys, time
t = time.perf_counter()
import funcnn
import_s = time.perf_counter() - t
numba_on_import = "numba" in sys.modules
sys.path.insert(0, sys.argv[1])
from harness.config import Config
from harness.contenders.funcnn_fit import build_funcnn_numpy
from harness.data import load_data
cfg = Config(**json.loads(sys.argv[2]))
x, y = load_data(cfg, None)
contender = build_funcnn_numpy(cfg, x, y)
times = []
for i in range(3):
    t = time.perf_counter()
    contender.epoch(i)
    times.append(time.perf_counter() - t)
print(json.dumps({"import_s": import_s, "numba_on_import": numba_on_import,
                  "first_s": times[0], "steady_s": statistics.median(times[1:]),
                  "fused": funcnn._fused.enabled()}))
"""


def _child(cfg: Config, env: dict) -> dict:
    command = [sys.executable, "-c", _CHILD, str(BENCHMARKS), json.dumps(cfg._asdict())]
    out = subprocess.run(command, env=child_env(env), check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(cfg: Config) -> dict:
    """``{row: {"import_s", "numba_on_import", "first_s", "steady_s", "fused"}}``, each row
    a new process (see the module docstring); fused rows are missing without numba."""
    report = {}
    with tempfile.TemporaryDirectory() as cache:
        for row in ROWS:
            print(f"[numpy first epoch] {row}, new process ...", flush=True)
            env = {"FUNCNN_FUSED": "0"} if row == "pure" else {"NUMBA_CACHE_DIR": cache}
            result = _child(cfg, env)
            if row == "pure" or result["fused"]:
                report[row] = result
    return report


def print_numpy_first(report: dict) -> None:
    print(f"\n{'NumPy fit, new process':24} {'import funcnn s':>14} {'first epoch s':>13} "
          f"{'steady s':>8} {'numba on import':>15}")
    for row, r in report.items():
        print(f"{row:24} {r['import_s']:14.3f} {r['first_s']:13.3f} {r['steady_s']:8.3f} "
              f"{r['numba_on_import']!s:>15}")


def fused_targets(rows: list[dict], first: dict | None = None) -> list[tuple]:
    """The fused path's targets on a configuration's rows (issue 19): fused <= 2.0 x the
    GEMM floor and faster than PyTorch eager; and the pure path's and a new process's
    first epoch for context."""
    by = {r["name"]: r["median_s"] for r in rows if "median_s" in r}
    fused = by.get("funcnn-numpy-fused")
    if fused is None:
        return [("funcnn-numpy-fused", "not measured", None)]
    out = [("funcnn-numpy-fused <= 2.0 x gemm-floor", f"{fused / by[FLOOR]:.2f} x",
            fused <= 2.0 * by[FLOOR])]
    for other in ("torch-eager", "torch-eager-ftz"):
        if other in by:
            out.append((f"funcnn-numpy-fused < {other}", f"{fused / by[other]:.2f} x",
                        fused < by[other]))
    if "funcnn-numpy" in by:
        out.append(("(context) funcnn-numpy-fused vs funcnn-numpy (pure)",
                    f"{fused / by['funcnn-numpy']:.2f} x", None))
    for row, r in (first or {}).items():
        out.append((f"(context) new process, {row}: first epoch vs steady",
                    f"{r['first_s']:.2f} s vs {r['steady_s']:.2f} s", None))
    return out
