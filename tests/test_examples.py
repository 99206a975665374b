"""The examples, run end to end as scripts on small settings, and ``check_optimizer``.

Examples that need MNIST are marked ``mnist`` and skip unless ``$FUNCNN_DATA``
holds the four MNIST files (directly or in an ``mnist/`` subfolder); the others
run on synthetic data and always run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _digits import write_digits

import funcnn
from funcnn.data.mnist import FILES as MNIST_FILES
from funcnn.testing import GradientMismatch, check_optimizer
from funcnn.tree import tree_map

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _mnist_folder() -> Path | None:
    env = os.environ.get("FUNCNN_DATA", "")
    if not env:
        return None
    for folder in (Path(env), Path(env) / "mnist"):
        if all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in MNIST_FILES):
            return folder
    return None


@pytest.fixture
def mnist_dir() -> Path:
    folder = _mnist_folder()
    if folder is None:
        reason = ("FUNCNN_DATA is not set" if not os.environ.get("FUNCNN_DATA") else
                  f"FUNCNN_DATA={os.environ['FUNCNN_DATA']} lacks the MNIST files")
        pytest.skip(f"{reason}: the MNIST examples need {', '.join(MNIST_FILES)}")
    return folder


def run_example(script: str, *args, expect_rc: int = 0) -> tuple[str, dict]:
    """Run ``examples/<script>`` with this Python; return its stdout and last line as JSON."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        capture_output=True, text=True, timeout=600, cwd=EXAMPLES.parent,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert proc.returncode == expect_rc, (
        f"{script} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
        f"\n--- stderr\n{proc.stderr[-3000:]}"
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing; stderr:\n{proc.stderr[-3000:]}"
    return proc.stdout, json.loads(lines[-1])


def assert_png(path: Path) -> None:
    assert path.is_file(), f"no plot at {path}"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


# ---------------------------------------------------------------------------- MNIST examples


@pytest.mark.slow
@pytest.mark.mnist
def test_mnist_example(mnist_dir, tmp_path):
    _, result = run_example("mnist.py", "--data", mnist_dir, "--limit", 3000, "--epochs", 2,
                            "--shifted-copies", 1, "--out", tmp_path, "--no-progress")
    # 10% of the 3000 images held out; the other 2700 trained on with one shifted copy each
    assert result["epochs"] == 2 and result["validation_rows"] == 300
    assert result["train_rows"] == 2 * 2700
    assert 0.5 < result["validation_accuracy"] <= 1.0
    assert 0.5 < result["test_accuracy"] <= 1.0
    assert np.isfinite(result["test_loss"])
    assert_png(tmp_path / "mnist_curves.png")
    assert Path(result["plot"]) == tmp_path / "mnist_curves.png"


