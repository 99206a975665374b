"""The comparisons a run checks: ``(what, measured, met)`` rows, ``met`` None for context.

They guard against regressions; docs/performance.md explains what limits each path.
"""

from __future__ import annotations

from .config import FLOOR, FLOORS

__all__ = ["BREAKDOWN_LIMIT", "breakdown_targets", "compile_targets", "main_targets",
           "wide_targets"]

Target = tuple[str, str, bool | None]
BREAKDOWN_LIMIT = 1.2  # NumPy forward and backward each within 1.2x their own matrix products
PER_EXAMPLE_PAIRS = (("pe-norms", "pe-plain"), ("pe-clip", "pe-plain"), ("pe-dp", "pe-plain"),
                     ("vmap-grad-norms", "pe-plain"), ("vmap-grad-dp", "pe-plain"),
                     ("vmap-grad-norms", "pe-norms"), ("vmap-grad-dp", "pe-dp"),
                     ("pe-numpy-dp", "pe-numpy-plain"))


def main_targets(rows: list[dict]) -> list[Target]:
    """The targets on the main configuration's rows; ``met`` is None for context rows and
    when a contender is missing."""
    by = {r["name"]: r for r in rows if "median_s" in r}

    def med(name):
        return by[name]["median_s"] if name in by else None

    def ratio(a, b, limit, label, key="median_s"):
        x, y = by.get(a, {}).get(key), by.get(b, {}).get(key)
        if x is None or y is None:
            return (label, "not measured", None)
        return (label, f"{x / y:.2f} x", None if limit is None else x / y <= limit)

    out = [
        ratio("funcnn-jax-scan", "jax-scan-ref", 1.2,
              "first funcnn-jax-scan epoch <= 1.2 x jax-scan-ref's", "first_epoch_s"),
        ratio("funcnn-jax-scan", "jax-gemm-floor", 1.25,
              "funcnn-jax-scan <= 1.25 x jax-gemm-floor"),
        ratio("funcnn-numpy", FLOOR, 2.0, "funcnn-numpy <= 2.0 x gemm-floor"),
        ratio("funcnn-numpy", "torch-eager", 0.6, "funcnn-numpy <= 0.6 x torch-eager"),
        ratio("funcnn-numpy", "torch-eager-ftz", None,
              "(context) funcnn-numpy vs torch-eager-ftz"),
        ratio("funcnn-jax-scan", FLOOR, 1.3, "funcnn-jax-scan <= 1.3 x gemm-floor"),
        ratio("funcnn-jax-scan", "funcnn-jax-step", 1.0, "funcnn-jax-scan <= funcnn-jax-step"),
        ratio("funcnn-jax-scan", "jax-step-ref", 1.0, "funcnn-jax-scan <= jax-step-ref"),
        ratio("funcnn-numpy", "sklearn", 0.6, "funcnn-numpy <= 0.6 x sklearn"),
    ]
    numpy_row = by.get("funcnn-numpy", {})
    if numpy_row.get("peak_bytes") is not None:
        peak, held = numpy_row["peak_bytes"], numpy_row["data_params_bytes"]
        out.append(("funcnn-numpy peak memory < 2 x (data + params)",
                    f"{peak / 2**20:.1f} MB vs {held / 2**20:.1f} MB", peak < 2 * held))
    if med("jax-gemm-floor") is not None and med(FLOOR) is not None:
        out.append(("(context) XLA's matmuls alone vs gemm-floor",
                    f"{med('jax-gemm-floor') / med(FLOOR):.2f} x", None))
    for name, base in PER_EXAMPLE_PAIRS:
        if med(name) is not None and med(base) is not None:
            out.append((f"(context) {name} vs {base}", f"{med(name) / med(base):.2f} x", None))
    return out


def wide_targets(rows: list[dict]) -> list[Target]:
    """On a wide configuration: funcnn-jax-scan faster than every contender but the floors."""
    by = {r["name"]: r["median_s"] for r in rows if "median_s" in r}
    if "funcnn-jax-scan" not in by:
        return [("funcnn-jax-scan faster than every other contender", "not measured", None)]
    ours = by["funcnn-jax-scan"]
    return [(f"funcnn-jax-scan < {name}", f"{ours:.3f} s vs {t:.3f} s", ours < t)
            for name, t in sorted(by.items(), key=lambda kv: kv[1])
            if name not in (*FLOORS, "funcnn-jax-scan")]


def breakdown_targets(seconds: dict) -> list[Target]:
    """The NumPy step's forward and backward passes against their own matrix products
    (``seconds`` of :func:`harness.breakdown.measure`)."""
    out = []
    for piece, gemm in (("forward", "forward GEMMs"), ("backward", "backward GEMMs")):
        ratio = seconds[piece] / seconds[gemm]
        out.append((f"NumPy {piece} <= {BREAKDOWN_LIMIT} x its own GEMMs", f"{ratio:.2f} x",
                    ratio <= BREAKDOWN_LIMIT))
    return out


def compile_targets(first: dict) -> list[Target]:
    """The first jax epoch of ``fit`` against jax-scan-ref's, and with the compilation cache
    (``first`` of :func:`harness.compile_time.measure`)."""
    ours, ref = first["funcnn fit"]["first_s"], first["jax-scan-ref"]["first_s"]
    second = first["fit, cache on, 2nd process"]
    return [
        ("first funcnn epoch <= 1.2 x jax-scan-ref's", f"{ours / ref:.2f} x", ours <= 1.2 * ref),
        ("cache on: 2nd process's first epoch <= 1.5 x steady",
         f"{second['first_s'] / second['steady_s']:.2f} x",
         second["first_s"] <= 1.5 * second["steady_s"]),
    ]
