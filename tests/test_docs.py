"""The documentation site says what the code does, and its code runs.

* Every block titled ``formula: ...`` on ``docs/backprop.md`` is executed as NumPy code on
  random float64 inputs, and again with ``np`` bound to ``jax.numpy`` so that ``jax.grad``
  can differentiate the block's own forward lines. Its hand-derived gradient must agree with
  ``jax.grad`` (relative error <= 1e-7) and with the funcnn function it documents. Blocks
  titled ``bug: ...`` must *disagree*, each in the way the page says.
* Every ``funcnn/<file>.py``, ``name`` reference on a page names something defined there.
* Every other ``python`` block of every page runs as written, page by page in one namespace
  (pages that load MNIST only when ``$FUNCNN_DATA`` holds it). A block followed by a block
  titled ``output`` must print that output (numbers within a tolerance).
* The API reference has a page for every public module, and the package's face lists every
  name of ``funcnn.__all__``.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn
from funcnn.activations import ACTIVATIONS, softmax
from funcnn.losses import get_loss, prepare_targets
from funcnn.network import apply, backward

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RTOL = 1e-7
FENCE = re.compile(
    r"^```(?P<lang>[\w-]*)(?P<attrs>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.M | re.S
)
TITLE = re.compile(r'title="([^"]*)"')


def fenced_blocks(page: Path) -> list[tuple[str, str, str]]:
    """``(language, title, code)`` of each fenced block of a markdown page, in order."""
    out = []
    for match in FENCE.finditer(page.read_text()):
        title = TITLE.search(match["attrs"])
        out.append((match["lang"], title[1] if title else "", match["code"]))
    return out


def titled_blocks(page: Path, prefix: str) -> dict[str, str]:
    blocks = {}
    for lang, title, code in fenced_blocks(page):
        if title.startswith(prefix):
            assert lang == "python", f"{title!r} must be a python block"
            assert title not in blocks, f"two blocks titled {title!r}"
            blocks[title] = code
    return blocks


BACKPROP = DOCS / "backprop.md"
FORMULAS = titled_blocks(BACKPROP, "formula: ")
BUGS = titled_blocks(BACKPROP, "bug: ")


def run(code: str, xp, **names) -> dict:
    """Execute ``code`` with ``np`` bound to ``xp`` and the given names; return its namespace.

    With ``xp = jax.numpy``, every NumPy array given is moved to jax first, so the block
    computes a function jax can differentiate.
    """
    if xp is jnp:
        names = jax.tree_util.tree_map(
            lambda v: jnp.asarray(v) if isinstance(v, np.ndarray) else v, names
        )
    scope = {"np": xp, **names}
    with jax.numpy_rank_promotion("allow"):  # the page writes `+ b[l]`, as maths does
        exec(compile(code, "<docs block>", "exec"), scope)
    return scope


def rel_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} vs {want.shape}"
    scale = float(np.max(np.abs(want), initial=0.0))
    return float(np.max(np.abs(got - want), initial=0.0)) / (scale if scale > 0 else 1.0)


def assert_close(got, want, what: str, rtol: float = RTOL) -> None:
    err = rel_error(got, want)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


def formula(title: str) -> str:
    assert title in FORMULAS, f"docs/backprop.md has no block titled 'formula: {title}'"
    return FORMULAS[title]


# ---------------------------------------------------------------------------- the page's blocks

ACTIVATION_TITLES = [f"formula: {name}" for name in ACTIVATIONS]
LOSS_TITLES = [
    "formula: softmax + cross-entropy, integer labels",
    "formula: softmax + cross-entropy, target rows",
    "formula: sigmoid + binary cross-entropy",
    "formula: elementwise output + mean squared error",
    "formula: softmax + mean squared error",
]
OTHER_TITLES = [
    "formula: forward pass", "formula: dense layer", "formula: backward pass", "formula: adam",
]
BUG_TITLES = [
    "bug: adam without the square root",
    "bug: sigmoid + binary cross-entropy, the delta of another loss",
    "bug: summed loss, averaged gradient",
]


LAYERS = ("formula: layer ", "bug: layer ")  # the layers' blocks: checked in tests/test_layers.py


def test_every_formula_on_the_page_is_checked_here():
    """A formula added to the page without a check here, or a check of a vanished one, fails."""
    assert sorted(t for t in FORMULAS if not t.startswith(LAYERS)) == sorted(
        ACTIVATION_TITLES + LOSS_TITLES + OTHER_TITLES)
    assert sorted(t for t in BUGS if not t.startswith(LAYERS)) == sorted(BUG_TITLES)


# ---------------------------------------------------------------------------- activations


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_formula(name):
    code = formula(f"formula: {name}")
    rng = np.random.default_rng([7, len(name)])
    z = rng.normal(scale=2.0, size=(6, 5))  # never exactly at a kink
    page = run(code, np, z=z)
    # elementwise: the gradient of sum(a) is the derivative at each entry
    ref = jax.grad(lambda zj: jnp.sum(run(code, jnp, z=zj)["a"]))(jnp.asarray(z))
    assert_close(page["da_dz"], ref, f"{name}: da_dz vs jax.grad")
    act = ACTIVATIONS[name]
    assert_close(page["a"], act.fn(z), f"{name}: a vs funcnn.activations.{name}")
    assert_close(page["da_dz"], act.grad(z, act.fn(z)), f"{name}: da_dz vs {name}_grad")


# ---------------------------------------------------------------------------- output + loss


def loss_case(title: str, rng, output: str = "softmax"):
    """Inputs for a loss block; the funcnn loss and output it documents; funcnn's targets."""
    m, k = 7, 4
    z = rng.normal(scale=1.5, size=(m, k))
    if title.endswith("integer labels"):
        y = rng.integers(0, k, size=m)
        return {"z": z, "y": y}, "cross_entropy", "softmax", y
    if title.endswith("target rows"):
        Y = rng.uniform(0.0, 1.0, size=(m, k))  # rows that need not sum to 1
        return {"z": z, "Y": Y}, "cross_entropy", "softmax", Y
    if "binary" in title:
        y = rng.uniform(0.0, 1.0, size=(m, k))
        return {"z": z, "y": y}, "binary_cross_entropy", "sigmoid", y
    y = rng.normal(size=(m, k))
    if title.startswith("formula: softmax"):
        return {"z": z, "y": y}, "mse", "softmax", y
    act = ACTIVATIONS[output]
    return {"z": z, "y": y, "f": act.fn, "f_prime": act.grad}, "mse", output, y


