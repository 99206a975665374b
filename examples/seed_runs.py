"""Three ways to train the same MNIST network, side by side.

    python examples/seed_runs.py --data ../shared/data/mnist

The network is the one funcnn grew out of: 784 inputs, ReLU hidden layers with
He initialisation, 10 softmax outputs and cross-entropy. From the same initial
parameters it is trained three times, for the same number of epochs:

* full-batch gradient descent: one step per epoch on all training rows;
* mini-batch gradient descent, learning rate 0.001, the row order drawn anew
  every other epoch (slow to learn at that rate: it is the setting of the original);
* Adam on mini-batches.

Shows one labelled progress bar per run, prints a table (final train loss, the
mean over the last epoch's steps; test accuracy; seconds per run), draws the
training loss and the test accuracy of the three runs, epoch by epoch, in
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


def labelled_bar(label, enabled):
    """A progress bar named after its run: a ``funcnn.callbacks.Callback`` for ``fit``.

    Without tqdm, or with ``--no-progress``, one line per epoch instead.
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return funcnn.callbacks.print_epochs()
    bars = []

    def on_start(state, info):
        bars.append(tqdm(total=info.epochs, initial=state.epoch, desc=label, unit="epoch",
                         file=sys.stderr, dynamic_ncols=True))

    def on_epoch_end(state, info):
        bars[-1].set_postfix(loss=f"{state.history['train_loss'][-1]:.4f}",
                             test_acc=f"{state.history['val_accuracy'][-1]:.4f}", refresh=False)
        bars[-1].update(1)

    def on_end(state, info):
        bars.pop().close()

    return funcnn.callbacks.Callback(on_start, on_epoch_end, on_end)


def plot(results, runs, net, train_rows, epochs, path):
    """Training loss and test accuracy of the three runs, epoch by epoch, on shared axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 5.2), layout="constrained")
    at = np.arange(1, epochs + 1)
    means = []
    for (name, result), colour in zip(results.items(), ("C0", "C1", "C2"), strict=True):
        history = result["history"]
        steps = np.asarray(history["loss"]).reshape(epochs, -1)  # (epochs, steps per epoch)
        if steps.shape[1] > 1:  # mini-batch losses are noisy: shade the middle 80% of them
            lo, hi = np.percentile(steps, [10, 90], axis=1)
            ax_loss.fill_between(at, lo, hi, color=colour, alpha=0.15, lw=0)
        ax_loss.plot(at, history["train_loss"], "o-", color=colour, ms=3)
        ax_acc.plot(at, 100 * np.asarray(history["val_accuracy"]), "o-", color=colour, ms=3,
                    label=f"{runs[name]['title']}: final test accuracy "
                          f"{100 * result['test']['accuracy']:.2f}%")
        means += history["train_loss"]
    # The axis spans the epoch means; the shaded band of a run whose batches reach far
    # lower (Adam fits some batches to 1e-8) runs off the bottom instead of squashing it.
    ax_loss.set_ylim(min(means) / 3, max(means) * 1.5)
    ax_loss.set(yscale="log", xlabel="epoch", ylabel="cross-entropy on training batches",
                title="training loss: mean over the epoch's steps\n"
                      "(shaded: 10th to 90th percentile of its batches)")
    ax_loss.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_loss.yaxis.set_major_formatter("{x:g}")
    ax_loss.yaxis.set_minor_formatter(NullFormatter())
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)",
               title="test accuracy after each epoch\n(10000 test images)")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.set_xlim(0.5, epochs + 0.5)
        ax.grid(alpha=0.3, which="both")
    fig.legend(*ax_acc.get_legend_handles_labels(), loc="outside lower center", ncols=1,
               frameon=False)
    sizes = "-".join(map(str, net.sizes))
    fig.suptitle(f"Three ways to train the same {sizes} ReLU MLP on MNIST\n"
                 f"same initial params, {train_rows} training images, {epochs} epochs each")
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
            validation=(data.x_test, data.y_test), progress=False,
            callbacks=[labelled_bar(name, not args.no_progress)],
        )
        test = funcnn.evaluate(net, params, data.x_test, data.y_test)
        results[name] = {"history": history, "test": test,
                         "seconds": time.perf_counter() - start}

    os.makedirs(args.out, exist_ok=True)
    figure = os.path.join(args.out, "seed_runs.png")
    try:
        plot(results, runs, net, len(x_train), args.epochs, figure)
    except ImportError:  # matplotlib comes with the `examples` extra
        figure = None
        print("no plot: matplotlib is missing (pip install -e '.[examples]')", file=sys.stderr)

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
