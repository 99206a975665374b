"""The ``funcnn`` command line: each command end to end, and every error a user can cause.

Most tests run ``funcnn.cli.main`` in this process (reading its output with ``capsys``);
a few run ``python -m funcnn`` and the installed ``funcnn`` script in a subprocess to
prove the entry points. Training runs on small IDX files written here with
``funcnn.data.write_idx`` (so they always run) and, when ``$FUNCNN_DATA`` holds them,
on the first 2000 real MNIST images.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from _digits import write_digits

import funcnn
from funcnn.cli import build_parser, main
from funcnn.data.mnist import FILES as MNIST_FILES

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--hidden", "32", "--epochs", "1", "--no-progress"]  # a small, fast train
NET_FLAGS = {"mlp": ["--hidden", "32"], "cnn": ["--model", "cnn", "--channels", "4,8"]}


# ---------------------------------------------------------------------------- helpers


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``main(argv)`` in this process: ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    assert lines, "nothing on stdout"
    return json.loads(lines[-1])


def assert_short_error(err: str, *needles: str) -> None:
    """The failure is one or two lines on stderr, no traceback, naming what is wrong."""
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, f"expected one or two lines on stderr, got:\n{err}"
    assert "Traceback" not in err, err
    assert lines[0].startswith("funcnn"), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"


def run_module(*argv, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "funcnn", *map(str, argv)], capture_output=True,
                          text=True, timeout=600, cwd=cwd or ROOT,
                          env={**os.environ, "MPLBACKEND": "Agg", **(env or {})})


BLOCKER = """\
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, _NotInstalled())
"""


def blocker(folder: Path, *modules: str) -> dict:
    """Environment of a Python where ``modules`` are not installed (a sitecustomize shim
    whose import hook refuses them, as a missing package would)."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(modules)))
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def mnist_dir() -> Path:
    env = os.environ.get("FUNCNN_DATA", "")
    for folder in ([Path(env), Path(env) / "mnist"] if env else []):
        if all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in MNIST_FILES):
            return folder
    pytest.skip("FUNCNN_DATA does not hold the four MNIST files (set it to run on real MNIST)")


def numpy_predictions(params, x) -> np.ndarray:
    """argmax of a ReLU/softmax MLP, written out in plain NumPy (independent of funcnn)."""
    a = np.asarray(x, dtype=np.float64)
    for layer in params[:-1]:
        a = np.maximum(a @ np.asarray(layer.W, np.float64) + np.asarray(layer.b, np.float64), 0)
    z = a @ np.asarray(params[-1].W, np.float64) + np.asarray(params[-1].b, np.float64)
    return np.argmax(z, axis=1)


# ---------------------------------------------------------------------------- help, version


