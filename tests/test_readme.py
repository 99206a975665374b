"""The README's code runs as written (on MNIST when FUNCNN_DATA holds it)."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_the_two_loops():
    blocks = python_blocks()
    assert len(blocks) == 2
    assert "funcnn.backprop" in blocks[0] and "funcnn.adam_update" in blocks[0]
    assert "funcnn.fit" in blocks[1]


def test_readme_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in text and "test-command" in ci
    assert "python examples/mnist.py --data ../shared/data/mnist" in text
    assert (README.parent / "examples" / "mnist.py").exists()


@pytest.mark.mnist
def test_readme_loops_run_on_mnist():
    data_dir = os.environ.get("FUNCNN_DATA")
    if not data_dir or not Path(data_dir).is_dir():
        pytest.skip("FUNCNN_DATA is not set to a folder with the MNIST files")
    first, second = python_blocks()
    scope: dict = {}
    exec(first.replace("range(5)", "range(1)"), scope)  # one epoch instead of five
    result = scope["funcnn"].evaluate(scope["net"], scope["params"], scope["data"].x_test,
                                      scope["data"].y_test)
    assert result["accuracy"] > 0.9  # one epoch of Adam on MNIST: well above chance
    scope["x"], scope["y"] = scope["data"].x_train[:4096], scope["data"].y_train[:4096]
    exec(second.replace("epochs=10", "epochs=2"), scope)
    history = scope["history"]
    assert len(history["train_loss"]) == 2
    assert history["train_loss"][1] < history["train_loss"][0]