@pytest.mark.slow
@pytest.mark.mnist
def test_mnist_example_runs_with_the_jax_extra_alone(mnist_dir, tmp_path):
    """`pip install -e ".[jax]"` has no matplotlib or tqdm: the main job still runs."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['matplotlib'] = None\nsys.modules['tqdm'] = None\n"
    )
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "mnist.py"), "--data", str(mnist_dir), "--limit", "2000",
         "--epochs", "1", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=EXAMPLES.parent,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(blocker), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["plot"] is None and result["test_accuracy"] > 0.5
    assert "matplotlib is missing" in proc.stderr
    assert not (tmp_path / "out" / "mnist_curves.png").exists()


@pytest.mark.slow
@pytest.mark.mnist
def test_seed_runs(mnist_dir, tmp_path):
    stdout, result = run_example("seed_runs.py", "--data", mnist_dir, "--limit", 2000,
                                 "--epochs", 2, "--out", tmp_path, "--no-progress")
    acc = result["test_accuracy"]
    assert set(acc) == {"full_batch_gd", "minibatch_sgd", "minibatch_adam"}
    assert all(0.0 <= a <= 1.0 for a in acc.values()), acc
    assert acc["minibatch_adam"] > 0.5, acc  # the one run that learns fast
    for name in acc:  # the table has one row per run
        assert re.search(rf"^{name}\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", stdout, re.M), stdout
    assert_png(tmp_path / "seed_runs.png")


@pytest.mark.slow
@pytest.mark.mnist
def test_custom_loop_mnist(mnist_dir):
    pytest.importorskip("jax")
    _, result = run_example("custom_loop.py", "--data", mnist_dir, "--limit", 3000,
                            "--epochs", 1)
    assert result["data"] == "mnist" and result["train_rows"] == 3000
    assert result["steps"] == 3000 // 128
    assert result["test_accuracy"] > 0.5


# ---------------------------------------------------------------------------- on small IDX files


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """MNIST-layout files written here: the MNIST examples run on them without MNIST."""
    return write_digits(tmp_path_factory.mktemp("digits"))


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module, to call its ``main`` in this process."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("how", ["--no-progress", "without tqdm"])
def test_mnist_example_prints_each_epoch_as_it_ends(capsys, monkeypatch, digits, tmp_path, how):
    """Not all at the end: when epoch k ends, the line of epoch k-1 is already out."""
    if how == "without tqdm":
        monkeypatch.setitem(sys.modules, "tqdm", None)
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    printed_by_epoch = []
    fit = funcnn.fit

    def fit_with_probe(*args, callbacks=(), **kwargs):
        probe = funcnn.callbacks.Callback(
            on_epoch_end=lambda state, info: printed_by_epoch.append(capsys.readouterr().err))
        return fit(*args, callbacks=[*callbacks, probe], **kwargs)

    monkeypatch.setattr(funcnn, "fit", fit_with_probe)
    argv = ["--data", str(digits), "--limit", "600", "--hidden", "32", "--epochs", "3",
            "--backend", "numpy", "--out", str(tmp_path)]
    load_example("mnist").main(argv + (["--no-progress"] if how == "--no-progress" else []))
    printed = "".join(printed_by_epoch) + capsys.readouterr().err
    assert re.findall(r"^epoch (\d)/3 ", printed, re.M) == ["1", "2", "3"], printed
    for k in (2, 3):  # by the end of epoch k, epoch k-1 was printed
        assert f"epoch {k - 1}/3 " in "".join(printed_by_epoch[:k]), printed_by_epoch


def test_mnist_example_validates_on_held_out_training_rows_and_tests_once(
        capsys, monkeypatch, digits, tmp_path):
    """fit validates on training images it never trains on (shifted copies included),
    never on test images; the test set is evaluated once, after training."""
    data = funcnn.data.load_mnist(digits)
    fit, evaluate = funcnn.fit, funcnn.evaluate
    seen, evaluated = {}, []

    def fit_spy(net, params, optimizer, x, y, **kwargs):
        assert not evaluated, "the test set was evaluated before training ended"
        seen["x"], seen["validation"] = np.asarray(x), kwargs["validation"]
        return fit(net, params, optimizer, x, y, **kwargs)

    def evaluate_spy(net, params, x, y, **kwargs):
        evaluated.append(np.asarray(x))
        return evaluate(net, params, x, y, **kwargs)

    monkeypatch.setattr(funcnn, "fit", fit_spy)
    monkeypatch.setattr(funcnn, "evaluate", evaluate_spy)
    load_example("mnist").main(["--data", str(digits), "--limit", "600", "--hidden", "32",
                                "--epochs", "1", "--shifted-copies", "1", "--backend", "numpy",
                                "--out", str(tmp_path), "--no-progress"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    def rows(a) -> set:
        return {row.tobytes() for row in np.asarray(a)}

    images, x_val = rows(data.x_train[:600]), seen["validation"][0]
    assert len(x_val) == 60 == result["validation_rows"]
    assert rows(x_val) <= images  # held out of the training images
    assert not rows(x_val) & rows(data.x_test)  # not the test images
    assert not rows(x_val) & rows(seen["x"])  # and never trained on, shifted or not
    assert len(seen["x"]) == 2 * 540 == result["train_rows"]
    assert rows(seen["x"][:540]) == images - rows(x_val)  # the rest of the images, as they are
    assert len(evaluated) == 1 and np.array_equal(evaluated[0], data.x_test)


@pytest.mark.slow
def test_seed_runs_labels_its_progress_bars(capsys, digits, tmp_path):
    load_example("seed_runs").main(["--data", str(digits), "--limit", "600", "--epochs", "2",
                                    "--backend", "numpy", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    for name in ("full_batch_gd", "minibatch_sgd", "minibatch_adam"):
        assert re.search(rf"{name}: +\d+%\|", err), err  # tqdm's "name:  50%|" prefix
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["test_accuracy"]) == {"full_batch_gd", "minibatch_sgd", "minibatch_adam"}
    assert_png(tmp_path / "seed_runs.png")


# ---------------------------------------------------------------------------- synthetic examples


@pytest.mark.slow
def test_custom_loop_synthetic():
    pytest.importorskip("jax")
    stdout, result = run_example("custom_loop.py", "--synthetic", "--epochs", 2)
    assert result["data"] == "spirals" and result["epochs"] == 2
    assert result["test_accuracy"] > 0.8  # two arms: chance is 0.5
    assert len(re.findall(r"^epoch +\d+ +train loss", stdout, re.M)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["jax", "finite_differences"])
def test_catch_the_bug(reference):
    if reference == "jax":
        pytest.importorskip("jax")
    stdout, result = run_example("catch_the_bug.py", "--reference", reference)
    assert result["ok"] is True and result["reference"] == reference
    assert all(result["as_expected"].values()), result
    # The bugs are named by step and leaf, with their relative errors.
    assert re.search(r"step 1, params\[0\]\.W: relative error", stdout), stdout
    for leaf in ("params[0].W", "params[0].b", "params[1].W", "params[1].b"):
        assert f"  {leaf}: relative error" in stdout, stdout


# ---------------------------------------------------------------------------- check_optimizer


def adam_without_sqrt(params, grads, state, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Adam dividing by the bias-corrected second moment itself: the classic bug."""
    t = state.count + 1
    mu = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
    new = tree_map(lambda p, m, v: p - lr * (m / (1 - b1**t)) / (v / (1 - b2**t) + eps),
                   params, mu, nu)
    return new, funcnn.AdamState(t, mu, nu)


