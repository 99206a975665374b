"""How an epoch is timed: a pause before it, warm-ups, interleaved rounds, medians, and
the peak memory of an epoch."""

from __future__ import annotations

import statistics
import time
import traceback
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np

from .config import FLOOR, Config, Contender

__all__ = ["SETTLE_S", "failure", "peak_rss_growth", "peak_traced", "run_config", "timed"]

T = TypeVar("T")
Builder = Callable[[Config, np.ndarray, np.ndarray], Contender]

SETTLE_S = 0.3  # OpenBLAS's and torch's idle threads spin ~0.1 s after their last call


def timed(epoch: Callable[[int], T], i: int) -> tuple[float, T]:
    """Seconds of one epoch (and its last loss), after a pause in which the thread pools
    of the contender before have gone to sleep: a spinning pool takes the cores from
    whichever contender comes next (a jax epoch after a NumPy one ran ~10 % slower)."""
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    loss = epoch(i)
    return time.perf_counter() - start, loss


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_rss_growth(run: Callable[[], T]) -> tuple[int | None, T]:
    """``run()``'s result and the bytes by which the resident set peaked above its size before.

    Resets the kernel's high-water mark (``VmHWM``) through ``/proc/self/clear_refs``
    first; the bytes are ``None`` where that is not possible.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
    except (OSError, KeyError):
        return None, run()
    result = run()
    return max(0, _status_kib("VmHWM") - before) * 1024, result


def peak_traced(run: Callable[[], object]) -> int:
    """Peak bytes allocated through tracemalloc (NumPy reports its buffers) during ``run()``."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def failure(e: Exception, prefix: str = "") -> str:
    """The first line of an exception, as a skipped row's reason."""
    return f"{prefix}{type(e).__name__}: {e}".splitlines()[0][:160]


def run_config(cfg: Config, builders: dict[str, Builder], x: np.ndarray, y: np.ndarray,
               budget: float) -> list[dict]:
    """Rows of results, one per contender of ``builders`` (name -> ``build_*``), on ``cfg``.

    Every contender is built and warmed up first (``first_epoch_s``, compilation included
    for jax); then the timed epochs run in rounds, one epoch of each contender per round,
    so that load from outside falls on all of them alike. A contender sits out further
    rounds once its next epoch would take its timed epochs past ``budget`` seconds. A
    contender that cannot be built (a missing library) or fails is a row with ``skipped``.
    ``ratio`` is the median over the ``gemm-floor`` median.
    """
    rows = {name: {"name": name} for name in builders}
    live: dict[str, Contender] = {}
    for name, build in builders.items():
        print(f"[{cfg.name}] warm-up {name} ...", end=" ", flush=True)
        try:
            c = build(cfg, x, y)
        except Exception as e:  # a missing library or a funcnn API that is not there yet
            rows[name]["skipped"] = failure(e)
        else:
            try:
                rows[name].update(first_epoch_s=timed(c.epoch, 0)[0], times_s=[], peak_bytes=None)
                live[name] = c
            except Exception as e:
                traceback.print_exc()
                rows[name]["skipped"] = failure(e, "failed: ")
        print(rows[name].get("skipped") or f"{rows[name]['first_epoch_s']:.3f} s", flush=True)

    def run(name: str, measure: Callable) -> None:
        try:
            measure(rows[name], live[name])
        except Exception as e:
            traceback.print_exc()
            rows[name] = {"name": name, "skipped": failure(e, "failed: ")}
            del live[name]

    def timed_epoch(row: dict, c: Contender) -> None:
        epoch = partial(timed, c.epoch, len(row["times_s"]) + 1)
        if c.memory == "rss" and not row["times_s"]:  # free to measure: the first timed epoch
            row["peak_bytes"], (t, row["last_loss"]) = peak_rss_growth(epoch)
        else:
            t, row["last_loss"] = epoch()
        row["times_s"].append(t)

    def traced_epoch(row: dict, c: Contender) -> None:  # tracing slows allocation: not timed
        row["peak_bytes"] = peak_traced(partial(c.epoch, len(row["times_s"]) + 1))

    for r in range(cfg.repeats):
        print(f"[{cfg.name}] round {r + 1}/{cfg.repeats}:", end="", flush=True)
        for name in list(live):
            times = rows[name]["times_s"]
            if not times or sum(times) + times[-1] <= budget:
                run(name, timed_epoch)
                print(f" {name} {rows[name].get('times_s', [0])[-1]:.3f}", end="", flush=True)
        print()
    for name, c in list(live.items()):
        if c.memory == "tracemalloc":
            run(name, traced_epoch)
    for name, c in live.items():
        row, times = rows[name], rows[name]["times_s"]
        note = c.note
        if len(times) < cfg.repeats:
            note = f"{len(times)}/{cfg.repeats} repeats (budget {budget:g} s); {note}"
        row.update(
            dtype=c.dtype() if callable(c.dtype) else c.dtype,
            steps=c.steps,
            median_s=statistics.median(times),
            min_s=min(times),
            repeats=len(times),
            memory_kind=c.memory,
            data_params_bytes=c.nbytes,
            note=note.strip("; "),
        )
    floor = rows.get(FLOOR, {}).get("median_s")
    for row in rows.values():
        row["ratio"] = row["median_s"] / floor if floor and "median_s" in row else None
    return list(rows.values())
