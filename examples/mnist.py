"""Train an MLP on MNIST with funcnn: the main job.

    python examples/mnist.py --data ../shared/data/mnist

Shows a progress bar (or, without tqdm or with ``--no-progress``, prints each
epoch as it ends), writes the loss and accuracy curves to
``--out``/mnist_curves.png and prints, as its last line, one JSON object with
the test accuracy. The ``funcnn train`` command runs the same recipe and also
saves a checkpoint.
The defaults are the best recipe found (see docs/mnist.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import funcnn


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None,
                   help="folder of MNIST-layout files (default: $FUNCNN_DATA, then the cache)")
    p.add_argument("--backend", default="jax" if funcnn.backend.jax_available() else "numpy",
                   choices=funcnn.backend.BACKENDS)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", default="512,256", help="hidden widths, comma-separated")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--out", default="runs/mnist", help="folder for the plot")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def plot(history, test, net, train_rows, path):
    """Loss and accuracy per epoch, train and test, with an overall title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

    epochs = range(1, len(history["train_loss"]) + 1)
    train = "train: running mean over the epoch, dropout on"
    held_out = "test: after each epoch, dropout off"
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
    fig.suptitle(f"MNIST, {train_rows} training images: {sizes} {net.hidden} MLP, dropout "
                 f"{net.dropout:g}, AdamW\nfinal test accuracy {100 * test['accuracy']:.2f}% "
                 f"(10000 images)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    data = funcnn.data.load_mnist(args.data)
    x_train, y_train = data.x_train, data.y_train
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    net = funcnn.MLP((784, *hidden, 10), hidden="relu", output="softmax", dropout=args.dropout)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    total = args.epochs * steps_per_epoch
    warmup = min(int(args.warmup_epochs * steps_per_epoch), total - 1)
    schedule = funcnn.schedules.warmup_cosine_decay(args.lr, warmup, total)
    opt = funcnn.optim.adamw(schedule, weight_decay=args.weight_decay,
                             mask=funcnn.optim.weights_only)
    params = funcnn.init_params(net, args.seed, backend=args.backend)
    # A tqdm bar, or (without tqdm, or with --no-progress) one line per epoch as it ends.
    per_epoch = [funcnn.callbacks.print_epochs()] if args.no_progress else []
    params, _, history = funcnn.fit(
        net, params, opt, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
        key=args.seed + 1, validation=(data.x_test, data.y_test),
        progress=not args.no_progress, callbacks=per_epoch,
    )
    test = funcnn.evaluate(net, params, data.x_test, data.y_test)
    seconds = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    curves = os.path.join(args.out, "mnist_curves.png")
    try:
        plot(history, test, net, len(x_train), curves)
    except ImportError:  # matplotlib comes with the `examples` extra
        curves = None
        print("no plot: matplotlib is missing (pip install -e '.[examples]')", file=sys.stderr)
    print(json.dumps({
        "test_accuracy": round(test["accuracy"], 6), "test_loss": round(test["loss"], 6),
        "epochs": args.epochs, "seconds": round(seconds, 2), "backend": args.backend,
        "sizes": list(net.sizes), "train_rows": len(x_train), "plot": curves,
    }))


if __name__ == "__main__":
    main()