def test_help_lists_the_commands(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("train", "evaluate", "gradcheck"):
        assert re.search(rf"^\s+{command}\b", out, re.M), out


@pytest.mark.parametrize("command, flag", [("train", "--resume"), ("evaluate", "--checkpoint"),
                                           ("gradcheck", "--reference")])
def test_each_command_has_help(capsys, command, flag):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: funcnn {command}") and flag in out


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith(f"funcnn {funcnn.__version__} (numpy ")


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run_cli(capsys)
    assert code == 2 and "choose a command" in err and "Traceback" not in err


@pytest.mark.slow
def test_python_dash_m_funcnn():
    proc = run_module("--help")
    assert proc.returncode == 0 and "gradcheck" in proc.stdout, proc.stderr


EDITABLE_INSTALL = """\
import sys
from importlib.machinery import PathFinder
from importlib.util import spec_from_file_location

PACKAGE = {package!r}

class _Editable:  # what `pip install -e .` installs: a finder after the path's
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "funcnn":
            return spec_from_file_location(name, PACKAGE + "/__init__.py")
        if name.rpartition(".")[0] == "funcnn":
            return PathFinder.find_spec(name, [PACKAGE])
        return None

# right after the path finder (ahead of the finder of any real editable install of funcnn)
sys.meta_path.insert(sys.meta_path.index(PathFinder) + 1, _Editable)
"""


@pytest.mark.slow
def test_python_dash_m_funcnn_beside_a_clone_named_funcnn(tmp_path):
    """From the folder holding a clone `funcnn/` (no __init__.py: the repository, not the
    package), `python -m funcnn` imports the clone as a namespace package ahead of an
    editable install; the command says so in two lines instead of a traceback."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(EDITABLE_INSTALL.format(package=str(ROOT / "funcnn")))
    parent = tmp_path / "parent"
    (parent / "funcnn").mkdir(parents=True)
    (parent / "funcnn" / "README.md").write_text("# funcnn\n")
    env = {"PYTHONPATH": str(shim)}
    proc = run_module("--help", env=env, cwd=parent)
    assert proc.returncode == 1 and proc.stdout == ""
    assert_short_error(proc.stderr, str(parent / "funcnn"), "hides the installed funcnn",
                       "another folder")
    # the same install works from any other folder: the shim is a faithful install
    proc = run_module("--version", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("funcnn "), proc.stderr


@pytest.mark.slow
def test_the_funcnn_script_is_declared_and_installed():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"funcnn": "funcnn.cli:main"}
    script = Path(sys.executable).parent / ("funcnn.exe" if os.name == "nt" else "funcnn")
    assert script.exists(), f"no {script}: reinstall the package (pip install -e .)"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("funcnn "), proc.stderr


# ---------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("argv, needle", [
    (["train", "--hidden", "512,x"], "--hidden"),
    (["train", "--activation", "relu6"], "--activation"),
    (["train", "--dropout", "1.5"], "--dropout"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--backend", "torch"], "--backend"),
    (["train", "--early-stopping", "3", "--validation", "0"], "--early-stopping"),
    (["train", "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["train", "--bogus"], "--bogus"),
    (["evaluate"], "--checkpoint"),
    (["gradcheck", "--output", "identity", "--loss", "cross_entropy"], "cross_entropy"),
    (["gradcheck", "--reference", "torch"], "--reference"),
    (["fly"], "fly"),
])
def test_usage_errors_exit_2_in_two_lines(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert_short_error(err, needle)
    assert out == ""


def numeric_flags() -> list[tuple[str, str]]:
    """``(command, flag)`` for every flag of every command that takes a value through a
    ``type=`` function (numbers and widths)."""
    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    return [(name, action.option_strings[-1]) for name, parser in commands.items()
            for action in parser._actions if action.type is not None]


def test_every_command_has_numeric_flags():
    """The contract test below covers the flags it should (no silent empty list)."""
    flags = numeric_flags()
    for expected in [("train", "--warmup-epochs"), ("train", "--seed"), ("train", "--lr"),
                     ("gradcheck", "--seed"), ("gradcheck", "--rows"), ("gradcheck", "--rtol")]:
        assert expected in flags


@pytest.mark.parametrize("command, flag", numeric_flags())
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1", "1e400", "0x10", "ten"])
def test_every_numeric_flag_refuses_odd_numbers_in_one_line(capsys, command, flag, value):
    """inf, nan, negative, overflowing or non-numbers: a usage error (exit 2) naming the
    flag, never a traceback from deep inside training."""
    code, out, err = run_cli(capsys, command, f"{flag}={value}")
    assert code == 2, err
    assert_short_error(err, flag, repr(value))
    assert out == ""


@pytest.mark.parametrize("argv, needle", [
    (["train", "--seed", str(2**64)], "--seed"),
    (["train", "--seed", str(2**64 - 2)], "--seed"),  # train also uses SEED+2
    (["gradcheck", "--seed", str(2**64)], "--seed"),
    (["train", "--hidden", "512,10000000"], "--hidden"),
    (["gradcheck", "--n-in", str(10**30)], "--n-in"),
    (["gradcheck", "--rows", "0"], "--rows"),
    (["gradcheck", "--n-out", str(10**7)], "--n-out"),
])
def test_huge_and_out_of_range_integers_are_usage_errors(capsys, argv, needle):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert_short_error(err, needle)


@pytest.mark.slow
def test_the_largest_seed_is_accepted(capsys):
    code, out, err = run_cli(capsys, "gradcheck", "--seed", str(2**64 - 3), "--hidden", "3")
    assert code == 0, err
    assert last_json(out)["ok"] is True


def test_ctrl_c_before_the_command_starts_is_one_line(capsys, monkeypatch):
    """Ctrl-C while jax is imported (building the parser asks whether it can be)."""
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(funcnn.backend, "jax_available", interrupted)
    code, out, err = run_cli(capsys, "gradcheck")
    assert code == 130 and out == ""
    assert err.strip() == "funcnn: interrupted"


def test_ctrl_c_during_a_command_is_one_line(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(funcnn.testing, "check_grads", interrupted)
    code, out, err = run_cli(capsys, "gradcheck")
    assert code == 130
    assert err.strip() == "funcnn: interrupted"


INTERRUPT_JAX_IMPORT = """\
import sys

class _CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "jax":
            raise KeyboardInterrupt

sys.meta_path.insert(0, _CtrlC())
"""


@pytest.mark.slow
def test_ctrl_c_while_jax_imports_through_python_dash_m(tmp_path):
    """The first second of `python -m funcnn train`: jax being imported. A sitecustomize
    hook raises KeyboardInterrupt there, as Ctrl-C would."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(INTERRUPT_JAX_IMPORT)
    proc = run_module("train", "--out", tmp_path / "o",
                      env={"PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])})
    assert proc.returncode == 130
    assert proc.stderr.strip() == "funcnn: interrupted", proc.stderr


CTRL_C_IN_A_GC_CALLBACK = """\
import gc, os, signal, sys

def _ctrl_c_once(phase, info):
    gc.callbacks.remove(_ctrl_c_once)
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):  # Python runs the SIGINT handler here, inside the callback
        pass

class _CtrlCWhileJaxImports:
    def find_spec(self, name, path=None, target=None):
        if name == "jax":
            sys.meta_path.remove(self)
            gc.callbacks.append(_ctrl_c_once)
            gc.collect()

sys.meta_path.insert(0, _CtrlCWhileJaxImports())
"""


@pytest.mark.slow
def test_ctrl_c_lost_in_a_gc_callback_while_jax_imports(tmp_path):
    """jax runs a callback at every garbage collection, many while it is imported: a
    KeyboardInterrupt raised there is printed as 'Exception ignored' and dropped, and the
    command went on as if no Ctrl-C had come. A real SIGINT handled inside a gc callback
    during `import jax` must still stop the command, in one line."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(CTRL_C_IN_A_GC_CALLBACK)
    proc = run_module("gradcheck", env={"PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])})
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "funcnn: interrupted" and proc.stdout == ""


def test_out_of_memory_is_one_line(capsys, monkeypatch):
    def too_big(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.28 TiB for an array with shape (10**6, 10**6)")

    monkeypatch.setattr(funcnn, "init_params", too_big)
    code, out, err = run_cli(capsys, "gradcheck", "--hidden", "1000000,1000000")
    assert code == 1 and out == ""
    assert_short_error(err, "out of memory", "7.28 TiB", "--hidden")


# ---------------------------------------------------------------------------- gradcheck


def leaf_rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if line.startswith("params[")]


@pytest.mark.parametrize("flags", [
    [],
    ["--activation", "tanh", "--output", "sigmoid"],
    ["--activation", "elu", "--output", "identity", "--dropout", "0.3", "--hidden", "5"],
    ["--activation", "relu", "--reference", "finite_differences", "--dtype", "float32"],
])
@pytest.mark.slow
def test_gradcheck_passes_and_prints_a_row_per_leaf(capsys, flags):
    code, out, err = run_cli(capsys, "gradcheck", *flags)
    assert code == 0, err
    result = last_json(out)
    assert result["ok"] is True
    sizes = result["sizes"]
    shapes = [s for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
              for s in ([n_in, n_out], [n_out])]
    assert [leaf["shape"] for leaf in result["leaves"]] == shapes
    rows = leaf_rows(out)
    assert len(rows) == len(shapes) and all(row[-1] == "pass" for row in rows)
    assert all(leaf["max_rel_error"] <= result["rtol"] for leaf in result["leaves"])
    assert f"OK: {len(shapes)} of {len(shapes)} leaves agree" in out


def test_gradcheck_reports_a_wrong_backward_pass(capsys, monkeypatch):
    """A backward pass whose first-layer bias gradient is 1% off fails on that leaf only."""
    right = funcnn.backward

    def wrong(net, params, cache, y):
        grads = right(net, params, cache, y)
        return (funcnn.Dense(grads[0].W, grads[0].b * 1.01), *grads[1:])

    monkeypatch.setattr(sys.modules["funcnn.testing._grads"], "backward", wrong)  # what it calls
    code, out, err = run_cli(capsys, "gradcheck", "--activation", "tanh")
    assert code == 1
    verdicts = {row[0]: row[-1] for row in leaf_rows(out)}
    assert verdicts.pop("params[0].b") == "FAIL"
    assert set(verdicts.values()) == {"pass"}
    assert last_json(out)["ok"] is False
    assert_short_error(err, "params[0].b", "jax.grad")


def test_gradcheck_falls_back_to_finite_differences_without_jax(capsys, monkeypatch):
    monkeypatch.setattr(funcnn.backend, "jax_available", lambda: False)
    code, out, err = run_cli(capsys, "gradcheck")
    assert code == 0
    assert "jax is not installed" in err and "finite differences" in err
    assert last_json(out)["reference"] == "finite_differences"


@pytest.mark.slow
def test_gradcheck_in_a_python_where_jax_cannot_be_imported(tmp_path):
    proc = run_module("gradcheck", "--activation", "sigmoid",
                      env=blocker(tmp_path / "shim", "jax"))
    assert proc.returncode == 0, proc.stderr
    assert "jax is not installed" in proc.stderr
    assert last_json(proc.stdout)["reference"] == "finite_differences"


# ---------------------------------------------------------------------------- train, evaluate


def evaluated(capsys, model: Path, data: Path) -> tuple[str, dict]:
    """``funcnn evaluate`` of ``model``, which must succeed: its stdout and last JSON line."""
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", model, "--data", data)
    assert code == 0, err
    return out, last_json(out)


def check_run(out_dir: Path, result: dict, *, epochs: int, train_rows: int, test_rows: int):
    """What `funcnn train` writes: a loadable checkpoint with the net, metrics, curves."""
    ckpt = funcnn.load(out_dir / "model.npz")
    assert ckpt.net is not None and ckpt.net.sizes == tuple(result["sizes"])
    assert ckpt.metadata["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)
    assert funcnn.load(out_dir / "checkpoint.npz").metadata["epoch"] == epochs
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert metrics["rows"] == {"train": train_rows, "validation": result["validation_rows"],
                               "test": test_rows}
    assert metrics["epochs_trained"] == epochs == result["epochs"]
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"):
        assert len(metrics["history"][name]) == epochs, name
    assert metrics["test"]["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)
    assert metrics["versions"]["funcnn"] == funcnn.__version__
    assert metrics["versions"]["numpy"] == np.__version__
    assert metrics["machine"]["cpus"] == os.cpu_count()
    assert (out_dir / "curves.png").read_bytes()[:8] == PNG_MAGIC
    return ckpt


@pytest.mark.slow
def test_train_then_evaluate_on_small_idx_files(capsys, digits, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--data", digits, "--limit", 2000, "--epochs", 1,
                             "--out", out_dir, "--no-progress")
    assert code == 0, err
    result = last_json(out)
    assert result["sizes"] == [784, 512, 256, 10]  # the recipe's net
    assert result["train_rows"] == 1800 and result["validation_rows"] == 200
    assert re.search(r"^epoch 1/1 ", err, re.M), err  # --no-progress: one line per epoch
    ckpt = check_run(out_dir, result, epochs=1, train_rows=1800, test_rows=600)
    data = funcnn.data.load_mnist(digits)
    right = numpy_predictions(ckpt.params, data.x_test) == data.y_test
    assert result["test_accuracy"] == pytest.approx(right.mean(), abs=1.5 / len(right))
    assert result["test_accuracy"] > 0.5  # ten classes: chance is 0.1

    out, evaluation = evaluated(capsys, out_dir / "model.npz", digits)
    confusion = np.asarray(evaluation["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == len(data.y_test)
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(data.y_test, minlength=10))
    assert confusion.trace() / confusion.sum() == pytest.approx(evaluation["test_accuracy"])
    assert evaluation["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1.5 / 600)
    np.testing.assert_allclose(evaluation["per_class_accuracy"],
                               np.diag(confusion) / confusion.sum(axis=1))
    for c in range(10):  # the printed table: one row per class, ending in its accuracy
        row = re.search(rf"^\s+{c}((?:\s+\d+){{11}})\s+([\d.]+)%$", out, re.M)
        assert row, out
        assert [int(v) for v in row[1].split()[:10]] == confusion[c].tolist()
    assert (out_dir / "confusion.png").read_bytes()[:8] == PNG_MAGIC


def offline_without_data(monkeypatch, tmp_path: Path) -> None:
    """No MNIST anywhere but where --data points: no $FUNCNN_DATA, an empty cache, no
    network."""
    def offline(url):
        raise OSError("no network in this test")

    monkeypatch.delenv("FUNCNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty cache"))
    monkeypatch.setattr(funcnn.data.mnist, "_fetch", offline)


@pytest.mark.slow
def test_the_next_hint_can_be_pasted(capsys, monkeypatch, digits, tmp_path):
    """The `next:` line after training is a command that works as printed: it carries
    --data (the test images are there, not in the default places) and quotes paths."""
    offline_without_data(monkeypatch, tmp_path)
    out_dir = tmp_path / "my run"
    code, out, err = run_cli(capsys, "train", "--data", digits, "--limit", 600, *QUICK,
                             "--backend", "numpy", "--out", out_dir)
    assert code == 0, err
    trained = last_json(out)
    hint = next(line for line in out.splitlines() if line.startswith("next: "))
    words = shlex.split(hint.removeprefix("next: "))
    assert words[:2] == ["funcnn", "evaluate"] and "--data" in words
    code, out, err = run_cli(capsys, *words[1:])
    assert code == 0, err
    assert last_json(out)["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_train_a_cnn_then_evaluate_it(capsys, digits, tmp_path):
    out_dir = tmp_path / "cnn"
    code, out, err = run_cli(capsys, "train", "--data", digits, "--limit", 400, "--epochs", 1,
                             *NET_FLAGS["cnn"], "--backend", "numpy", "--no-progress",
                             "--out", out_dir)
    assert code == 0, err
    result = last_json(out)
    assert result["sizes"] is None and result["net"].startswith("conv 4-8, dense 128-10 net")
    assert result["train_rows"] == 360 and result["validation_rows"] == 40
    assert re.search(r"^epoch 1/1 ", err, re.M), err
    model = funcnn.load(out_dir / "model.npz")
    net = model.net
    assert type(net) is funcnn.Net and net.in_shape == (28, 28, 1) and net.keeps_state
    assert [type(layer).__name__ for layer in net.layers] == [
        "Conv2D", "MaxPool2D", "BatchNorm", "Activation"] * 2 + [
        "Flatten", "Dense", "BatchNorm", "Activation", "Dense"]
    assert [layer.filters for layer in net.layers[::4][:2]] == [4, 8]
    init = funcnn.init_state(net)
    for got, start in zip(model.state, init, strict=True):  # the running statistics moved
        if got:
            assert not np.allclose(got.mean, start.mean) and not np.allclose(got.var, start.var)
    ckpt = funcnn.load(out_dir / "checkpoint.npz")
    assert ckpt.metadata["epoch"] == 1 and ckpt.net == net
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["config"]["model"] == "cnn"
    assert metrics["config"]["optimizer"] == "adam" and metrics["config"]["lr"] == 1e-2
    assert metrics["config"]["hidden"] is None and metrics["config"]["channels"] == [4, 8]
    assert (out_dir / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert f"next: funcnn evaluate --checkpoint {out_dir / 'model.npz'}" in out
    # the test accuracy in evaluation mode (the running statistics), through the layers
    data = funcnn.data.load_mnist(digits)
    z, _, _ = funcnn.layers.Serial(net.layers).forward(
        model.params, model.state, data.x_test.reshape(-1, 28, 28, 1), train=False)
    right = np.argmax(np.asarray(z), axis=1) == data.y_test
    assert result["test_accuracy"] == pytest.approx(right.mean(), abs=1.5 / len(right))
    assert result["test_accuracy"] > 0.2  # ten classes: chance is 0.1

    out, evaluation = evaluated(capsys, out_dir / "model.npz", digits)
    assert evaluation["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-9)
    assert evaluation["test_loss"] == pytest.approx(result["test_loss"], rel=1e-5)
    assert np.trace(evaluation["confusion"]) == round(right.sum())
    assert "conv 4-8, dense 128-10 net" in out and (out_dir / "confusion.png").exists()


@pytest.mark.slow
def test_train_a_cnn_on_jax_through_python_dash_m(digits, tmp_path):
    out_dir = tmp_path / "cnn"
    result = run_module("train", "--data", digits, "--limit", 300, "--epochs", 1,
                        "--model", "cnn", "--backend", "jax", "--no-progress", "--out", out_dir)
    assert result.returncode == 0, result.stderr
    trained = json.loads(result.stdout.strip().splitlines()[-1])
    assert trained["backend"] == "jax" and trained["net"].startswith("conv 16-32, dense 128")
    result = run_module("evaluate", "--checkpoint", out_dir / "model.npz", "--data", digits)
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout.strip().splitlines()[-1])
    assert evaluated["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-5)


@pytest.mark.parametrize("argv, flag, model", [
    (["--model", "cnn", "--hidden", "32"], "--hidden", "mlp"),
    (["--model", "cnn", "--activation", "tanh"], "--activation", "mlp"),
    (["--model", "cnn", "--dropout", "0"], "--dropout", "mlp"),
    (["--channels", "8,16"], "--channels", "cnn"),
    (["--model", "mlp", "--channels", "8"], "--channels", "cnn"),
])
def test_flags_of_the_other_model_are_refused_in_one_line(capsys, tmp_path, argv, flag, model):
    code, out, err = run_cli(capsys, "train", *argv, "--out", tmp_path / "out")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert_short_error(err, f"{flag} applies to --model {model} only")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, want", [
    ([], {"model": "mlp", "optimizer": "adamw", "lr": 2e-3, "epochs": 20, "warmup_epochs": 1.0,
          "hidden": (512, 256), "activation": "relu", "dropout": 0.2, "channels": None}),
    (["--model", "cnn"], {"optimizer": "adam", "lr": 1e-2, "epochs": 8, "warmup_epochs": 0.25,
                          "hidden": None, "activation": None, "dropout": None,
                          "channels": (16, 32)}),
    (["--model", "cnn", "--optimizer", "sgd"], {"optimizer": "sgd", "lr": 0.05}),
    (["--model", "cnn", "--lr", "0.5", "--epochs", "2"], {"lr": 0.5, "epochs": 2}),
    (["--model", "cnn", "--channels", "12"], {"channels": (12,)}),
])
def test_each_model_has_the_defaults_of_its_recipe(argv, want):
    args = build_parser().parse_args(["train", *argv])
    funcnn.cli._train.resolve_model_flags(args)
    assert {k: getattr(args, k) for k in want} == want


def test_the_cnn_has_the_layers_of_the_example():
    """`--model cnn` is examples/cnn_mnist.py's default net, layer for layer."""
    spec = importlib.util.spec_from_file_location("cnn_mnist", ROOT / "examples" / "cnn_mnist.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = build_parser().parse_args(["train", "--model", "cnn"])
    funcnn.cli._train.resolve_model_flags(args)
    net = funcnn.cli._train.build_net(args, 784)
    assert net.layers == example.NETS[example.parse_args([]).net]().layers


def test_the_next_hint_without_data_has_no_data_flag():
    hint = funcnn.cli._train.next_command(Path("runs/mnist/model.npz"), None)
    assert hint == "funcnn evaluate --checkpoint runs/mnist/model.npz"


@pytest.mark.slow
def test_train_and_evaluate_on_real_mnist(capsys, mnist_dir, tmp_path):
    code, out, err = run_cli(capsys, "train", "--data", mnist_dir, "--limit", 2000,
                             "--epochs", 1, "--out", tmp_path, "--no-progress")
    assert code == 0, err
    result = last_json(out)
    check_run(tmp_path, result, epochs=1, train_rows=1800, test_rows=10_000)
    # one epoch of 15 steps on 1800 images, all of them warm-up: far above chance (0.1)
    assert result["test_accuracy"] > 0.5
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "model.npz",
                             "--data", mnist_dir)
    assert code == 0, err
    assert last_json(out)["test_accuracy"] == pytest.approx(result["test_accuracy"],
                                                            abs=1.5e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_resume_after_an_interruption_is_bit_identical(capsys, monkeypatch, digits, tmp_path,
                                                       backend, model):
    """Ctrl-C after epoch 1 of 2, then --resume: the same checkpoint as an unbroken run
    (the cnn's BatchNorm statistics included)."""
    flags = ["train", "--data", digits, "--limit", 600, *NET_FLAGS[model], "--epochs", 2,
             "--backend", backend, "--no-progress", "--early-stopping", 5]
    code, out, err = run_cli(capsys, *flags, "--out", tmp_path / "whole")
    assert code == 0, err
    whole = last_json(out)

    save = funcnn.callbacks.save_fit_state

    def save_then_interrupt(path, net, state):
        save(path, net, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(funcnn.callbacks, "save_fit_state", save_then_interrupt)
    code, _, err = run_cli(capsys, *flags, "--out", tmp_path / "broken")
    assert code == 130 and "--resume" in err and "Traceback" not in err
    assert funcnn.load(tmp_path / "broken" / "checkpoint.npz").metadata["epoch"] == 1
    monkeypatch.setattr(funcnn.callbacks, "save_fit_state", save)
    code, out, err = run_cli(capsys, *flags, "--out", tmp_path / "broken", "--resume")
    assert code == 0, err
    resumed = last_json(out)

    a = funcnn.load(tmp_path / "whole" / "checkpoint.npz")
    b = funcnn.load(tmp_path / "broken" / "checkpoint.npz")
    model_a = funcnn.load(tmp_path / "whole" / "model.npz")
    model_b = funcnn.load(tmp_path / "broken" / "model.npz")
    got = funcnn.tree.tree_leaves((b.params, b.opt_state, b.state, model_b.params, model_b.state))
    want = funcnn.tree.tree_leaves((a.params, a.opt_state, a.state, model_a.params, model_a.state))
    assert len(got) == len(want) and (len(a.state) > 0) == (model == "cnn")
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)  # bit for bit
    assert b.metadata["epoch"] == a.metadata["epoch"] == 2
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_array_equal(b.metadata["history"][name], a.metadata["history"][name])
    np.testing.assert_array_equal([resumed["test_loss"], resumed["test_accuracy"]],
                                  [whole["test_loss"], whole["test_accuracy"]])


# ---------------------------------------------------------------------------- user errors


def test_train_with_a_missing_data_folder(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--data", tmp_path / "nowhere", *QUICK,
                             "--out", tmp_path / "out")
    assert code == 1 and out == ""
    assert_short_error(err, "nowhere", "no such folder")


def test_data_given_a_file(capsys, tmp_path):
    notes = tmp_path / "mnist.gz"
    notes.write_bytes(b"not a folder")
    for command in (["train", *QUICK, "--out", tmp_path / "o"],
                    ["evaluate", "--checkpoint", tmp_path / "model.npz"]):
        code, out, err = run_cli(capsys, *command, "--data", notes)
        if command[0] == "evaluate":  # the checkpoint is read first: give it one
            assert "no checkpoint file" in err
            continue
        assert code == 1 and out == ""
        assert_short_error(err, "mnist.gz", "is a file", "a folder is expected")
        assert "no such folder" not in err


def with_label(digits: Path, folder: Path, split: str, label: int, at: int) -> Path:
    """A copy of the digits whose ``split`` ("train" or "t10k") has ``label`` at ``at``."""
    folder.mkdir()
    for name in MNIST_FILES:
        (folder / f"{name}.gz").write_bytes((digits / f"{name}.gz").read_bytes())
    data = funcnn.data.load_mnist(digits)
    labels = (data.y_train if split == "train" else data.y_test).astype(np.uint8)
    labels[at] = label
    funcnn.data.write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.mark.parametrize("split, label, at", [("t10k", 10, 7), ("train", 10, 1234),
                                              ("t10k", 255, 0)])
def test_labels_out_of_range_are_refused_before_training(capsys, digits, tmp_path, split,
                                                         label, at):
    """A bad label anywhere (also in the test set, used only after training) stops the
    run before it trains: one line naming the file, the label and where; nothing written."""
    bad = with_label(digits, tmp_path / "bad", split, label, at)
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--data", bad, *QUICK, "--limit", 600,
                             "--backend", "numpy", "--out", out_dir)
    assert code == 1 and out == ""
    assert_short_error(err, f"{split}-labels-idx1-ubyte", f"label {label} at index {at}",
                       "0 to 9")
    assert not (out_dir / "metrics.json").exists() and not (out_dir / "checkpoint.npz").exists()
    assert "epoch" not in err


def test_evaluate_refuses_labels_out_of_range(capsys, digits, tmp_path):
    bad = with_label(digits, tmp_path / "bad", "t10k", 10, 3)
    model = save_checkpoint(tmp_path / "model.npz", funcnn.MLP((784, 16, 10)))
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", model, "--data", bad)
    assert code == 1 and out == ""
    assert_short_error(err, "t10k-labels-idx1-ubyte", "label 10 at index 3")


def test_more_steps_than_a_run_can_count(capsys, digits, tmp_path):
    """On jax the optimizer counts steps in int32: refused before training, not an
    OverflowError from a jitted call."""
    code, out, err = run_cli(capsys, "train", "--data", digits, "--limit", 600, "--epochs",
                             10**12, "--out", tmp_path, "--no-progress")
    assert code == 2 and out == ""
    assert_short_error(err, "--epochs", str(2**31 - 1))
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_huge_values_that_make_sense_train(capsys, digits, tmp_path):
    """Values past the data (more rows, a bigger batch, more patience, a longer warm-up
    than there is) are allowed, and clipped to what there is."""
    huge = str(10**30)
    code, out, err = run_cli(capsys, "train", "--data", digits, "--limit", huge, "--batch-size",
                             huge, "--early-stopping", huge, "--warmup-epochs", "1e300",
                             "--hidden", "8", "--epochs", "1", "--backend", "numpy",
                             "--no-progress", "--out", tmp_path)
    assert code == 0, err
    assert last_json(out)["train_rows"] == 2160  # 90% of the 2400 training digits


def test_train_with_files_missing(capsys, digits, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in MNIST_FILES[:3]:
        (partial / f"{name}.gz").write_bytes((digits / f"{name}.gz").read_bytes())
    code, _, err = run_cli(capsys, "train", "--data", partial, *QUICK, "--out", tmp_path / "o")
    assert code == 1
    assert_short_error(err, "lacks", MNIST_FILES[3])


def test_train_with_a_corrupt_file(capsys, digits, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in MNIST_FILES:
        data = (digits / f"{name}.gz").read_bytes()
        (broken / f"{name}.gz").write_bytes(data[: len(data) // 2] if "t10k-images" in name
                                            else data)
    code, _, err = run_cli(capsys, "train", "--data", broken, *QUICK, "--out", tmp_path / "o")
    assert code == 1
    assert_short_error(err, "cannot read the MNIST files", "t10k-images-idx3-ubyte.gz")


def test_train_with_images_of_the_wrong_size(capsys, digits, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for name in MNIST_FILES:
        (small / f"{name}.gz").write_bytes((digits / f"{name}.gz").read_bytes())
    funcnn.data.write_idx(small / "train-images-idx3-ubyte.gz", np.zeros((5, 8, 8), np.uint8))
    code, _, err = run_cli(capsys, "train", "--data", small, *QUICK, "--out", tmp_path / "o")
    assert code == 1
    assert_short_error(err, "(n, 28, 28)")


def test_train_without_data_anywhere_and_no_network(capsys, monkeypatch, tmp_path):
    offline_without_data(monkeypatch, tmp_path)
    code, _, err = run_cli(capsys, "train", *QUICK, "--out", tmp_path / "o")
    assert code == 1
    assert_short_error(err, "MNIST files not found", "--data")


def test_train_on_jax_without_jax(capsys, monkeypatch, digits, tmp_path):
    monkeypatch.setattr(funcnn.backend, "jax_available", lambda: False)
    code, _, err = run_cli(capsys, "train", "--data", digits, "--backend", "jax", *QUICK,
                           "--out", tmp_path / "o")
    assert code == 1
    assert_short_error(err, "--backend jax needs jax", "--backend numpy")


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_train_into_an_unwritable_out(capsys, digits, tmp_path, where):
    blocker_file = tmp_path / "taken"
    blocker_file.write_text("not a folder")
    out_dir = blocker_file if where == "a file" else blocker_file / "run"
    code, _, err = run_cli(capsys, "train", "--data", digits, *QUICK, "--out", out_dir)
    assert code == 1
    assert_short_error(err, "--out", str(out_dir))


def test_training_that_diverges(capsys, digits, tmp_path):
    code, out, err = run_cli(capsys, "train", "--data", digits, "--limit", 600, *QUICK,
                             "--backend", "numpy", "--optimizer", "sgd", "--lr", "1e30",
                             "--schedule", "constant", "--out", tmp_path)
    assert code == 1 and out == ""
    assert_short_error(err, "training diverged", "--lr")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "training diverged" in metrics["error"]


@pytest.mark.slow
def test_an_interrupted_run_keeps_the_history_of_its_finished_epochs(capsys, monkeypatch,
                                                                     digits, tmp_path):
    """Ctrl-C after epoch 1, --resume, Ctrl-C after epoch 2, --resume: each time
    metrics.json holds the epochs the checkpoint holds, with their history."""
    flags = ["train", "--data", digits, "--limit", 600, "--hidden", 16, "--epochs", 3,
             "--backend", "numpy", "--no-progress", "--out", tmp_path]
    save = funcnn.callbacks.save_fit_state
    saves = []

    def save_then_interrupt(path, net, state):
        save(path, net, state)
        saves.append(state.epoch)
        raise KeyboardInterrupt

    monkeypatch.setattr(funcnn.callbacks, "save_fit_state", save_then_interrupt)
    for resume, epochs in (([], 1), (["--resume"], 2)):
        code, out, err = run_cli(capsys, *flags, *resume)
        assert code == 130 and out == "" and "Traceback" not in err
        assert f"holds epoch {epochs}, the last finished" in err
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        saved = funcnn.load(tmp_path / "checkpoint.npz").metadata
        assert metrics["status"] == "interrupted" and saved["epoch"] == epochs
        assert metrics["epochs_trained"] == epochs
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"):
            assert metrics["history"][name] == pytest.approx(saved["history"][name], abs=0), name
            assert len(metrics["history"][name]) == epochs
    monkeypatch.setattr(funcnn.callbacks, "save_fit_state", save)
    code, out, err = run_cli(capsys, *flags, "--resume")
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and len(metrics["history"]["val_loss"]) == 3
    assert saves == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_ctrl_c_during_an_epoch_stops_when_it_ends(capsys, monkeypatch, digits, tmp_path,
                                                   backend):
    """A real SIGINT in the middle of epoch 2's checkpoint write: the write completes, the
    run stops after epoch 2 (not inside jax, which can crash the process at exit), and
    --resume continues from it."""
    save = funcnn.callbacks.save_fit_state

    def save_with_ctrl_c(path, net, state):
        if state.epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)  # noted, not raised: the save goes on
        save(path, net, state)

    monkeypatch.setattr(funcnn.callbacks, "save_fit_state", save_with_ctrl_c)
    flags = ["train", "--data", digits, "--limit", 600, "--hidden", 16, "--epochs", 4,
             "--backend", backend, "--no-progress", "--out", tmp_path]
    code, out, err = run_cli(capsys, *flags)
    assert code == 130 and out == "" and "Traceback" not in err
    assert "Ctrl-C: stopping when this epoch ends" in err
    assert "holds epoch 2, the last finished" in err
    assert re.search(r"^epoch 2/4 .*\n\ninterrupted: ", err, re.M), err  # shown, then stop
    assert funcnn.load(tmp_path / "checkpoint.npz").metadata["epoch"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_trained"] == 2
    monkeypatch.setattr(funcnn.callbacks, "save_fit_state", save)
    code, out, err = run_cli(capsys, *flags, "--resume")
    assert code == 0, err
    assert last_json(out)["epochs"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_second_ctrl_c_stops_at_once(capsys, monkeypatch, digits, tmp_path):
    def save_with_two_ctrl_c(path, net, state):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the second Ctrl-C did not stop the run at once")

    monkeypatch.setattr(funcnn.callbacks, "save_fit_state", save_with_two_ctrl_c)
    code, _, err = run_cli(capsys, "train", "--data", digits, "--limit", 300, *QUICK,
                           "--hidden", 8, "--backend", "numpy", "--out", tmp_path)
    assert code == 130 and "Traceback" not in err
    assert "interrupted before the first epoch ended" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
def test_ctrl_c_while_jax_trains_exits_130(digits, tmp_path):
    """The whole process, a real Ctrl-C during the jax training of epoch 2 or later: exit
    130 after the epoch (an interrupt inside jax used to end in a segmentation fault)."""
    # a Python handler here becomes the default one in the child (not so an ignored
    # SIGINT, as in a shell's background job); no preexec_fn: jax warns of a fork
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "funcnn", "train", "--data", str(digits), "--limit", "2000",
             "--hidden", "64", "--epochs", "200", "--backend", "jax", "--no-progress",
             "--out", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        lines = []
        for line in proc.stderr:  # wait for epoch 1 to end
            lines.append(line)
            if line.startswith("epoch 1/200"):
                break
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=300)
    finally:
        proc.kill()
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Ctrl-C: stopping when this epoch ends" in err
    held = int(re.search(r"holds epoch (\d+), the last finished", err)[1])
    # the Ctrl-C lands after epoch 1's line: acted on at that epoch's end or a later one
    assert 1 <= held < 200
    assert funcnn.load(tmp_path / "checkpoint.npz").metadata["epoch"] == held


def test_interrupted_before_the_first_epoch_ends(capsys, monkeypatch, digits, tmp_path):
    """Even when an older checkpoint is in --out, nothing of this run can be resumed."""
    save_checkpoint(tmp_path / "checkpoint.npz", funcnn.MLP((784, 16, 10)))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(funcnn.callbacks, "save_fit_state", interrupt)
    code, _, err = run_cli(capsys, "train", "--data", digits, "--limit", 300, *QUICK,
                           "--hidden", 8, "--backend", "numpy", "--out", tmp_path)
    assert code == 130
    assert "interrupted before the first epoch ended: nothing to resume from" in err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["epochs_trained"] == 0


def test_resume_with_other_flags_is_refused(capsys, digits, tmp_path):
    code, _, err = run_cli(capsys, "train", "--data", digits, "--limit", 600, *QUICK,
                           "--backend", "numpy", "--out", tmp_path)
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--data", digits, "--limit", 600, *QUICK,
                           "--backend", "numpy", "--out", tmp_path, "--resume", "--lr", "0.1")
    assert code == 2
    assert_short_error(err, "--resume", "--lr 0.002 (now 0.1)")


def test_resume_from_the_checkpoint_of_another_net(capsys, digits, tmp_path):
    """No metrics.json to compare flags with: the checkpoint's own net spec is checked."""
    net = funcnn.MLP((784, 7, 10))
    funcnn.callbacks.save_fit_state(tmp_path / "checkpoint.npz", net, funcnn.callbacks.FitState(
        funcnn.init_params(net, 0), None, 1, funcnn.random.key(0),
        {"loss": [], "train_loss": [], "train_accuracy": [], "val_loss": [],
         "val_accuracy": [], "seconds": []}, None))
    code, _, err = run_cli(capsys, "train", "--data", digits, "--limit", 600, *QUICK,
                           "--backend", "numpy", "--out", tmp_path, "--resume")
    assert code == 1
    assert_short_error(err, "cannot resume", "checkpoint.npz")


def test_resume_without_a_checkpoint_says_so(capsys, digits, tmp_path):
    code, out, err = run_cli(capsys, "train", "--data", digits, "--limit", 600, *QUICK,
                             "--backend", "numpy", "--out", tmp_path, "--resume")
    assert code == 0
    assert "no checkpoint at" in err and "starting from scratch" in err
    assert last_json(out)["epochs"] == 1


def save_checkpoint(path: Path, net=None, sizes=(784, 16, 10)) -> Path:
    params = funcnn.init_params(funcnn.MLP(sizes), 0)
    funcnn.save(path, params, net=net)
    return path


@pytest.mark.parametrize("case, needles", [
    ("missing", ["no checkpoint file", "missing.npz"]),
    ("a folder", ["folder.npz"]),
    ("garbage", ["garbage.npz"]),
    ("truncated", ["truncated.npz"]),
    ("no net", ["no net spec", "net=net"]),
    ("another net", ["5-3 MLP", "784 inputs"]),
])
def test_evaluate_a_bad_checkpoint(capsys, digits, tmp_path, case, needles):
    if case == "missing":
        path = tmp_path / "missing.npz"
    elif case == "a folder":
        path = tmp_path / "folder.npz"
        path.mkdir()
    elif case == "garbage":
        path = tmp_path / "garbage.npz"
        path.write_bytes(b"this is not a checkpoint" * 10)
    elif case == "truncated":
        whole = save_checkpoint(tmp_path / "whole.npz", funcnn.MLP((784, 16, 10))).read_bytes()
        path = tmp_path / "truncated.npz"
        path.write_bytes(whole[: len(whole) // 2])
    elif case == "no net":
        path = save_checkpoint(tmp_path / "bare.npz")
    else:
        path = save_checkpoint(tmp_path / "small.npz", funcnn.MLP((5, 3)), sizes=(5, 3))
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", path, "--data", digits)
    assert code == 1 and out == ""
    assert_short_error(err, *needles)


def _swish(z):
    return z * funcnn.activations.sigmoid(z)


def _swish_grad(z, a):
    s = funcnn.activations.sigmoid(z)
    return s + a * (1 - s)


SWISH = funcnn.activations.Activation("swish", _swish, _swish_grad)
MY_CE = funcnn.losses.Loss("my_ce", funcnn.losses.cross_entropy,
                           funcnn.losses.cross_entropy_delta, ("softmax",))


@pytest.mark.parametrize("field, piece, needles", [
    ("hidden", SWISH, ["custom activation 'swish' (hidden)", "hidden=<your activation>"]),
    ("loss", MY_CE, ["custom loss 'my_ce' (loss)", "loss=<your loss>"]),
    (None, SWISH, ["custom activation 'swish' (layers[0].activation)", "funcnn.Net(",
                   "state=ckpt.state"]),
])
def test_evaluate_a_net_with_a_custom_piece(capsys, digits, tmp_path, field, piece, needles):
    """A file keeps only the name of a custom activation or loss: the command line cannot
    run it, and says so (and how to evaluate it in Python) in two lines."""
    if field is None:  # inside a layer of a Net
        L = funcnn.layers
        net = funcnn.Net([L.Dense(16, activation=piece), L.BatchNorm(), L.Dense(10)], (784,))
    else:
        net = funcnn.MLP((784, 16, 10), **{field: piece})
    path = tmp_path / "custom.npz"
    funcnn.save(path, funcnn.init_params(net, 0), net=net, state=funcnn.init_state(net))
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", path, "--data", digits)
    assert code == 1 and out == ""
    assert_short_error(err, "custom.npz", "only Python can evaluate it", "funcnn.load(path, "
                       "net=net)", *needles)
    # the advice works: with the net given, funcnn.load rebuilds the net
    assert funcnn.load(path, net=net).net == net


@pytest.mark.slow
def test_user_errors_through_python_dash_m(tmp_path):
    proc = run_module("train", "--data", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert proc.returncode == 1 and proc.stdout == ""
    assert_short_error(proc.stderr, "no such folder")
    proc = run_module("evaluate", "--checkpoint", tmp_path / "none.npz")
    assert proc.returncode == 1
    assert_short_error(proc.stderr, "no checkpoint file")
    proc = run_module("train", "--dropout", "2")
    assert proc.returncode == 2
    assert_short_error(proc.stderr, "--dropout")


@pytest.mark.slow
def test_train_without_matplotlib_and_tqdm(digits, tmp_path):
    """The jax extra alone: no curves.png (said on stderr), and epochs printed as lines."""
    proc = run_module("train", "--data", digits, "--limit", 600, "--hidden", 32,
                      "--epochs", 2, "--backend", "numpy", "--out", tmp_path,
                      env=blocker(tmp_path / "shim", "matplotlib", "tqdm"))
    assert proc.returncode == 0, proc.stderr
    assert "no curves.png: matplotlib is missing" in proc.stderr
    assert re.findall(r"^epoch (\d)/2 ", proc.stderr, re.M) == ["1", "2"]
    assert last_json(proc.stdout)["plot"] is None
    assert not (tmp_path / "curves.png").exists()
    assert (tmp_path / "checkpoint.npz").exists() and (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epoch(capsys, digits, tmp_path):
    """Adam at a high rate: the validation loss turns up, training stops and the model
    written is the one of the lowest validation loss (whatever epoch that is)."""
    patience, epochs = 2, 12
    code, out, err = run_cli(capsys, "train", "--data", digits, "--limit", 1200, "--hidden", 32,
                             "--epochs", epochs, "--early-stopping", patience, "--optimizer",
                             "adam", "--lr", "0.2", "--schedule", "constant", "--seed", 1,
                             "--backend", "numpy", "--no-progress", "--out", tmp_path)
    assert code == 0, err
    result = last_json(out)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    val_loss = metrics["history"]["val_loss"]
    best = int(np.argmin(val_loss))
    assert metrics["history"]["best_epoch"] == [best]
    assert result["epochs"] == min(epochs, best + 1 + patience)
    assert f"kept the params of epoch {best + 1}" in out
    model = funcnn.load(tmp_path / "model.npz")
    assert model.metadata["best_epoch"] == best + 1
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "model.npz",
                             "--data", digits)
    assert code == 0, err
    assert last_json(out)["test_loss"] == pytest.approx(result["test_loss"], rel=1e-5)


# ---------------------------------------------------------------------------- figures and titles


@pytest.mark.parametrize("sizes, dropout, says_dropout", [
    ((784, 10), 0.2, False),  # --hidden none: dropout acts on hidden units only
    ((784, 16, 10), 0.2, True),
    ((784, 16, 10), 0.0, False),
])
def test_a_net_is_said_to_drop_units_only_when_it_does(sizes, dropout, says_dropout):
    net = funcnn.MLP(sizes, dropout=dropout)
    text = funcnn.cli._common.describe_net(net)
    assert ("dropout" in text) == says_dropout, text
    assert funcnn.cli._common.drops_units(net) == says_dropout


def history_of(n: int) -> dict:
    rng = np.random.default_rng(n)
    return {name: list(rng.uniform(0.1, 0.9, n)) for name in
            ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")}


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 12, 45])
def test_curves_have_integer_epoch_ticks_and_visible_points(tmp_path, n):
    """A 1-epoch run: one tick, at 1 (not 0.5, 0.6, ...), and its lone points drawn big."""
    pytest.importorskip("matplotlib")
    fig = funcnn.cli._plots.curves_figure(history_of(n), tmp_path / "c.png", title="t",
                                          test={"loss": 0.5, "accuracy": 0.5}, dropout=False)
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(t == int(t) for t in ticks), ticks
        assert set(ticks) <= set(range(1, n + 1))
        lines = [line for line in ax.get_lines()
                 if line.get_label().startswith(("train", "validation"))]
        assert len(lines) == 2 and all(len(line.get_xdata()) == n for line in lines)
        for line in lines:
            if n <= 5:
                assert line.get_marker() == "o" and line.get_markersize() >= 6
            elif n > 30:
                assert line.get_marker() in (None, "None", "", " ")
        labels = [line.get_label() for line in lines]
        assert not any("dropout" in label for label in labels), labels


# ---------------------------------------------------------------------------- documentation


def test_the_docs_page_explains_every_flag():
    """docs/cli.md has a table row for every flag of every command (no drift)."""
    page = (ROOT / "docs" / "cli.md").read_text()
    sections = dict(re.findall(r"^## `funcnn (\w+)`\n(.*?)(?=^## )", page, re.S | re.M))
    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    assert set(sections) == set(commands)
    for name, parser in commands.items():
        flags = [s for a in parser._actions for s in a.option_strings
                 if s.startswith("--") and s != "--help"]
        missing = [f for f in flags if not re.search(rf"^\| `{f}[ `]", sections[name], re.M)]
        assert not missing, f"docs/cli.md, funcnn {name}: no row for {missing}"
