"""The layering of ARCHITECTURE.md, enforced: no upward import, no cycle, no hidden import,
and no module past the line ceiling that flags two concepts in one file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "funcnn"
LAZY_ALLOWED = {"jax", "jaxlib", "tqdm", "matplotlib", "optax"}
MAX_LINES = 600  # a smell alarm for two concepts in one module, not a target


def _layers() -> dict[str, int]:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text.split("<!-- layers:", 1)[1]
    layer_of = {}
    for row in re.findall(r"^\| (\d+) [^|]*\| ([^|]*) \|", table, flags=re.M):
        for name in re.findall(r"`([\w.]+)`", row[1]):
            layer_of[name] = int(row[0])
    return layer_of


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
_TABLE = _layers()


def _layer(module: str) -> int | None:
    """A module's layer; a package's modules (``data.idx``) share the package's row."""
    while module:
        if module in _TABLE:
            return _TABLE[module]
        module = module.rpartition(".")[0]
    return None


LAYER_OF = {m: _layer(m) for m in MODULES} | _TABLE


def _imports(path: Path):
    """(module imported, inside a function?) for each funcnn or third-party import."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                if child.module == "funcnn":
                    found.extend((f"funcnn.{a.name}", in_function) for a in child.names)
                else:
                    found.append((child.module, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def _funcnn_target(imported: str) -> str | None:
    """The funcnn module an import refers to (a package attribute import resolves to a module
    when one of that name exists), or None for third-party imports."""
    if imported == "funcnn":
        return "__init__"
    if not imported.startswith("funcnn."):
        return None
    name = imported[len("funcnn."):]
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or "__init__"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_is_placed_in_a_layer(module):
    assert LAYER_OF.get(module) is not None, (
        f"funcnn/{module} is not in the layer table of ARCHITECTURE.md; add it to the layer "
        "whose rule it follows"
    )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_it(module):
    mine = LAYER_OF.get(module)
    for imported, in_function in _imports(MODULES[module]):
        target = _funcnn_target(imported)
        if target is None:
            top = imported.split(".")[0]
            assert not in_function or top in LAZY_ALLOWED, (
                f"funcnn/{module} imports {imported} inside a function; only optional "
                f"packages ({', '.join(sorted(LAZY_ALLOWED))}) may be imported lazily"
            )
            continue
        assert not in_function, (
            f"funcnn/{module} imports {imported} inside a function: move it to the top of "
            "the file (a cycle that needs a deferred import is a layering mistake)"
        )
        if target == module or (module == "__init__"):
            continue
        assert LAYER_OF.get(target, 99) <= mine, (
            f"funcnn/{module} (layer {mine}) imports funcnn/{target} (layer "
            f"{LAYER_OF.get(target)}), a layer above it"
        )


def test_the_import_graph_has_no_cycle():
    graph = {m: {t for i, _ in _imports(p) if (t := _funcnn_target(i)) not in (None, m)}
             for m, p in MODULES.items() if m != "__init__"}
    graph = {m: {t for t in ts if t != "__init__"} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_passes_the_line_ceiling(module):
    """One concept per module (ARCHITECTURE.md); a very long module is usually two."""
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, (
        f"funcnn/{module} has {lines} lines, more than the {MAX_LINES} that flag two concepts "
        "in one module: find the second concept and give it a module of its own (with a row in "
        "the table of ARCHITECTURE.md), or share the code it repeats; do not cut the file at a "
        "line number just to pass"
    )


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: a lower module importing funcnn.train is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from funcnn import train\nimport funcnn.optim\n"
                   "def f():\n    from funcnn.mlp import apply\n")
    found = _imports(bad)
    assert ("funcnn.train", False) in found and ("funcnn.optim", False) in found
    assert ("funcnn.mlp", True) in found
    assert LAYER_OF[_funcnn_target("funcnn.train")] > LAYER_OF["tree"]


def test_the_ceiling_is_the_one_architecture_md_states():
    """The rule and its test say the same number, and the rule is one concept per module."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    assert "## One concept per module" in text
    assert f"{MAX_LINES} lines" in text, f"ARCHITECTURE.md does not state {MAX_LINES} lines"