def check_loss_block(title: str, output: str = "softmax") -> None:
    code = formula(title)
    rng = np.random.default_rng([11, len(title), len(output)])
    inputs, loss_name, output, y = loss_case(title, rng, output)
    page = run(code, np, **inputs)
    ref = jax.grad(lambda zj: run(code, jnp, **{**inputs, "z": zj})["loss"])(
        jnp.asarray(inputs["z"])
    )
    assert_close(page["dz"], ref, f"{title} ({output}): dz vs jax.grad of the page's loss")
    spec, z = get_loss(loss_name), inputs["z"]
    a = softmax(z) if output == "softmax" else ACTIVATIONS[output].fn(z)
    assert_close(page["loss"], spec.value(output, z, a, y), f"{title}: loss vs funcnn")
    assert_close(page["dz"], spec.delta(output, z, a, y), f"{title}: dz vs funcnn's delta")
    if "loss_stable" in page:
        assert_close(page["loss_stable"], page["loss"], f"{title}: the two forms of the loss")


@pytest.mark.parametrize("title", [t for t in LOSS_TITLES if "elementwise" not in t])
def test_output_and_loss_formula(title):
    check_loss_block(title)


@pytest.mark.parametrize("output", list(ACTIVATIONS))
def test_elementwise_output_with_mse_formula(output):
    check_loss_block("formula: elementwise output + mean squared error", output)


# ---------------------------------------------------------------------------- layers and nets


