"""The benchmark harness: what ``benchmarks/*.py`` run, one concept per module.

The scripts in ``benchmarks/`` are thin entry points into :mod:`harness.cli`. The modules,
each importing only from those listed before it (``tests/test_benchmarks.py`` checks that
there is no cycle and no import inside a function but of an optional package):

- ``config``: ``Config`` (one configuration), ``Contender`` (what a contender gives the
  timer) and the named configurations (main, small, tiny, wide);
- ``data``: the training rows, the per-epoch order every contender shares, initial
  weights, the bytes a contender holds;
- ``timing``: one timed epoch after a 0.3 s pause, warm-ups, interleaved rounds, medians,
  peak memory;
- ``machine``: the CPU model, AVX-512, BLAS and thread pools, versions, load;
- ``contenders``: one module per family (GEMM floors, a naive NumPy class, PyTorch,
  scikit-learn, hand-written JAX, funcnn, per-example gradients) and the registry;
- ``cost``: FLOPs and bytes of one step, the copy bandwidth;
- ``targets``: the comparisons checked after a run;
- ``report``: text tables, Markdown, JSON; ``plot``: the bar chart;
- ``parallel``, ``compile_time``, ``breakdown``, ``adam_forms``, ``numpy_first``,
  ``cpu_time``: the
  measurements that run in subprocesses or apart from the epoch table (``numpy_first``: a
  new process's first NumPy epoch, pure and fused, and the fused path's targets);
- ``cli``: the command lines of every script.

Importing the package puts the repository root first on ``sys.path``, so that the working
tree's funcnn is the one measured.
"""

import os
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent  # the folder of the entry scripts
ROOT = BENCHMARKS.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["BENCHMARKS", "ROOT", "child_env"]


def child_env(extra: dict | None = None) -> dict:
    """The environment of a child process: this one's with ``extra``, and the repository
    first on ``PYTHONPATH``, so that the child measures the same funcnn."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **(extra or {}), "PYTHONPATH": path}
