"""The command lines of ``benchmarks/mlp_epoch.py``, ``compile_time.py``,
``numpy_breakdown.py``, ``numpy_optimizer.py`` and ``plot.py``: arguments in, the
measuring modules called, the reports printed and written."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from . import adam_forms, breakdown, compile_time, numpy_first
from .config import FLOOR, MAIN, SMALL, TINY, WIDE, Config
from .contenders import CONTENDERS, DEFAULT
from .cost import copy_bandwidth
from .data import load_data
from .machine import machine
from .parallel import WORKER, parallel_worker, run_parallel
from .plot import plot_ratios
from .report import (
    config_of,
    cost_table,
    markdown,
    print_adam_forms,
    print_breakdown,
    print_compile_time,
    print_machine,
    print_parallel_table,
    print_table,
    print_targets,
    write_json,
)
from .targets import breakdown_targets, main_targets, wide_targets
from .timing import run_config

__all__ = ["compile_time_main", "mlp_epoch_args", "mlp_epoch_configs", "mlp_epoch_main",
           "numpy_breakdown_main", "numpy_optimizer_main", "plot_main"]


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.split(","))


# ---------------------------------------------------------------------------- mlp_epoch.py


def mlp_epoch_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time one training epoch of an MLP with funcnn and with baselines, "
                    "in one process.")
    p.add_argument("--sizes", help="layer sizes of the main config, e.g. 784,256,128,10")
    p.add_argument("--batch-size", type=int, help="batch size of the main config (128)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--samples", type=int, default=60000)
    p.add_argument("--repeats", type=int, help="timed epochs after the warm-up (5; 1 with --tiny)")
    p.add_argument(
        "--budget",
        type=float,
        default=15.0,
        help="seconds of timed epochs per contender before repeats are cut",
    )
    p.add_argument("--only", help="comma-separated contenders (gemm-floor always runs)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--small", action="store_true", help="only the small config")
    which.add_argument("--no-small", action="store_true", help="only the main config")
    which.add_argument("--tiny", action="store_true", help="a seconds-long config for CI")
    which.add_argument("--wide-only", action="store_true", help="only the two wide configs")
    p.add_argument("--wide", action="store_true",
                   help="also the wide configs: 784-1024-1024-10, tanh, SGD and Adam")
    p.add_argument("--data", metavar="DIR", help="real MNIST via funcnn.data.load_mnist(DIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write everything as JSON")
    p.add_argument("--plot", metavar="PNG", help="also draw the ratios (needs matplotlib)")
    p.add_argument("--parallel", action="store_true",
                   help="time data-parallel fit on 1, 2, 4 devices and 2 processes instead")
    p.add_argument(WORKER, metavar="JSON", help=argparse.SUPPRESS)
    p.add_argument("--cost-table", metavar="JSON",
                   help="print the cost model of a saved run (Markdown) and stop")
    p.add_argument("--markdown", metavar="JSON",
                   help="print the result tables of a saved run (Markdown) and stop")
    p.add_argument("--no-extras", action="store_true",
                   help="skip what a full run of the main config adds: the NumPy step's pieces "
                        "against their own GEMMs (numpy_breakdown.py) and the compile times in "
                        "fresh processes (compile_time.py)")
    return p.parse_args(argv)


def mlp_epoch_configs(args: argparse.Namespace) -> list[Config]:
    """The configurations the arguments ask for, in the order they run."""
    common = dict(dtype=args.dtype, samples=args.samples, repeats=5, seed=args.seed)
    main = dict(MAIN)
    if args.sizes:
        main["sizes"] = _sizes(args.sizes)
    if args.batch_size:
        main["batch_size"] = args.batch_size
    if args.tiny:
        chosen = [TINY]
    elif args.small:
        chosen = [SMALL]
    elif args.no_small or args.sizes or args.batch_size:
        chosen = [main]
    else:
        chosen = [main, SMALL]
    if args.wide_only:
        chosen = []
    if args.wide or args.wide_only:
        chosen += [{"repeats": 3, **c} for c in WIDE]  # 3 timed epochs unless --repeats
    repeats = {} if args.repeats is None else {"repeats": args.repeats}
    return [Config(**{**common, **c, **repeats}) for c in chosen]


def _contender_names(only: str | None) -> list[str]:
    if not only:
        return DEFAULT
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(CONTENDERS))
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; choose from {list(CONTENDERS)}")
    return [n for n in CONTENDERS if n == FLOOR or n in wanted]


def _extras(cfg: Config) -> dict:
    """The NumPy step's pieces against their own GEMMs, in this process, and the compile
    times of fit and jax-scan-ref in fresh processes (the main configuration's shapes)."""
    print(f"\n[{cfg.name}] NumPy step, piece by piece (numpy_breakdown.py) ...", flush=True)
    pieces = breakdown.measure(cfg.sizes, cfg.batch_size, cfg.samples, repeats=3)
    print(f"[{cfg.name}] compile times in fresh processes (compile_time.py) ...", flush=True)
    compiled = compile_time.measure(compile_time.config(cfg.sizes, cfg.batch_size, cfg.samples))
    print_compile_time(compiled, dict(compile_time.STAGES))
    return {"numpy_pieces": pieces, "compile_time": compiled,
            "targets": breakdown_targets(pieces) + compiled["targets"][1:]}


def mlp_epoch_main(argv: list[str] | None = None) -> dict:
    """``benchmarks/mlp_epoch.py``: the report of one run (empty when it only printed)."""
    args = mlp_epoch_args(argv)
    if args.parallel_worker:
        parallel_worker(json.loads(args.parallel_worker))
        return {}
    if args.cost_table:
        print(cost_table(json.loads(Path(args.cost_table).read_text())))
        return {}
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return {}
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    builders = {name: CONTENDERS[name] for name in _contender_names(args.only)}
    start = time.perf_counter()
    report = {"configs": [], "load_before": os.getloadavg()}
    for cfg in mlp_epoch_configs(args):
        entry = {"config": cfg._asdict(), "data": args.data or "synthetic"}
        if args.parallel:
            entry["parallel"] = run_parallel(cfg, args.data, 600.0)
        else:
            x, y = load_data(cfg, args.data)
            entry["results"] = run_config(cfg, builders, x, y, args.budget)
        report["configs"].append(entry)
    main_cfg = next((config_of(e) for e in report["configs"]
                     if e["config"]["name"] == "main" and "results" in e), None)
    if main_cfg is not None and not (args.no_extras or args.only):
        report["extras"] = _extras(main_cfg)
    if main_cfg is not None and "funcnn-numpy-fused" in builders and not args.no_extras:
        report.setdefault("extras", {})["numpy_first"] = numpy_first.measure(main_cfg)
    report["machine"] = machine()  # after the runs, so every loaded thread pool shows
    report["copy_bandwidth"] = copy_bandwidth()
    report["total_s"] = time.perf_counter() - start
    print()
    print_machine(report)
    for entry in report["configs"]:
        if "parallel" in entry:
            print_parallel_table(config_of(entry), entry["parallel"])
        else:
            print_table(config_of(entry), entry["results"])
    if "numpy_first" in report.get("extras", {}):
        numpy_first.print_numpy_first(report["extras"]["numpy_first"])
    for entry in report["configs"]:
        name = entry["config"]["name"]
        if "results" not in entry or not (name == "main" or name.startswith("wide")):
            continue
        if name == "main":
            entry["targets"] = main_targets(entry["results"]) + report.get("extras", {}).get(
                "targets", [])
        else:
            entry["targets"] = wide_targets(entry["results"])
        first = report.get("extras", {}).get("numpy_first") if name == "main" else None
        entry["targets"] += numpy_first.fused_targets(entry["results"], first)
        print_targets(f"{name} config (medians of this run)", entry["targets"])
    if not args.parallel:
        print("\ncost model (docs/performance.md keeps it from the JSON)")
        print(cost_table(report))
    print(f"\ntotal {report['total_s']:.1f} s")
    if args.json:
        write_json(report, args.json)
    if args.plot and not args.parallel:
        plot_ratios(report, args.plot)
        print(f"wrote {args.plot}")
    return report


# ---------------------------------------------------------------------------- the others


def compile_time_main(argv: list[str] | None = None) -> dict:
    """``benchmarks/compile_time.py``: every measurement in a fresh process (this script
    again, with the hidden ``--child MODE WHICH``)."""
    p = argparse.ArgumentParser(
        description="Where the first jax epoch of funcnn.fit spends its time, and what the "
                    "compilation cache saves.")
    p.add_argument("--sizes", help="layer sizes, e.g. 784,1024,1024,10 (784-256-128-10)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=60000)
    p.add_argument("--activation", default="relu", choices=("relu", "tanh"))
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(compile_time.CHILD, nargs=2, metavar=("MODE", "WHICH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = compile_time.config(_sizes(args.sizes) if args.sizes else None, args.batch_size,
                              args.samples, args.activation, args.optimizer)
    if args.child:
        result = compile_time.child(*args.child, cfg)
        print(json.dumps(result))
        return result
    report = compile_time.measure(cfg)
    print_compile_time(report, dict(compile_time.STAGES))
    print_targets("compile time", report["targets"])
    if args.json:
        write_json(report, args.json)
    return report


def _sized_args(description: str, argv: list[str] | None, flags: dict[str, str] | None = None,
                **options: int) -> argparse.Namespace:
    """The arguments of a tool that measures one net: ``--sizes`` (the main configuration's
    by default, parsed to a tuple), integer ``options`` with their defaults, and on/off
    ``flags`` (name: help)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--sizes", default=",".join(map(str, MAIN["sizes"])))
    for name, default in options.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    for name, text in (flags or {}).items():
        p.add_argument("--" + name, action="store_true", help=text)
    args = p.parse_args(argv)
    args.sizes = _sizes(args.sizes)
    return args


def numpy_breakdown_main(argv: list[str] | None = None) -> dict:
    """``benchmarks/numpy_breakdown.py``: seconds per epoch of each piece, and the targets."""
    args = _sized_args("Where a NumPy training epoch of funcnn goes: gather, forward, loss, "
                       "backward, optimizer.", argv, batch_size=128, samples=60_000, repeats=5)
    seconds = breakdown.measure(args.sizes, args.batch_size, args.samples, args.repeats)
    print_breakdown(args.sizes, args.batch_size, args.samples, args.repeats, seconds)
    found = breakdown_targets(seconds)
    print_targets("the NumPy step against its own matrix products", found)
    return {"seconds": seconds, "targets": found}


def numpy_optimizer_main(argv: list[str] | None = None) -> dict:
    """``benchmarks/numpy_optimizer.py``: median ms per step of every form of Adam; with
    ``--jax``, of fit's jax epoch compiled with each of funcnn's two Adam leaves."""
    jax_help = ("time fit's jax epoch (60 000 random rows, batch 128) compiled with each of "
                "funcnn's two Adam leaves, textbook and in-place, instead of the NumPy forms")
    args = _sized_args("Ways to write Adam's element-wise update on NumPy, timed side by side "
                       "in one process.", argv, flags={"jax": jax_help}, steps=300, rounds=5)
    if args.jax:
        options, n_params = adam_forms.jax_forms(args.sizes)
        what, base = "one jax epoch of fit", "textbook"
    else:
        options, n_params = adam_forms.forms(args.sizes)
        what, base = f"{args.steps} NumPy steps", "plain"
    ms = adam_forms.measure(options, args.steps, args.rounds)
    print_adam_forms(args.sizes, n_params, what, args.rounds, ms, base)
    return ms


def plot_main(argv: list[str] | None = None) -> None:
    """``benchmarks/plot.py RESULTS.json OUT.png``: the chart again, from a saved run."""
    p = argparse.ArgumentParser(
        description="Bar chart of epoch time over the GEMM floor, from the JSON of "
                    "mlp_epoch.py.")
    p.add_argument("results", metavar="RESULTS.json")
    p.add_argument("out", metavar="OUT.png")
    args = p.parse_args(argv)
    plot_ratios(json.loads(Path(args.results).read_text()), args.out)
    print(f"wrote {args.out}")