def test_check_optimizer_catches_adam_without_sqrt():
    with pytest.raises(GradientMismatch, match=r"step 1, params\[\d\]\.[Wb]: relative error"):
        check_optimizer(adam_without_sqrt, reference=funcnn.optim.adam(1e-3))


def test_check_optimizer_passes_the_real_adam():
    reports = check_optimizer(funcnn.optim.adam(1e-3).update, reference=funcnn.optim.adam(1e-3),
                              steps=4, key=3)
    assert len(reports) == 4
    assert [r.path for r in reports[0]] == [
        "step 1, params[0].W", "step 1, params[0].b", "step 1, params[1].W", "step 1, params[1].b"]
    assert max(r.rel_error for step in reports for r in step) <= 1e-12


def test_check_optimizer_catches_a_wrong_learning_rate():
    with pytest.raises(GradientMismatch, match=r"step 1, params\[0\]\.W") as info:
        check_optimizer(funcnn.optim.sgd(0.011).update, reference=funcnn.optim.sgd(0.01))
    errors = [float(e) for e in re.findall(r"relative error ([\d.e+-]+)", str(info.value))]
    np.testing.assert_allclose(errors, 0.1, rtol=1e-6)  # 10% off, on every leaf


def test_check_optimizer_names_a_later_step():
    """A bug that shows only from step 3 on is reported at step 3."""
    adam = funcnn.optim.adam(1e-3)

    def late(params, grads, state):
        new, state = adam.update(params, grads, state)
        if int(state.count) >= 3:
            new = tree_map(lambda n, p: p + 2 * (n - p), new, params)  # double the step
        return new, state

    with pytest.raises(GradientMismatch, match=r"step 3, params\[0\]\.W"):
        check_optimizer(late, reference=adam, steps=5)


def test_check_optimizer_on_given_params_and_init():
    params = funcnn.init_params(funcnn.MLP((5, 3, 2)), 1, dtype="float64")
    reports = check_optimizer(funcnn.optim.sgd(0.1, momentum=0.9).update, funcnn.sgd_init,
                              reference=funcnn.optim.sgd(0.1, momentum=0.9), params=params)
    assert len(reports) == 5 and reports[-1][0].path == "step 5, params[0].W"


def test_check_optimizer_explains_a_wrong_structure():
    def drops_a_layer(params, grads, state):
        return params[:1], state

    with pytest.raises(GradientMismatch, match=r"step 1: update returned params of structure"):
        check_optimizer(drops_a_layer, reference=funcnn.optim.sgd(0.1))


# ---------------------------------------------------------------------------- cnn_mnist.py


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "numpy"])
def test_cnn_mnist_synthetic(backend):
    """The convolutional example end to end on synthetic images: it learns, its
    hand-written gradients equal autodiff's, and its JSON line counts the held-out rows."""
    pytest.importorskip("jax")
    # Batches of 32: 34 steps, enough for BatchNorm's running statistics to settle.
    stdout, result = run_example("cnn_mnist.py", "--synthetic", "--limit", 600, "--epochs", 2,
                                 "--batch-size", 32, "--backend", backend, "--seed", 3)
    assert result["data"] == "synthetic" and result["backend"] == backend
    assert (result["train_rows"], result["val_rows"]) == (540, 60)  # 10% of 600 held out
    assert result["epochs"] == 2 and len(result["history"]) == 2
    assert len(re.findall(r"^epoch [12]/2 .* val accuracy", stdout, re.M)) == 2
    assert result["grad_check_max_rel_error"] <= 1e-7  # float64 against jax.grad
    assert 0.5 < result["test_accuracy"] <= 1.0  # ten classes: chance is 0.1
    assert result["history"][1]["train_loss"] < result["history"][0]["train_loss"]


