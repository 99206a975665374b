"""Three ways to train the same MNIST network, side by side.

    python examples/seed_runs.py --data ../shared/data/mnist

The network is the one funcnn grew out of: 784 inputs, ReLU hidden layers with
He initialisation, 10 softmax outputs and cross-entropy. From the same initial
parameters it is trained three times, for the same number of epochs:

* full-batch gradient descent: one step per epoch on all training rows;
* mini-batch gradient descent, learning rate 0.001, the row order drawn anew
  every other epoch (slow to learn at that rate: it is the setting of the original);
* Adam on mini-batches.

Prints a table (final train loss, the mean over the last epoch's steps; test
accuracy; seconds per run), writes the per-step loss curves to
``--out``/seed_runs.png and prints, as its last line, a JSON object with the
three test accuracies. The default 50 epochs take about two minutes on two
cores with the jax backend.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import funcnn


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None,
                   help="folder of MNIST-layout files (default: $FUNCNN_DATA, then the cache)")
    p.add_argument("--backend", default="jax" if funcnn.backend.jax_available() else "numpy",
                   choices=funcnn.backend.BACKENDS)
    p.add_argument("--epochs", type=int, default=50, help="epochs of each run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", default="128,64", help="hidden widths, comma-separated")
    p.add_argument("--batch-size", type=int, default=64, help="rows per mini-batch")
    p.add_argument("--full-batch-lr", type=float, default=0.3)
    p.add_argument("--sgd-lr", type=float, default=1e-3)
    p.add_argument("--adam-lr", type=float, default=1e-3)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--out", default="runs/seed_runs", help="folder for the plot")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def make_runs(args):
    """Each run's settings: what ``fit`` needs besides the network and the data."""
    return {
        "full_batch_gd": dict(
            title=f"full-batch GD, lr {args.full_batch_lr:g}",
            optimizer=funcnn.optim.sgd(args.full_batch_lr), batch_size=None, shuffle_every=1),
        "minibatch_sgd": dict(
            title=f"mini-batch SGD, lr {args.sgd_lr:g}, batch {args.batch_size}, "
                  "shuffled every 2nd epoch",
            optimizer=funcnn.optim.sgd(args.sgd_lr), batch_size=args.batch_size,
            shuffle_every=2),
        "minibatch_adam": dict(
            title=f"mini-batch Adam, lr {args.adam_lr:g}, batch {args.batch_size}",
            optimizer=funcnn.optim.adam(args.adam_lr), batch_size=args.batch_size,
            shuffle_every=1),
    }


def running_mean(values, window):
    """The mean of each ``window`` consecutive values (a shorter window at the start)."""
    csum = np.cumsum(np.insert(np.asarray(values, dtype=np.float64), 0, 0.0))
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(i - window, 0)
    return (csum[i] - csum[lo]) / (i - lo)


def plot(results, runs, steps_per_epoch, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), sharey=True)
    for ax, (name, result) in zip(axes, results.items(), strict=True):
        loss = np.asarray(result["history"]["loss"])
        steps = np.arange(1, len(loss) + 1)
        ax.plot(steps, loss, lw=0.5, alpha=0.5 if len(loss) > 200 else 1.0, label="per step")
        if len(loss) > 200:  # mini-batch losses are noisy: add a running mean over an epoch
            window = steps_per_epoch[name]
            ax.plot(steps, running_mean(loss, window), lw=1.5, label=f"mean of {window} steps")
            ax.legend()
        ax.set(xlabel="step", yscale="log", title=runs[name]["title"])
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("cross-entropy (training batch)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    data = funcnn.data.load_mnist(args.data)
    x_train, y_train = data.x_train, data.y_train
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    net = funcnn.MLP((784, *hidden, 10), hidden="relu", output="softmax")  # He init for ReLU
    # One set of initial parameters and one shuffling key for all three runs.
    params0 = funcnn.init_params(net, args.seed, backend=args.backend)
    runs = make_runs(args)

    results = {}
    for name, run in runs.items():
        print(f"{name}: {run['title']}", file=sys.stderr)
        start = time.perf_counter()
        params, _, history = funcnn.fit(
            net, params0, run["optimizer"], x_train, y_train, epochs=args.epochs,
            batch_size=run["batch_size"], shuffle_every=run["shuffle_every"], key=args.seed + 1,
            progress=not args.no_progress,
        )
        test = funcnn.evaluate(net, params, data.x_test, data.y_test)
        results[name] = {"history": history, "test": test,
                         "seconds": time.perf_counter() - start}

    steps_per_epoch = {name: len(r["history"]["loss"]) // args.epochs
                       for name, r in results.items()}
    os.makedirs(args.out, exist_ok=True)
    figure = os.path.join(args.out, "seed_runs.png")
    plot(results, runs, steps_per_epoch, figure)

    print(f"{len(x_train)} training rows, {args.epochs} epochs, net {net.sizes}, "
          f"{args.backend} backend")
    print(f"{'run':<16} {'steps':>7} {'train loss':>11} {'test acc':>9} {'seconds':>8}")
    for name, r in results.items():
        print(f"{name:<16} {len(r['history']['loss']):>7d} {r['history']['train_loss'][-1]:>11.4f}"
              f" {r['test']['accuracy']:>9.4f} {r['seconds']:>8.1f}")
    print(json.dumps({
        "test_accuracy": {name: round(r["test"]["accuracy"], 6) for name, r in results.items()},
        "epochs": args.epochs, "train_rows": len(x_train), "sizes": list(net.sizes),
        "backend": args.backend, "plot": figure,
    }))


if __name__ == "__main__":
    main()