def test_dense_layer_formula():
    code = formula("formula: dense layer")
    rng = np.random.default_rng(3)
    m, n_in, n_out = 6, 4, 3
    x, W, b = rng.normal(size=(m, n_in)), rng.normal(size=(n_in, n_out)), rng.normal(size=n_out)
    dz = rng.normal(size=(m, n_out))  # an arbitrary upstream gradient

    def names(x, W, b, dz):
        return {"l": 0, "inputs": [x], "W": [W], "b": [b], "zs": [None], "dW": [None],
                "db": [None], "dz": dz}

    page = run(code, np, **names(x, W, b, dz))

    def linearised(x, W, b):  # d<dz, zs> / d(x, W, b) is what the layer's backward gives
        return jnp.sum(jnp.asarray(dz) * run(code, jnp, **names(x, W, b, dz))["zs"][0])

    ref_x, ref_W, ref_b = jax.grad(linearised, argnums=(0, 1, 2))(
        jnp.asarray(x), jnp.asarray(W), jnp.asarray(b)
    )
    assert_close(page["dW"][0], ref_W, "dW vs jax.grad")
    assert_close(page["db"][0], ref_b, "db vs jax.grad")
    assert_close(page["da"], ref_x, "da vs jax.grad")
    # funcnn: a one-layer net with identity output and MSE is exactly this layer
    net = funcnn.MLP((n_in, n_out), output="identity")
    y = rng.normal(size=(m, n_out))
    params = (funcnn.Dense(W, b),)
    cache = apply(net, params, x, ())
    assert_close(page["zs"][0], cache.zs[0], "zs vs funcnn.apply")
    delta = get_loss("mse").delta("identity", cache.zs[0], cache.out, y)
    page = run(code, np, **names(x, W, b, delta))
    grads = backward(net, params, cache, y)
    assert_close(page["dW"][0], grads[0].W, "dW vs funcnn.backward")
    assert_close(page["db"][0], grads[0].b, "db vs funcnn.backward")


NETS = [
    funcnn.MLP((5, 7, 6, 4), hidden="relu", output="softmax", dropout=0.3),
    funcnn.MLP((5, 6, 3), hidden="tanh", output="sigmoid"),
    funcnn.MLP((4, 6, 5, 2), hidden="gelu", output="identity", dropout=0.5),
    funcnn.MLP((4, 5, 3), hidden="elu", output="softmax", loss="mse"),
    funcnn.MLP((4, 5, 2), hidden="softplus", output="tanh"),
]


@pytest.mark.slow
@pytest.mark.parametrize("net", NETS, ids=lambda n: f"{n.hidden}-{n.output}-{n.loss}")
def test_forward_and_backward_pass_formulas(net, make_params):
    forward_code = formula("formula: forward pass")
    backward_code = formula("formula: backward pass")
    rng = np.random.default_rng(list(net.sizes))
    m, k = 8, net.sizes[-1]
    params = make_params(net, len(net.sizes))
    x = rng.normal(size=(m, net.sizes[0]))
    if net.loss == "cross_entropy":
        y = rng.integers(0, k, size=m)
    elif net.loss == "binary_cross_entropy":
        y = rng.uniform(0.0, 1.0, size=(m, k))
    else:
        y = rng.normal(size=(m, k))
    y = prepare_targets(net.loss, y, k, np.float64)
    keep = 1.0 - net.dropout
    masks = [(rng.random((m, n)) < keep) / keep for n in net.sizes[1:-1]]  # ones without dropout
    g = ACTIVATIONS[net.hidden]
    f = softmax if net.output == "softmax" else ACTIVATIONS[net.output].fn
    spec = get_loss(net.loss)
    W, b = [p.W for p in params], [p.b for p in params]
    common = {"L": net.n_layers, "x": x, "masks": masks, "g": g.fn, "f": f}

    fwd = run(forward_code, np, **common, W=W, b=b)
    cache = apply(net, params, x, tuple(masks) if net.dropout else (None,) * len(masks))
    for name in ("inputs", "zs", "hidden"):
        assert len(fwd[name]) == len(getattr(cache, name)), name
        for l, (mine, theirs) in enumerate(zip(fwd[name], getattr(cache, name), strict=True)):
            assert_close(mine, theirs, f"{name}[{l}] vs funcnn.apply")
    assert_close(fwd["out"], cache.out, "out vs funcnn.apply")

    def loss_of(W, b):
        scope = run(forward_code, jnp, **common, W=W, b=b)
        return spec.value(net.output, scope["zs"][-1], scope["out"], jnp.asarray(y))

    ref_W, ref_b = jax.grad(loss_of, argnums=(0, 1))([jnp.asarray(w) for w in W],
                                                     [jnp.asarray(v) for v in b])
    bwd = run(backward_code, np, L=net.n_layers, W=W, masks=masks, y=y,
              inputs=fwd["inputs"], zs=fwd["zs"], hidden=fwd["hidden"], out=fwd["out"],
              delta=lambda z, a, y: spec.delta(net.output, z, a, y), g_prime=g.grad)
    grads = backward(net, params, cache, y)
    for l in range(net.n_layers):
        assert_close(bwd["dW"][l], ref_W[l], f"dW[{l}] vs jax.grad of the loss")
        assert_close(bwd["db"][l], ref_b[l], f"db[{l}] vs jax.grad of the loss")
        assert_close(bwd["dW"][l], grads[l].W, f"dW[{l}] vs funcnn.backward")
        assert_close(bwd["db"][l], grads[l].b, f"db[{l}] vs funcnn.backward")