def test_cnn_mnist_holds_out_validation_rows():
    """Validation rows are disjoint from the training rows (by index and by image), come
    from the training file only, and change with the seed."""
    cnn = load_example("cnn_mnist")
    images, labels = cnn.synthetic(1, 600)
    splits = [cnn.load(cnn.parse_args(["--synthetic", "--limit", "600", "--seed", str(seed)]))
              for seed in (0, 1)]
    for split in splits:
        train, val = set(split.train_rows.tolist()), set(split.val_rows.tolist())
        assert not train & val and train | val == set(range(600))
        assert len(val) == 60
        np.testing.assert_array_equal(split.x_train, images[split.train_rows])
        np.testing.assert_array_equal(split.y_val, labels[split.val_rows])
        seen = {img.tobytes() for img in split.x_train}
        assert not any(img.tobytes() in seen for img in split.x_val)
        assert split.x_train.shape[1:] == split.x_test.shape[1:] == (28, 28, 1)
    assert set(splits[0].val_rows.tolist()) != set(splits[1].val_rows.tolist())


@pytest.mark.slow
def test_cnn_mnist_trains_with_fit_state_and_tests_once(capsys, monkeypatch, digits):
    """The example trains through funcnn.fit, one call per epoch on freshly shifted images,
    carrying params, optimizer state and BatchNorm's model state from call to call; it
    validates on held-out training rows and evaluates the test set once, at the end, with
    the model state the last fit returned; its JSON line reports what evaluate returned."""
    data = funcnn.data.load_mnist(digits)
    fit, evaluate = funcnn.fit, funcnn.evaluate
    calls, evaluated = [], []

    def fit_spy(net, params, optimizer, x, y, **kwargs):
        assert not evaluated, "the test set was evaluated before training ended"
        if calls:  # continues from what the previous call returned
            assert kwargs["opt_state"] is calls[-1]["out"][1]
            assert kwargs["state"] is calls[-1]["out"][3]
        else:
            assert kwargs["opt_state"] is None
        out = fit(net, params, optimizer, x, y, **kwargs)
        calls.append({"x": np.asarray(x), "kwargs": kwargs, "out": out})
        return out

    def evaluate_spy(net, params, x, y, **kwargs):
        assert params is calls[-1]["out"][0] and kwargs["state"] is calls[-1]["out"][3]
        result = evaluate(net, params, x, y, **kwargs)
        evaluated.append((np.asarray(x), result))
        return result

    monkeypatch.setattr(funcnn, "fit", fit_spy)
    monkeypatch.setattr(funcnn, "evaluate", evaluate_spy)
    load_example("cnn_mnist").main(["--data", str(digits), "--limit", "600", "--epochs", "2",
                                    "--batch-size", "32", "--backend", "numpy", "--no-check"])
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])

    assert [(c["kwargs"]["initial_epoch"], c["kwargs"]["epochs"]) for c in calls] == [(0, 1),
                                                                                     (1, 2)]
    bn = [s for s in calls[-1]["out"][3] if isinstance(s, funcnn.layers.BatchNormState)]
    assert len(bn) == 3 and all(not np.allclose(s.mean, 0) for s in bn)  # running statistics

    def rows(a) -> set:
        return {row.tobytes() for row in np.asarray(a).reshape(len(a), -1)}

    images = rows(data.x_train[:600])
    x_val = calls[0]["kwargs"]["validation"][0]
    assert len(x_val) == 60 == result["val_rows"] and rows(x_val) <= images
    unshifted = images - rows(x_val)  # the 540 training rows
    for c in calls:
        assert len(c["x"]) == 540 == result["train_rows"]
        assert rows(c["x"]) != unshifted  # shifted...
        assert len(rows(c["x"]) & unshifted) > 540 / 25 / 2  # ...except those drawn (0, 0)
    assert rows(calls[0]["x"]) != rows(calls[1]["x"])  # anew every epoch
    assert len(evaluated) == 1
    x_test, test = evaluated[0]
    np.testing.assert_array_equal(x_test.reshape(len(x_test), -1), data.x_test)
    assert result["test_accuracy"] == pytest.approx(test["accuracy"], abs=1e-6)
    assert result["test_accuracy"] > 0.3  # ten classes: chance is 0.1
    assert len(re.findall(r"^epoch [12]/2 .* val accuracy", out, re.M)) == 2
