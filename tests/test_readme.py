"""The README works for a new user: its code runs as written, its commands exist.

* Every ``python`` block runs as written, each on its own (a reader copies one block), on
  MNIST when ``$FUNCNN_DATA`` holds it.
* Every example script has a command in the README, and every flag those commands use is
  one the script accepts.
* A missing or unreadable data folder is one clear line on stderr, not a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import funcnn

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def bash_blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", README.read_text(), re.S | re.M)


def _mnist_folder() -> str:
    folder = os.environ.get("FUNCNN_DATA")
    if not folder:
        pytest.skip("FUNCNN_DATA is not set to a folder with the MNIST files")
    try:
        funcnn.data.load_mnist(folder, download=False)
    except (OSError, ValueError) as err:
        pytest.skip(f"FUNCNN_DATA={folder} does not hold readable MNIST files: {err}")
    return folder


def test_readme_has_the_two_loops():
    blocks = python_blocks()
    assert len(blocks) == 2
    assert "funcnn.backprop" in blocks[0] and "funcnn.adam_update" in blocks[0]
    assert "funcnn.fit" in blocks[1]


def test_readme_says_to_create_a_virtual_environment_first():
    text = README.read_text()
    assert "python3 -m venv" in text
    assert text.index("python3 -m venv") < text.index("pip install")


def test_readme_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in text and "test-command" in ci
    assert "mkdocs build --strict" in ci and '".[docs]"' in text
    assert "python examples/mnist.py --data DIR" in text


def example_commands() -> dict[str, list[list[str]]]:
    """``{script: [argument lists]}`` of every ``python examples/...`` command in the README."""
    commands: dict[str, list[list[str]]] = {}
    text = README.read_text()
    for match in re.finditer(r"python (examples/[\w.]+\.py)((?: --?[\w-]+(?: [A-Z]+)?)*)", text):
        commands.setdefault(match[1], []).append(match[2].split())
    return commands


def test_every_example_has_a_command():
    commands = example_commands()
    scripts = sorted(f"examples/{p.name}" for p in EXAMPLES.glob("*.py"))
    missing = [s for s in scripts if s not in commands]
    assert not missing, f"the README gives no command for {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(f"examples/{p.name}" for p in EXAMPLES.glob("*.py")))
def test_the_flags_of_each_command_exist(script):
    """A flag the README shows, e.g. ``--synthetic``, must be one the script accepts."""
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accepted = set(re.findall(r"(--[\w-]+)", proc.stdout))
    for args in example_commands().get(script, []):
        flags = [a for a in args if a.startswith("--")]
        unknown = [f for f in flags if f not in accepted]
        assert not unknown, f"README: {script} {' '.join(args)}: {script} has no {unknown}"


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing folder", "unreadable files"])
def test_custom_loop_without_data_says_so_in_one_line(problem, tmp_path):
    pytest.importorskip("jax")
    folder = tmp_path / "mnist"
    if problem == "unreadable files":
        folder.mkdir()
        for name in funcnn.data.mnist.FILES:
            (folder / f"{name}.gz").write_bytes(b"not a gzip file")
    proc = subprocess.run([sys.executable, "examples/custom_loop.py", "--data", str(folder)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("custom_loop.py: ") and "--data DIR" in lines[0]
    assert ("no MNIST files in" if problem == "missing folder" else "cannot read") in lines[0]


def run_block(code: str) -> tuple[dict, str]:
    """Run one README block as written, in a fresh namespace; its scope and what it printed."""
    scope: dict = {"__name__": "__readme__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), scope)
    return scope, printed.getvalue()


@pytest.mark.mnist
@pytest.mark.slow
def test_the_functional_loop_runs_as_written():
    _mnist_folder()
    scope, printed = run_block(python_blocks()[0])
    funcnn_ = scope["funcnn"]
    result = funcnn_.evaluate(scope["net"], scope["params"], scope["data"].x_test,
                              scope["data"].y_test)
    assert result["accuracy"] > 0.95  # three epochs of Adam on MNIST
    assert len(printed.strip().splitlines()) == 3  # one line per epoch


@pytest.mark.mnist
@pytest.mark.slow
def test_the_fit_block_runs_as_written():
    _mnist_folder()
    scope, printed = run_block(python_blocks()[1])
    history = scope["history"]
    assert len(history["train_loss"]) == 3
    assert history["train_loss"][2] < history["train_loss"][0]
    assert "'accuracy'" in printed