# ---------------------------------------------------------------------------- Adam and the bugs

ADAM = {"lr": 1e-2, "b1": 0.9, "b2": 0.999, "eps": 1e-8}


def adam_steps(code: str, steps: int = 4):
    """The page's Adam beside funcnn.adam_update: ``(page's change, funcnn's change)`` per leaf
    and step, both starting each step from the same params."""
    rng = np.random.default_rng(5)
    params = (funcnn.Dense(rng.normal(size=(4, 3)), rng.normal(size=3)),)
    state = funcnn.adam_init(params)
    page_state = [{"mu": np.zeros_like(p), "nu": np.zeros_like(p), "count": 0} for p in params[0]]
    changes = []
    for _ in range(steps):
        grads = (funcnn.Dense(rng.normal(size=(4, 3)), rng.normal(size=3)),)
        new, state = funcnn.adam_update(params, grads, state, **ADAM)
        for leaf, p, g, p_new in zip(page_state, params[0], grads[0], new[0], strict=True):
            scope = run(code, np, **leaf, p=p, g=g, **ADAM)
            leaf.update({k: scope[k] for k in ("mu", "nu", "count")})
            changes.append((scope["p"] - p, p_new - p))
        params = new
    return changes


def test_adam_formula_is_funcnns_adam():
    for mine, theirs in adam_steps(formula("formula: adam")):
        assert_close(mine, theirs, "a step of the page's Adam vs funcnn.adam_update", rtol=1e-12)


def test_adam_without_the_square_root_is_caught():
    mine, theirs = adam_steps(BUGS["bug: adam without the square root"], steps=1)[0]
    assert rel_error(mine, theirs) > 0.1


def test_the_bce_bug_differentiates_half_the_squared_error():
    code = BUGS["bug: sigmoid + binary cross-entropy, the delta of another loss"]
    rng = np.random.default_rng(9)
    z, y = rng.normal(size=(6, 2)), rng.uniform(0.0, 1.0, size=(6, 2))
    page = run(code, np, z=z, y=y)
    bce = jax.grad(lambda zj: run(code, jnp, z=zj, y=y)["loss"])(jnp.asarray(z))
    assert rel_error(page["dz"], bce) > 0.1, "the bug's delta should not be BCE's gradient"
    half_sq = jax.grad(lambda zj: jnp.mean((jax.nn.sigmoid(zj) - y) ** 2) / 2)(jnp.asarray(z))
    assert_close(page["dz"], half_sq, "the bug's delta is the gradient of half the MSE")


def test_summed_loss_with_averaged_gradient_is_off_by_m():
    code = BUGS["bug: summed loss, averaged gradient"]
    rng = np.random.default_rng(13)
    m = 9
    z, y = rng.normal(size=(m, 4)), rng.integers(0, 4, size=m)
    page = run(code, np, z=z, y=y)
    ref = jax.grad(lambda zj: run(code, jnp, z=zj, y=y)["loss"])(jnp.asarray(z))
    assert rel_error(page["dz"], ref) > 0.5
    assert_close(m * page["dz"], ref, "the averaged gradient times m is the summed loss's")


# ---------------------------------------------------------------------------- code references

CODE_REF = re.compile(r"`(funcnn/[\w/]+\.py)`, `(\w+)`(?: and `(\w+)`)?")


def defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


PAGES = sorted(p for p in DOCS.rglob("*.md"))


def test_code_references_name_what_is_there():
    refs = [(page, m) for page in PAGES for m in CODE_REF.finditer(page.read_text())]
    assert refs
    for page, match in refs:
        path = ROOT / match[1]
        assert path.is_file(), f"{page.name}: {match[1]} does not exist"
        defined = defined_names(path)
        for name in filter(None, match.groups()[1:]):
            assert name in defined, f"{page.name}: {match[1]} defines no {name!r}"


def test_every_formula_is_followed_by_the_code_that_implements_it():
    text = BACKPROP.read_text()
    for title in FORMULAS:
        after = text[text.index(f'title="{title}"'):].split("```", 2)[1]
        before_next = re.split(r"^```|^#", after, maxsplit=1, flags=re.M)[0]
        assert CODE_REF.search(before_next), f"no *Code:* reference after {title!r}"


def test_the_quoted_backward_lines_are_in_the_code():
    text = BACKPROP.read_text()
    source = (ROOT / "funcnn" / "layers" / "_dense.py").read_text()
    for line in ("dW = cache.x.T @ dz", "db = dz.sum(axis=0)", "dx = dz @ params.W.T"):
        assert f"`{line}`" in text and line in source, line


# ---------------------------------------------------------------------------- the pages' code

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _mnist_available() -> bool:
    folder = os.environ.get("FUNCNN_DATA")
    if not folder:
        return False
    try:
        funcnn.data.load_mnist(folder, download=False)
    except (OSError, ValueError):
        return False
    return True


def outputs_match(got: str, want: str, *, numbers: bool = True) -> str | None:
    """None when ``got`` prints what ``want`` shows; otherwise the difference.

    Words must match exactly; numbers within 1e-3 relative, and numbers below 1e-6 (the
    errors of checks that pass, at rounding level) match each other. With
    ``numbers=False`` only the words and the places of the numbers are compared.
    """
    got_lines, want_lines = got.strip().splitlines(), want.strip().splitlines()
    fresh = f"\n--- it printed:\n{got}"
    if len(got_lines) != len(want_lines):
        return f"{len(got_lines)} lines printed, the page shows {len(want_lines)}{fresh}"
    for g, w in zip(got_lines, want_lines, strict=True):
        if NUMBER.sub("#", g).split() != NUMBER.sub("#", w).split():
            return f"printed {g!r}, the page shows {w!r}{fresh}"
        for a, b in zip(NUMBER.findall(g), NUMBER.findall(w), strict=True):
            a, b = float(a), float(b)
            passing_errors = abs(a) < 1e-6 and abs(b) < 1e-6
            if numbers and not (passing_errors or abs(a - b) <= 1e-3 * max(abs(a), abs(b))):
                return f"printed {g!r}, the page shows {w!r}{fresh}"
    return None


def page_programs():
    """The pages with runnable python blocks (neither formulas nor bugs)."""
    out = []
    for page in PAGES:
        blocks = fenced_blocks(page)
        runnable = [b for b in blocks if b[0] == "python"
                    and not b[1].startswith(("formula: ", "bug: "))]
        if runnable:
            out.append(pytest.param(page, marks=[pytest.mark.mnist] if any(
                "load_mnist" in b[2] for b in runnable) else [], id=str(page.relative_to(DOCS))))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("page", page_programs())
def test_page_code_runs_as_written(page, tmp_path, monkeypatch):
    blocks = fenced_blocks(page)
    if any(b[0] == "python" and "load_mnist" in b[2] for b in blocks) and not _mnist_available():
        pytest.skip(f"{page.name} trains on MNIST: set FUNCNN_DATA to a folder with its files")
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    scope: dict = {"__name__": "__docs__"}
    ran = 0
    for i, (lang, title, code) in enumerate(blocks):
        if lang != "python" or title.startswith(("formula: ", "bug: ")):
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{page.name}, block {i}", "exec"), scope)
        ran += 1
        if i + 1 < len(blocks) and blocks[i + 1][1] == "output":
            problem = outputs_match(printed.getvalue(), blocks[i + 1][2])
            assert problem is None, f"{page.name}, block {i}: {problem}"
    assert ran > 0


