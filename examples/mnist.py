"""Train an MLP on MNIST with funcnn: the main job.

    python examples/mnist.py --data ../shared/data/mnist

Holds 10% of the training images out for validation (as ``funcnn train`` does),
trains on the rest and on three copies of them moved by up to one pixel
(``funcnn.data.random_shift``), and evaluates the test set once, at the end.
Shows a progress bar (or, without tqdm or with ``--no-progress``, prints each
epoch as it ends), writes the loss and accuracy curves to
``--out``/mnist_curves.png and prints, as its last line, one JSON object with
the validation and test accuracy. The ``funcnn train`` command trains the same
network with the same optimizer, without the shifted copies, and also saves a
checkpoint. The defaults are the recipe chosen on the validation set (see
docs/mnist.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import funcnn


def count(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more; got {n}")
    return n


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None,
                   help="folder of MNIST-layout files (default: $FUNCNN_DATA, then the cache)")
    p.add_argument("--backend", default="jax" if funcnn.backend.jax_available() else "numpy",
                   choices=funcnn.backend.BACKENDS)
    p.add_argument("--epochs", type=int, default=5,
                   help="passes over the training rows, the shifted copies included "
                        "(default: 5, i.e. 20 passes over the images)")
    p.add_argument("--seed", type=int, default=0,
                   help="the init uses SEED, shuffling and dropout SEED+1, the validation "
                        "split SEED+2, the shifts SEED+3")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", default="512,256", help="hidden widths, comma-separated")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup-epochs", type=float, default=0.25)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--validation", type=float, default=0.1,
                   help="share of the training images held out for validation, as "
                        "`funcnn train` does (default: 0.1)")
    p.add_argument("--shifted-copies", type=count, default=3,
                   help="train on the images plus this many copies, each image moved by a "
                        "random offset of up to --max-shift pixels (drawn once)")
    p.add_argument("--max-shift", type=count, default=1, help="pixels, for --shifted-copies")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--out", default="runs/mnist", help="folder for the plot")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def training_sets(args, data):
    """``(x, y, (x_val, y_val))``: the validation rows held out of the training images
    (never the test set), and the training rows with their shifted copies appended."""
    x, y = data.x_train, data.y_train
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    x, y, x_val, y_val = funcnn.data.train_val_split(args.seed + 2, x, y, args.validation)
    copies = [funcnn.data.random_shift(funcnn.random.fold_in(args.seed + 3, j), x,
                                       args.max_shift, image_shape=(28, 28))
              for j in range(args.shifted_copies)]
    x = np.concatenate([x, *copies]) if copies else x
    y = np.concatenate([y] * (1 + len(copies)))
    return x, y, (x_val, y_val)


def train(args, x, y, validation):
    """The recipe: ``(net, params, history)`` after ``args.epochs`` passes over ``x``."""
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    net = funcnn.MLP((784, *hidden, 10), hidden="relu", output="softmax", dropout=args.dropout)
    steps_per_epoch = -(-len(x) // args.batch_size)
    total = args.epochs * steps_per_epoch
    warmup = min(int(args.warmup_epochs * steps_per_epoch), total - 1)
    schedule = funcnn.schedules.warmup_cosine_decay(args.lr, warmup, total)
    opt = funcnn.optim.adamw(schedule, weight_decay=args.weight_decay,
                             mask=funcnn.optim.weights_only)
    params = funcnn.init_params(net, args.seed, backend=args.backend)
    # A tqdm bar, or (without tqdm, or with --no-progress) one line per epoch as it ends.
    per_epoch = [funcnn.callbacks.print_epochs()] if args.no_progress else []
    params, _, history = funcnn.fit(
        net, params, opt, x, y, epochs=args.epochs, batch_size=args.batch_size,
        key=args.seed + 1, validation=validation, progress=not args.no_progress,
        callbacks=per_epoch,
    )
    return net, params, history


def plot(history, test, net, rows, path):
    """Loss and accuracy per epoch, train and validation, with the test accuracy in the title.

    ``rows`` says what was trained on, e.g. "54000 training images + 3 shifted copies of each".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

    epochs = range(1, len(history["train_loss"]) + 1)
    train = "train: running mean over the epoch, dropout on"
    held_out = "validation: after each epoch, dropout off"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    ax1.plot(epochs, history["train_loss"], "o-", ms=3, label=train)
    ax1.plot(epochs, history["val_loss"], "o-", ms=3, label=held_out)
    ax1.set(xlabel="epoch", ylabel="cross-entropy (log scale)", yscale="log", title="loss")
    ax1.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax1.yaxis.set_major_formatter("{x:g}")  # 0.05, 0.1, 0.2 rather than 5x10^-2
    ax1.yaxis.set_minor_formatter(NullFormatter())
    ax2.plot(epochs, [100 * a for a in history["train_accuracy"]], "o-", ms=3, label=train)
    ax2.plot(epochs, [100 * a for a in history["val_accuracy"]], "o-", ms=3, label=held_out)
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        ax.grid(alpha=0.3, which="both")
    fig.legend(*ax1.get_legend_handles_labels(), loc="outside lower center", ncols=2,
               frameon=False)
    sizes = "-".join(map(str, net.sizes))
    fig.suptitle(f"MNIST, {rows}: {sizes} {net.hidden} MLP, dropout "
                 f"{net.dropout:g}, AdamW\nfinal test accuracy {100 * test['accuracy']:.2f}% "
                 f"(10000 images)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    data = funcnn.data.load_mnist(args.data)
    x, y, validation = training_sets(args, data)
    net, params, history = train(args, x, y, validation)
    test = funcnn.evaluate(net, params, data.x_test, data.y_test)  # the only look at the test set
    seconds = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    curves = os.path.join(args.out, "mnist_curves.png")
    copies = args.shifted_copies
    rows = f"{len(x) // (1 + copies)} training images + {copies} shifted copies of each"
    try:
        plot(history, test, net, rows, curves)
    except ImportError:  # matplotlib comes with the `examples` extra
        curves = None
        print("no plot: matplotlib is missing (pip install -e '.[examples]')", file=sys.stderr)
    print(json.dumps({
        "test_accuracy": round(test["accuracy"], 6), "test_loss": round(test["loss"], 6),
        "validation_accuracy": round(history["val_accuracy"][-1], 6),
        "epochs": args.epochs, "seconds": round(seconds, 2), "backend": args.backend,
        "sizes": list(net.sizes), "train_rows": len(x), "validation_rows": len(validation[0]),
        "plot": curves,
    }))


if __name__ == "__main__":
    main()
