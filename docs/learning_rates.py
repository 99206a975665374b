"""Accuracy of a few activation x optimizer x learning-rate choices, for docs/training-loop.md.

Trains each combination with ``funcnn.fit`` on NumPy, once per seed (the seed draws the
initial parameters and the batch order), and prints one Markdown table per problem: the
lowest and highest accuracy over the seeds. Problems:

* ``spirals``: the two spirals of the home page (2 000 training points, 1 000 test points,
  noise 0.05), a 2-64-64-2 net, batches of 64, 100 epochs (3 200 steps).
* ``mnist``: 5 000 MNIST training images, a 784-128-10 net, batches of 64, 5 epochs
  (395 steps), measured on 10 000 other training images (the test set stays unused).
  The images come from ``funcnn.data.load_mnist()`` (``$FUNCNN_DATA``).

    python docs/learning_rates.py spirals     # 14 min on 2 cores shared with other jobs
    python docs/learning_rates.py mnist       # 43 min there (load average about 10)

This is a script for the documentation, not part of the site (mkdocs.yml excludes it).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import funcnn

ACTIVATIONS = ("relu", "tanh", "sigmoid")
OPTIMIZERS = {
    "sgd": funcnn.optim.sgd,
    "sgd, momentum 0.9": lambda lr: funcnn.optim.sgd(lr, momentum=0.9),
    "adam": funcnn.optim.adam,
}
RATES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def spirals():
    """``(sizes, epochs, x, y, x_eval, y_eval)`` of the home page's spirals."""
    x, y = funcnn.data.spirals(0, n=2000, noise=0.05)
    x_eval, y_eval = funcnn.data.spirals(1, n=1000, noise=0.05)
    return (2, 64, 64, 2), 100, x, y, x_eval, y_eval


def mnist():
    """5 000 training images to train on and 10 000 others to measure on."""
    data = funcnn.data.load_mnist()
    x, y = data.x_train, data.y_train
    return (784, 128, 10), 5, x[:5000], y[:5000], x[50000:], y[50000:]


PROBLEMS = {"spirals": spirals, "mnist": mnist}


def accuracy(sizes, epochs, data, hidden, optimizer, seed) -> float:
    """Accuracy on the evaluation rows after training one net; NaN if training diverged."""
    x, y, x_eval, y_eval = data
    net = funcnn.MLP(sizes, hidden=hidden, output="softmax")
    params = funcnn.init_params(net, seed)
    try:
        params, _, _ = funcnn.fit(net, params, optimizer, x, y, epochs=epochs,
                                  batch_size=64, key=1000 + seed, progress=False)
    except funcnn.TrainingDiverged:
        return float("nan")
    return funcnn.evaluate(net, params, x_eval, y_eval)["accuracy"]


def cell(values: list[float]) -> str:
    """``lo–hi`` in percent, ``diverged`` if every seed did, with a count of those that did."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return "diverged"
    lo, hi = 100 * min(finite), 100 * max(finite)
    text = f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f}"
    lost = len(values) - len(finite)
    return text + (f" ({lost} diverged)" if lost else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("problem", choices=sorted(PROBLEMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    sizes, epochs, *data = PROBLEMS[args.problem]()
    start = time.perf_counter()
    print(f"{args.problem}: accuracy in % (lowest–highest over seeds {args.seeds})\n")
    print("| hidden | optimizer | " + " | ".join(f"lr {lr:g}" for lr in RATES) + " |")
    print("| --- | --- |" + " --- |" * len(RATES))
    for hidden in ACTIVATIONS:
        for name, make in OPTIMIZERS.items():
            cells = [cell([accuracy(sizes, epochs, data, hidden, make(lr), seed)
                           for seed in args.seeds]) for lr in RATES]
            print(f"| {hidden} | {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