@pytest.mark.slow
def test_shown_example_output_is_what_the_example_prints():
    """Console output shown on a page, titled ``output of python examples/NAME.py ARGS``,
    is what that command prints (word for word; its numbers depend on the random draws)."""
    shown = [(page, title, code) for page in PAGES for _, title, code in fenced_blocks(page)
             if title.startswith("output of python examples/")]
    assert shown
    for page, title, code in shown:
        command = title.removeprefix("output of python ").split()
        proc = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                              cwd=ROOT, timeout=600, env={**os.environ, "MPLBACKEND": "Agg"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        problem = outputs_match(proc.stdout, code, numbers=False)
        assert problem is None, f"{page.name}, {title!r}: {problem}"


def test_code_lines_fit_the_page():
    """Code wider than 100 characters scrolls sideways on a 1280-pixel screen (printed
    output is shown as it is)."""
    long = [f"{page.name}: {line}" for page in PAGES for lang, _, code in fenced_blocks(page)
            if lang in ("python", "bash") for line in code.splitlines() if len(line) > 100]
    assert not long, "lines over 100 characters:\n" + "\n".join(long)


def test_pages_are_in_the_nav_and_have_a_title():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        rel = str(page.relative_to(DOCS))
        assert re.search(rf"^\s*- (?:[^\n]*: )?{re.escape(rel)}$", nav, re.M), (
            f"{rel} is not in the nav of mkdocs.yml")
        assert page.read_text().startswith("# "), f"{rel} does not start with a title"


# ---------------------------------------------------------------------------- the API reference

# Every public module of the package; the command line is documented on docs/cli.md.
PUBLIC_MODULES = sorted(m.name for m in pkgutil.iter_modules(funcnn.__path__)
                        if not m.name.startswith("_") and m.name != "cli")


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_module_has_an_api_page(module):
    importlib.import_module(f"funcnn.{module}")
    page = DOCS / "api" / f"{module}.md"
    assert page.is_file(), f"no API page for funcnn.{module}"
    assert f"::: funcnn.{module}\n" in page.read_text()


def test_every_public_function_and_class_has_a_docstring():
    """The API pages show documented names only (mkdocs.yml): an undocumented one would vanish."""
    missing = []
    for module in PUBLIC_MODULES:
        mod = importlib.import_module(f"funcnn.{module}")
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            if not doc or (inspect.isclass(obj) and doc.startswith(f"{name}(")):  # NamedTuple's
                missing.append(f"funcnn.{module}.{name}")
    assert not missing, f"no docstring: {missing}"


def test_the_package_face_lists_every_public_name():
    text = (DOCS / "api" / "index.md").read_text()
    missing = [n for n in funcnn.__all__ if f"`funcnn.{n}`" not in text]
    assert not missing, f"docs/api/index.md does not list {missing}"
    extra = [n for n in re.findall(r"\[`funcnn\.(\w+)`\]", text) if n not in funcnn.__all__]
    assert not extra, f"docs/api/index.md lists {extra} as funcnn.NAME, not in funcnn.__all__"


@pytest.mark.parametrize("name, where", [
    ("set_backend", "funcnn.backend.set_backend"),
    ("flush_denormals", "funcnn.backend.flush_denormals"),
    ("adamw_init", "funcnn.adam_init"),
])
def test_a_name_that_left_the_top_level_says_where_it_went(name, where):
    """Moved, not aliased: the old name fails with a message naming the new place."""
    assert name not in funcnn.__all__ and not hasattr(funcnn, name)
    with pytest.raises(AttributeError, match=re.escape(where)):
        getattr(funcnn, name)
    module, _, attribute = where.rpartition(".")
    assert callable(getattr(importlib.import_module(module), attribute))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        funcnn.no_such_name  # noqa: B018 - any other name fails as usual


def test_adamw_init_left_funcnn_optim_too():
    assert "adamw_init" not in funcnn.optim.__all__
    with pytest.raises(AttributeError, match=re.escape("funcnn.optim.adam_init")):
        funcnn.optim.adamw_init  # noqa: B018
    assert funcnn.backend.flush_denormals is funcnn._fpu.flush_denormals
