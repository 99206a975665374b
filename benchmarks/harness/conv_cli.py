"""The command line of ``benchmarks/conv_epoch.py``: the convolutional net trained by every
contender of :mod:`harness.contenders.conv` in one process, its table of medians and
ratios, the targets of issue 20, the machine and the load."""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import conv_passes
from .contenders.conv import CONV_CONTENDERS
from .conv import CONV, CONV_TINY, ConvConfig, load_images, step_flops
from .machine import machine
from .report import print_machine, print_targets, write_json
from .targets import Target
from .timing import run_config

__all__ = ["conv_epoch_args", "conv_epoch_main", "conv_table", "conv_targets", "passes_table"]

FLOOR, BASE = "gemm-floor", "funcnn-jax"
LOSS_RTOL = 2e-2  # last-batch losses of contenders that trained alike, float32, a few steps


def conv_epoch_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train a small convolutional net with funcnn and with baselines, side "
                    "by side in one process: time per epoch, medians and ratios.")
    p.add_argument("--tiny", action="store_true",
                   help="a seconds-long run for CI: channels 4 and 8, dense 16, batch 32, "
                        "4 steps, 1 repeat")
    p.add_argument("--steps", type=int,
                   help="batches per timed run, the epoch time extrapolated from them "
                        "(default 30; 0: whole epochs of 60000 rows)")
    p.add_argument("--repeats", type=int, help="timed runs after the warm-up (3)")
    p.add_argument("--budget", type=float, default=120.0,
                   help="seconds of timed runs per contender before its repeats are cut")
    p.add_argument("--only", help="comma-separated contenders (gemm-floor always runs)")
    p.add_argument("--data", metavar="DIR", help="MNIST via funcnn.data.load_mnist(DIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--passes", action="store_true",
                   help="also time the step piece by piece against its own matrix products "
                        "(NumPy layer by layer, jax program by program): the cost model")
    p.add_argument("--json", metavar="PATH", help="also write everything as JSON")
    return p.parse_args(argv)


def conv_config(args: argparse.Namespace) -> ConvConfig:
    base = dict(CONV_TINY) if args.tiny else {**CONV, "steps": 30}
    if args.steps is not None:
        if args.steps < 0:
            raise SystemExit("--steps must be 0 (whole epochs) or more")
        base["steps"] = args.steps or None
    if args.repeats is not None:
        if args.repeats < 1:
            raise SystemExit("--repeats must be at least 1")
        base["repeats"] = args.repeats
    return ConvConfig(**base, seed=args.seed)


def _names(only: str | None) -> list[str]:
    if not only:
        return list(CONV_CONTENDERS)
    wanted = {n.strip() for n in only.split(",") if n.strip()}
    unknown = sorted(wanted - set(CONV_CONTENDERS))
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; choose from {list(CONV_CONTENDERS)}")
    return [n for n in CONV_CONTENDERS if n == FLOOR or n in wanted]


def _add_ratios(cfg: ConvConfig, rows: list[dict]) -> None:
    """Each row's epoch time (extrapolated from its run's steps), GFLOP/s of the products
    and ratios to the floor and to funcnn-jax."""
    by = {r["name"]: r for r in rows if "median_s" in r}
    flops = step_flops(cfg)
    per_step = flops["forward"] + flops["backward"]
    for r in by.values():
        r["epoch_s"] = r["median_s"] * cfg.epoch_steps / r["steps"]
        r["gflops"] = per_step * r["steps"] / r["median_s"] / 1e9
        r["x_funcnn_jax"] = r["median_s"] / by[BASE]["median_s"] if BASE in by else None


def conv_table(cfg: ConvConfig, rows: list[dict]) -> str:
    """The results as text: seconds of a run, the extrapolated epoch, ratios, last loss."""
    c1, c2 = cfg.channels
    steps = (f"{cfg.run_steps} of the epoch's {cfg.epoch_steps} steps per run, the epoch "
             "time extrapolated" if cfg.run_steps < cfg.epoch_steps
             else f"whole epochs of {cfg.epoch_steps} steps")
    lines = [f"[{cfg.name}] conv{c1}-pool-conv{c2}-pool-dense{cfg.hidden}-10, batch "
             f"{cfg.batch_size}, {cfg.dtype}, Adam; {steps}; medians of {cfg.repeats}",
             f"{'contender':<18} {'first_s':>8} {'median_s':>9} {'min_s':>8} {'epoch_s':>8} "
             f"{'GFLOP/s':>8} {'x floor':>8} {'x funcnn-jax':>12} {'last loss':>10}  note"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['name']:<18} skipped: {r['skipped']}")
            continue
        loss = "" if r.get("last_loss") is None else f"{r['last_loss']:.4f}"
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        base = "" if r.get("x_funcnn_jax") is None else f"{r['x_funcnn_jax']:.2f}"
        lines.append(f"{r['name']:<18} {r['first_epoch_s']:8.3f} {r['median_s']:9.3f} "
                     f"{r['min_s']:8.3f} {r['epoch_s']:8.1f} {r['gflops']:8.1f} {ratio:>8} "
                     f"{base:>12} {loss:>10}  {r['note']}")
    return "\n".join(lines)


