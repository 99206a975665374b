"""The benchmark harness (``benchmarks/harness``): its import layering, its cost model, its
rounds and its reports of the saved run. No assertion here is about speed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import funcnn

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
HARNESS = BENCHMARKS / "harness"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from harness import adam_forms, cli, report  # noqa: E402
from harness.config import FLOOR, Config, Contender  # noqa: E402
from harness.contenders import CONTENDERS  # noqa: E402
from harness.contenders.floors import build_gemm_floor  # noqa: E402
from harness.cost import step_cost  # noqa: E402
from harness.timing import run_config  # noqa: E402

OPTIONAL = {"jax", "torch", "sklearn", "matplotlib", "threadpoolctl", "numexpr"}
RUN = json.loads((ROOT / "docs" / "performance.json").read_text())


# ---------------------------------------------------------------------------- layering


def _module(path: Path) -> str:
    parts = list(path.relative_to(BENCHMARKS).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module(p): p for p in sorted(HARNESS.rglob("*.py"))}


def _harness_imports(module: str) -> set[str]:
    """The harness modules ``module`` imports (a package's ``__init__`` by its name)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.module else base
            submodules = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
            found |= submodules or {target}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("harness")}
    return found - {module}


def test_the_harness_modules_import_each_other_without_a_cycle():
    graph = {m: _harness_imports(m) for m in MODULES}
    unknown = {m: sorted(targets - MODULES.keys()) for m, targets in graph.items()
               if targets - MODULES.keys()}
    assert not unknown, f"imports of modules that do not exist: {unknown}"
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module):] + [module]
            pytest.fail("import cycle in benchmarks/harness: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])
    assert done == set(MODULES)


def test_nothing_is_imported_inside_a_function_but_an_optional_package():
    inside = []
    for module, path in MODULES.items():
        for func in ast.walk(ast.parse(path.read_text())):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = ["." * node.level + (node.module or "")]
                else:
                    continue
                inside += [f"{module}.{func.name}: {name}" for name in names
                           if name.split(".")[0] not in OPTIONAL]
    assert not inside, f"imports inside functions (move them to the top): {inside}"


def test_the_readme_describes_every_module_and_contender():
    text = (BENCHMARKS / "README.md").read_text()
    modules = [f"`{p.name}`" if p.parent == HARNESS else f"`{p.stem}`"
               for p in MODULES.values() if p.name != "__init__.py"]
    missing = [m for m in modules if m not in text]
    missing += [f"`{name}`" for name in CONTENDERS if f"`{name}`" not in text]
    assert not missing, f"benchmarks/README.md does not mention {missing}"


# ---------------------------------------------------------------------------- cost model


def test_step_cost_counts_the_products_the_gemm_floor_runs(monkeypatch):
    cfg = Config("t", (6, 5, 4, 3), batch_size=7, dtype="float32", samples=7, repeats=1)
    flops = []
    matmul = np.matmul

    def counting(a, b, out=None):
        flops.append(2 * a.shape[0] * a.shape[1] * b.shape[1])
        return matmul(a, b, out=out)

    monkeypatch.setattr(np, "matmul", counting)
    x = np.random.default_rng(0).random((7, 6), dtype=np.float32)
    build_gemm_floor(cfg, x, np.zeros(7, dtype=np.int64)).epoch(0)  # one step
    assert len(flops) == 3 + 3 + 2  # forward, dW, and dX but for the first layer
    assert sum(flops) == step_cost(cfg)["flops"]


def test_step_cost_counts_the_parameters_funcnn_trains():
    cfg = Config("t", (6, 5, 4, 3), batch_size=7, dtype="float32", samples=7, repeats=1)
    params = funcnn.init_params(funcnn.MLP(cfg.sizes), 0)
    assert step_cost(cfg)["params"] == sum(leaf.size for leaf in funcnn.tree.tree_leaves(params))
    wide = step_cost(cfg._replace(dtype="float64"))
    for key in ("gemm_bytes", "optimizer_bytes", "activation_bytes"):
        assert wide[key] == 2 * step_cost(cfg)[key], key


# ---------------------------------------------------------------------------- rounds


def test_a_run_times_every_contender_and_reports_the_ones_that_fail():
    def missing_library(cfg, x, y):
        raise ImportError("no module named 'lib'")

    def fails_later(cfg, x, y):
        def epoch(i):
            if i > 0:
                raise RuntimeError("diverged")
        return Contender(epoch, cfg.dtype, 1, 0, "rss")

    cfg = Config("t", (8, 4, 2), batch_size=16, dtype="float32", samples=32, repeats=2)
    x = np.random.default_rng(0).random((32, 8), dtype=np.float32)
    builders = {FLOOR: build_gemm_floor, "missing": missing_library, "fails": fails_later}
    rows = {r["name"]: r for r in run_config(cfg, builders, x, np.zeros(32, int), budget=60)}
    floor = rows[FLOOR]
    assert floor["repeats"] == len(floor["times_s"]) == 2 and floor["steps"] == 2
    assert floor["min_s"] <= floor["median_s"] and floor["ratio"] == 1.0
    assert floor["peak_bytes"] is not None  # a tracemalloc epoch after the timed ones
    assert rows["missing"]["skipped"] == "ImportError: no module named 'lib'"
    assert rows["fails"]["skipped"] == "failed: RuntimeError: diverged"


# ---------------------------------------------------------------------------- reports


def test_markdown_lists_every_measured_contender_fastest_first():
    text = report.markdown(RUN)
    for entry in RUN["configs"]:
        section = text.split(f"### {entry['config']['name']}:")[1].split("###")[0]
        cells = [line.split("|")[1].strip() for line in section.splitlines()
                 if line.startswith("| ") and not line.startswith(("| contender", "| ---"))]
        measured = {r["name"]: r["median_s"] for r in entry["results"] if "median_s" in r}
        names = [c.strip("*") for c in cells]
        assert sorted(names) == sorted(measured)
        assert [measured[n] for n in names] == sorted(measured.values())
        assert all((c != n) == n.startswith("funcnn") for c, n in zip(cells, names, strict=True))


def test_the_performance_page_quotes_the_saved_run():
    page = (ROOT / "docs" / "performance.md").read_text()
    quoted = report.markdown(RUN) + "\n" + report.cost_table(RUN)
    missing = [line for line in quoted.splitlines() if line.strip() and line not in page]
    assert not missing, ("docs/performance.md does not quote these lines of --markdown / "
                         f"--cost-table docs/performance.json: {missing}")


def test_the_machine_of_a_saved_run_prints(capsys):
    report.print_machine(RUN)
    out = capsys.readouterr().out
    assert RUN["machine"]["cpu"] in out
    assert f"load average: {RUN['load_before'][0]:.2f} before the run" in out


# ---------------------------------------------------------------------------- command line


@pytest.mark.parametrize(("argv", "expected"), [
    (["--tiny"], [("tiny", 1)]),
    ([], [("main", 5), ("small", 5)]),
    (["--no-small", "--wide"], [("main", 5), ("wide-sgd", 3), ("wide-adam", 3)]),
    (["--wide-only", "--repeats", "2"], [("wide-sgd", 2), ("wide-adam", 2)]),
    (["--sizes", "784,64,10", "--batch-size", "32"], [("main", 5)]),
])
def test_the_command_line_chooses_the_configurations(argv, expected):
    configs = cli.mlp_epoch_configs(cli.mlp_epoch_args(argv))
    assert [(c.name, c.repeats) for c in configs] == expected
    if "--sizes" in argv:
        assert (configs[0].sizes, configs[0].batch_size) == ((784, 64, 10), 32)


@pytest.mark.slow  # two jax compilations
def test_numpy_optimizer_with_jax_times_funcnns_two_adam_leaves(monkeypatch, capsys):
    """``numpy_optimizer.py --jax``: fit's jax epoch compiled with each of the two leaves
    (here on 40 rows), the ratio to the textbook leaf printed, the fast path put back."""
    from funcnn.optim import _adam

    fast = _adam.adam_leaf_folded
    small = adam_forms.jax_forms
    monkeypatch.setattr(adam_forms, "jax_forms",
                        lambda sizes: small(sizes, rows=40, batch_size=16))
    ms = cli.numpy_optimizer_main(["--jax", "--sizes", "4,3,2", "--rounds", "1"])
    assert list(ms) == ["textbook", "in-place"] and all(t > 0 for t in ms.values())
    printed = capsys.readouterr().out
    assert "Adam on 23 float32 parameters (4-3-2)" in printed and "x textbook" in printed
    assert _adam.adam_leaf_folded is fast


@pytest.mark.slow
def test_the_entry_scripts_run(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, *argv], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout

    printed = run("benchmarks/mlp_epoch.py", "--markdown", "docs/performance.json")
    assert printed.strip() == report.markdown(RUN).strip()
    chart = tmp_path / "chart.png"
    run("benchmarks/plot.py", "docs/performance.json", str(chart))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for script in ("compile_time", "numpy_breakdown", "numpy_optimizer", "revisions",
                   "fit_overhead"):
        assert run(f"benchmarks/{script}.py", "--help").startswith("usage:"), script
