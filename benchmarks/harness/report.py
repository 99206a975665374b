"""What a run prints and stores: text tables, Markdown (what docs/performance.md quotes)
and JSON. Every function reads rows or a saved report; none measures anything."""

from __future__ import annotations

import json
from pathlib import Path

from .config import FLOOR, Config
from .cost import step_cost

__all__ = ["config_of", "cost_table", "markdown", "print_adam_forms", "print_breakdown",
           "print_compile_time", "print_machine", "print_parallel_table", "print_table",
           "print_targets", "write_json"]


def config_of(entry: dict) -> Config:
    """The :class:`Config` of one configuration's entry of a report (sizes back to a tuple)."""
    return Config(**{**entry["config"], "sizes": tuple(entry["config"]["sizes"])})


def _title(cfg: Config) -> str:
    return f"{cfg.name}: {'-'.join(map(str, cfg.sizes))}, {cfg.activation}, {cfg.optimizer}"


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}MB"


# ---------------------------------------------------------------------------- the terminal


def print_machine(report: dict) -> None:
    """The machine of a run, and a warning when it was busy before the run."""
    m = report["machine"]
    avx512 = {True: ", AVX-512", False: ", no AVX-512", None: ""}[m.get("avx512")]
    print(f"CPU: {m['cpu']} ({m['cores']} cores, {m['usable_cores']} usable{avx512})")
    print(f"Python {m['python']} on {m['platform']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))
    if m.get("numpy_blas"):
        print(f"NumPy's BLAS: {m['numpy_blas']}")
    for p in m["threadpools"] or []:
        extra = " ".join(str(p[k]) for k in ("version", "architecture") if p[k])
        print(f"threads: {p['prefix']} ({p['internal_api']} {extra}): {p['num_threads']} threads")
    before, after = report["load_before"][0], m.get("load_average", (None,))[0]
    print(f"load average: {before:.2f} before the run"
          + ("" if after is None else f", {after:.2f} after it"))
    if before >= 1.0:
        print(f"warning: load average {before:.1f} before the run: other work competes for "
              "the cores and threaded BLAS on small matrices suffers most")


def print_table(cfg: Config, rows: list[dict]) -> None:
    """One configuration's rows: first epoch, median and min, ratio to the floor, memory."""
    sizes = "-".join(map(str, cfg.sizes))
    print(f"\n[{cfg.name}] {sizes}, batch {cfg.batch_size}, {cfg.samples} samples, {cfg.dtype}")
    head = ("contender", "dtype", "steps", "first_s", "median_s", "min_s", "x floor", "peak mem")
    fmt = "{:<16} {:<8} {:>6} {:>8} {:>9} {:>8} {:>8}  {:<32} {}"
    print(fmt.format(*head, "note"))
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:<16} skipped: {r['skipped']}")
            continue
        ratio = "n/a" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        if r["memory_kind"] == "tracemalloc":
            mem = f"{_mb(r['peak_bytes'])} (data+params {_mb(r['data_params_bytes'])})"
        else:
            mem = f"+{_mb(r['peak_bytes'])} RSS"
        first, median, least = (f"{r[k]:.3f}" for k in ("first_epoch_s", "median_s", "min_s"))
        cells = (r["name"], r["dtype"], r["steps"], first, median, least, ratio, mem, r["note"])
        print(fmt.format(*cells))


def print_parallel_table(cfg: Config, rows: list[dict]) -> None:
    sizes = "-".join(map(str, cfg.sizes))
    print(f"\n[{cfg.name}] data-parallel fit, {sizes}, batch {cfg.batch_size}, "
          f"{cfg.samples} samples, {cfg.dtype} (each setting in its own subprocess)")
    fmt = "{:<16} {:>7} {:>8} {:>9} {:>8} {:>13} {:>13}"
    print(fmt.format("setting", "devices", "first_s", "median_s", "min_s", "1 device med",
                     "x one device"))
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:<16} skipped: {r['skipped']}")
            continue
        print(fmt.format(r["name"], r["devices"], f"{r['first_epoch_s']:.3f}",
                         f"{r['median_s']:.3f}", f"{r['min_s']:.3f}",
                         f"{r['one_device_median_s']:.3f}", f"{r['ratio']:.2f}"))


def print_targets(title: str, found: list[tuple]) -> None:
    print(f"\ntargets, {title}")
    for label, measured, met in found:
        mark = {True: "met", False: "NOT met", None: ""}[met]
        print(f"  {label:54s} {measured:24s} {mark}")


def print_compile_time(report: dict, labels: dict[str, str]) -> None:
    """The tables of :func:`harness.compile_time.measure`; ``labels`` names its programs."""
    cfg = config_of(report)
    print(f"\n{'-'.join(map(str, cfg.sizes))}, batch {cfg.batch_size}, {cfg.samples} samples, "
          f"{cfg.activation}, {cfg.optimizer}; every row a fresh process")
    print(f"\n{'epoch program':38} {'trace s':>8} {'lower s':>8} {'compile s':>9} "
          f"{'StableHLO ops':>13} {'optimized HLO ops':>17}")
    for which, r in report["stages"].items():
        print(f"{labels.get(which, which):38} {r['trace_s']:8.3f} {r['lower_s']:8.3f} "
              f"{r['compile_s']:9.3f} {r['stablehlo_ops']:13d} {r['optimized_hlo_ops']:17d}")
    print(f"\n{'first epoch':34} {'first s':>8} {'steady s':>8} {'programs':>9} "
          f"{'XLA compile s':>13}")
    for label, r in report["first"].items():
        print(f"{label:34} {r['first_s']:8.3f} {r['steady_s']:8.3f} "
              f"{r['programs_compiled']:9d} {r['xla_compile_s']:13.3f}")