def conv_targets(rows: list[dict]) -> list[Target]:
    """Issue 20's targets (funcnn-jax <= 1.1 x jax.grad of the same forward, and faster than
    PyTorch eager) and context rows; ``met`` None where a contender is missing."""
    by = {r["name"]: r["median_s"] for r in rows if "median_s" in r}

    def ratio(a: str, b: str, limit: float | None, label: str) -> Target:
        if a not in by or b not in by:
            return (label, "not measured", None)
        return (label, f"{by[a] / by[b]:.2f} x", None if limit is None else by[a] / by[b] <= limit)

    return [ratio(BASE, "patch-jax-grad", 1.1, "funcnn-jax <= 1.1 x patch-jax-grad"),
            ratio(BASE, "torch-eager", 1.0, "funcnn-jax faster than torch-eager"),
            ratio("lax-jax-grad", BASE, None, "lax-jax-grad / funcnn-jax"),
            ratio("lax-jax-grad-step", BASE, None, "lax-jax-grad-step / funcnn-jax"),
            ratio(BASE, "jax-gemm-floor", None, "funcnn-jax / jax-gemm-floor"),
            ratio("funcnn-numpy", FLOOR, None, "funcnn-numpy / gemm-floor")]


def passes_table(numpy_s: dict[str, float], jax_s: dict[str, float]) -> str:
    """The cost model: milliseconds per step of each pass beside its own products."""
    lines = ["NumPy, layer by layer (ms per step; products: the layer's own matmuls alone)",
             f"  {'piece':<26} {'pass':>8} {'products':>9} {'x products':>10}"]
    for label, sec in numpy_s.items():
        if " products " in label:
            continue
        i, _, rest = label.partition(" ")
        name, _, which = rest.rpartition(" ")
        prod = numpy_s.get(f"{i} {name} products {which}")
        ratio = f"{sec / prod:10.2f}" if prod else ""
        prod_ms = f"{prod * 1e3:9.2f}" if prod else ""
        lines.append(f"  {label:<26} {sec * 1e3:8.2f} {prod_ms:>9} {ratio:>10}")
    total = sum(v for k, v in numpy_s.items() if " products " not in k)
    prods = sum(v for k, v in numpy_s.items() if " products " in k)
    lines.append(f"  {'the whole step':<26} {total * 1e3:8.2f} {prods * 1e3:9.2f} "
                 f"{total / prods:10.2f}")
    lines.append("jax, whole programs (one lax.scan each; ms per step)")
    pairs = (("forward", "XLA products forward"),
             ("forward + backward", "XLA products forward + backward"),
             ("jax.grad forward + backward", "XLA products forward + backward"),
             ("training step", "XLA products forward + backward"))
    for name, floor in pairs:
        if name in jax_s:
            lines.append(f"  {name:<30} {jax_s[name] * 1e3:8.2f}   {floor} "
                         f"{jax_s[floor] * 1e3:.2f}: {jax_s[name] / jax_s[floor]:.2f} x")
    return "\n".join(lines)


def rows_repeats(rows: list[dict]) -> int:
    """The most timed runs any contender made."""
    return max((r.get("repeats", 0) for r in rows), default=0)


def losses_disagree(rows: list[dict]) -> list[str]:
    """The trainers whose last-batch loss is not within ``LOSS_RTOL`` of funcnn-jax's: they
    start from the same weights and train the same batches, so they should agree (those
    whose repeats the budget cut trained fewer runs and are not compared)."""
    losses = {r["name"]: r["last_loss"] for r in rows if r.get("last_loss") is not None
              and r.get("repeats") == rows_repeats(rows)}
    ref = losses.get(BASE)
    if ref is None:
        return []
    return [f"{name} {loss:.5f} vs {ref:.5f}" for name, loss in losses.items()
            if abs(loss - ref) > LOSS_RTOL * abs(ref)]


def conv_epoch_main(argv: list[str] | None = None) -> dict:
    """``benchmarks/conv_epoch.py``: the report of one run."""
    args = conv_epoch_args(argv)
    cfg = conv_config(args)
    builders = {name: CONV_CONTENDERS[name] for name in _names(args.only)}
    start = time.perf_counter()
    report = {"command": " ".join(["python benchmarks/conv_epoch.py", *sys.argv[1:]]
                                  if argv is None else ["python benchmarks/conv_epoch.py", *argv]),
              "config": {**cfg._asdict(), "run_steps": cfg.run_steps,
                         "epoch_steps": cfg.epoch_steps},
              "data": args.data or "synthetic", "flops_per_step": step_flops(cfg),
              "load_before": os.getloadavg()}
    x, y = load_images(cfg, args.data)
    rows = run_config(cfg, builders, x, y, args.budget)
    _add_ratios(cfg, rows)
    report.update(results=rows, targets=conv_targets(rows), losses_disagree=losses_disagree(rows),
                  machine=machine(), total_s=time.perf_counter() - start)
    print()
    print_machine(report)
    print()
    print(conv_table(cfg, rows))
    print_targets(f"{cfg.name} (medians of this run)", report["targets"])
    for line in report["losses_disagree"]:
        print(f"warning: last-batch losses disagree: {line}")
    if args.passes:
        print(f"\n[{cfg.name}] the step piece by piece ...", flush=True)
        steps = min(cfg.run_steps, 10)
        report["passes"] = {"steps": steps,
                            "numpy": conv_passes.numpy_layers(cfg, x, y, steps),
                            "jax": conv_passes.jax_programs(cfg, x, y, steps)}
        print(passes_table(report["passes"]["numpy"], report["passes"]["jax"]))
    print(f"\ntotal {report['total_s']:.1f} s")
    if args.json:
        write_json(report, args.json)
    return report
