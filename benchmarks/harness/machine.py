"""The machine a run measured: CPU model and AVX-512, cores, BLAS and thread pools,
library versions, load."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import numpy as np

__all__ = ["machine"]

LIBRARIES = ("numpy", "jax", "jaxlib", "torch", "scikit-learn")


def _cpuinfo() -> tuple[str | None, bool | None]:
    """The CPU's model name and whether it has AVX-512 (``avx512f``), from /proc/cpuinfo."""
    model = flags = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = value.split()
    except OSError:
        pass
    return model, None if flags is None else "avx512f" in flags


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _numpy_blas() -> str | None:
    """The BLAS NumPy was built against, e.g. ``scipy-openblas 0.3.31``."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (TypeError, KeyError):
        return None
    return " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k))


def _threadpools() -> list[dict] | None:
    """The native thread pools loaded in this process (threadpoolctl), or None without it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keys = ("internal_api", "prefix", "version", "num_threads", "architecture")
    return [{k: p.get(k) for k in keys} for p in threadpool_info()]


def machine() -> dict:
    """The description stored with a run. Call it after the runs, so that every thread pool
    a contender loaded shows; ``load_average`` is the 1, 5 and 15 minute load then."""
    model, avx512 = _cpuinfo()
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "avx512": avx512,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in LIBRARIES},
        "numpy_blas": _numpy_blas(),
        "threadpools": _threadpools(),
        "load_average": os.getloadavg(),
    }