def print_breakdown(sizes: tuple[int, ...], batch_size: int, samples: int, repeats: int,
                    seconds: dict) -> None:
    """The pieces of :func:`harness.breakdown.measure`, seconds per epoch."""
    n_params = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:], strict=True))
    print(f"sizes {sizes}, batch {batch_size}, {samples} samples, "
          f"{n_params} parameters; median of {repeats} epochs, seconds per epoch")
    for name, value in seconds.items():
        print(f"  {name:16s} {value:7.3f}")


def print_adam_forms(sizes: tuple[int, ...], n_params: int, what: str, rounds: int,
                     ms: dict, base: str = "plain") -> None:
    """The medians of :func:`harness.adam_forms.measure` (``what`` was run in each round),
    and each over the ``base`` form's."""
    print(f"Adam on {n_params:,} float32 parameters ({'-'.join(map(str, sizes))}), "
          f"median of {rounds} rounds of {what}")
    for name, t in ms.items():
        print(f"  {name:10s} {t:6.3f} ms/step  {t / ms[base]:5.2f} x {base}")


def write_json(report: dict, path: str) -> None:
    Path(path).write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


# ---------------------------------------------------------------------------- Markdown


def markdown(report: dict) -> str:
    """The results of every configuration of a saved run as Markdown tables, fastest
    first, funcnn's rows in bold (what docs/performance.md quotes)."""
    out = []
    for entry in report["configs"]:
        if "results" not in entry:
            continue
        c = entry["config"]
        out.append(f"### {_title(config_of(entry))}, batch {c['batch_size']}, "
                   f"{c['samples']} rows\n")
        out.append("| contender | median s | min s | repeats | × GEMM floor (median) "
                   "| first epoch s |\n| --- | --- | --- | --- | --- | --- |")
        for r in sorted((r for r in entry["results"] if "median_s" in r),
                        key=lambda r: r["median_s"]):
            name = f"**{r['name']}**" if r["name"].startswith("funcnn") else r["name"]
            ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}"
            out.append(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['repeats']} "
                       f"| {ratio} | {r['first_epoch_s']:.2f} |")
        skipped = [f"{r['name']} ({r['skipped']})" for r in entry["results"] if "skipped" in r]
        if skipped:
            out.append("\nNot run: " + "; ".join(skipped) + ".")
        out.append("")
    return "\n".join(out)


def cost_table(report: dict) -> str:
    """A Markdown table of the cost model of every configuration in ``report`` (the JSON).

    Per step: the FLOPs and bytes of :func:`harness.cost.step_cost`; the measured GEMM
    floors (NumPy and XLA, with the GFLOP/s they reach); the element-wise bound, i.e. the
    optimizer's and the activations' bytes at the measured copy bandwidth; then what
    funcnn's paths cost above their floor.
    """
    bw = report.get("copy_bandwidth")
    head = ("config", "params", "GFLOP/step", "MB/step: weights+grads / optimizer / activations",
            "NumPy GEMM floor µs (GFLOP/s)", "XLA GEMM floor µs (GFLOP/s)",
            "element-wise bound µs", "funcnn-jax-scan µs (above XLA floor)",
            "funcnn-numpy µs (above NumPy floor)")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for entry in report["configs"]:
        if "results" not in entry:
            continue
        cfg = config_of(entry)
        cost = step_cost(cfg)
        per_step = {r["name"]: r["median_s"] / r["steps"] * 1e6
                    for r in entry["results"] if "median_s" in r}

        def floor_cell(name, cost=cost, per_step=per_step):
            t = per_step.get(name)
            return "n/a" if t is None else f"{t:.0f} ({cost['flops'] / t / 1e3:.0f})"

        def above(name, floor, per_step=per_step):
            t, f = per_step.get(name), per_step.get(floor)
            return "n/a" if t is None or f is None else f"{t:.0f} (+{t - f:.0f})"

        mb = "{:.2f} / {:.2f} / {:.2f}".format(*(cost[k] / 1e6 for k in (
            "gemm_bytes", "optimizer_bytes", "activation_bytes")))
        elementwise = "n/a" if not bw else \
            f"{(cost['optimizer_bytes'] + cost['activation_bytes']) / bw * 1e6:.0f}"
        cells = (f"{_title(cfg)}, batch {cfg.batch_size}", f"{cost['params']:,}",
                 f"{cost['flops'] / 1e9:.3f}", mb, floor_cell(FLOOR), floor_cell("jax-gemm-floor"),
                 elementwise, above("funcnn-jax-scan", "jax-gemm-floor"),
                 above("funcnn-numpy", FLOOR))
        lines.append("| " + " | ".join(cells) + " |")
    note = f"copy bandwidth {bw / 1e9:.1f} GB/s" if bw else "copy bandwidth not measured"
    return "\n".join(lines) + f"\n\nMedians per step of one run; {note}."
