"""Train a small convolutional net on MNIST with funcnn.Net and funcnn.fit.

    python examples/cnn_mnist.py --data DIR        # DIR: a folder with the four MNIST files
    python examples/cnn_mnist.py --synthetic       # random images of ten templates: no files

The net is a ``funcnn.Net`` of ``funcnn.layers`` (convolutions, max-pooling, BatchNorm);
it trains as any funcnn net does: ``funcnn.init_params`` and ``funcnn.init_state`` (the
BatchNorm running statistics, the model state), then ``funcnn.fit`` with ``state=``, which
returns the new state last, and ``funcnn.evaluate`` with it once on the test set at the end.
On jax each epoch is one compiled ``lax.scan`` inside ``fit``; ``--backend numpy`` runs the
same step batch by batch. Before training, ``funcnn.testing.check_grads`` referees the
net's hand-written gradients against ``jax.grad`` in float64 (finite differences without
jax), BatchNorm in training mode.

The training images are shifted by a few pixels, anew every epoch (``--shift``): ``fit``
trains on the arrays it is given, so the example calls it once per epoch on freshly
shifted images, carrying the params, the optimizer state (and with it the learning-rate
schedule's step) and the model state from one call to the next; ``initial_epoch`` keeps
the shuffling and dropout keys those of one long call.

A tenth of the training images is held out for validation (``--val-fraction``); the
recipe was chosen on it, and the test set is evaluated once, at the end. Prints one line
per epoch and, as its last line, a JSON object. The recipe and results: docs/mnist.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import NamedTuple

import numpy as np

import funcnn
from funcnn.layers import Activation, BatchNorm, Conv2D, Dense, Flatten, MaxPool2D

IMAGE = (28, 28, 1)  # one image, channels last


def conv_block(filters: int) -> list:
    """3x3 convolution, 2x2 max-pooling, BatchNorm, ReLU. Pooling first: BatchNorm and ReLU
    then run on a quarter of the pixels. The convolution has no bias: BatchNorm's shift
    is one (a bias before it would get a gradient of exactly 0)."""
    return [Conv2D(filters, 3, padding="same", bias=False), MaxPool2D(2), BatchNorm(),
            Activation("relu")]


def bn_net(c1: int, c2: int) -> funcnn.Net:
    """Two convolution blocks of ``c1`` and ``c2`` channels (28x28 -> 14x14 -> 7x7), then a
    dense layer of 128 with BatchNorm and ReLU, and the 10 logits (softmax +
    cross-entropy, the defaults of ``funcnn.Net``)."""
    return funcnn.Net([*conv_block(c1), *conv_block(c2), Flatten(), Dense(128, bias=False),
                       BatchNorm(), Activation("relu"), Dense(10)], in_shape=IMAGE)


# The candidates tried on validation (docs/mnist.md); the default is the chosen one.
NETS = {
    "bn16-32": lambda: bn_net(16, 32),
    "bn32-64": lambda: bn_net(32, 64),
    "bn8-16": lambda: bn_net(8, 16),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None,
                   help="folder of MNIST-layout files (default: $FUNCNN_DATA, then the cache)")
    p.add_argument("--synthetic", action="store_true",
                   help="random 28x28 images of ten noisy templates instead of MNIST")
    p.add_argument("--backend", default="jax" if funcnn.backend.jax_available() else "numpy",
                   choices=funcnn.backend.BACKENDS)
    p.add_argument("--net", default="bn16-32", choices=sorted(NETS))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's peak learning rate")
    p.add_argument("--shift", type=int, default=2,
                   help="random shifts of the training images by up to this many pixels, "
                        "drawn anew every epoch")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--no-test", action="store_true",
                   help="leave the test set alone (while choosing a recipe on validation)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check of the hand-written gradients against autodiff")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not 0 <= args.shift < 14:
        p.error("--epochs and --batch-size must be positive and --shift in 0..13")
    return args


# ---------------------------------------------------------------------------- data


class Split(NamedTuple):
    """The images ``(n, 28, 28, 1)`` and labels of each set, and which rows of the
    training file went to training and which to validation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray


def synthetic(key, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images, each one of ten fixed random templates (its class) plus noise, and
    their labels, drawn from ``key``."""
    templates = funcnn.random.uniform(funcnn.random.key(1000), (10, *IMAGE))
    k_labels, k_noise = funcnn.random.split(funcnn.random.as_key(key))
    y = (funcnn.random.uniform(k_labels, (n,)) * 10).astype(np.int64)
    noise = funcnn.random.normal(k_noise, (n, *IMAGE))
    return np.clip(templates[y] + 0.3 * noise, 0, 1).astype(np.float32), y


def load(args) -> Split:
    """The training images (the first ``--limit``) split into training and validation
    rows by ``--seed``; the test images, kept apart until the end."""
    if args.synthetic:
        x, y = synthetic(1, args.limit or 3000)  # the same images for every --seed
        x_test, y_test = synthetic(2, 1000)
    else:
        data = funcnn.data.load_mnist(args.data)  # its errors say where it looked
        x, y = data.x_train.reshape(-1, *IMAGE), data.y_train
        x_test, y_test = data.x_test.reshape(-1, *IMAGE), data.y_test
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    # Split the row numbers, not the images: which rows went where can be checked.
    train_rows, _, val_rows, _ = funcnn.data.train_val_split(
        args.seed, np.arange(len(x)), y, val_fraction=args.val_fraction)
    return Split(x[train_rows], y[train_rows], x[val_rows], y[val_rows], x_test, y_test,
                 train_rows, val_rows)


def shifted(key, x: np.ndarray, max_shift: int) -> np.ndarray:
    """Each image of ``x`` ``(m, 28, 28, 1)`` moved by its own random whole number of
    pixels, ``-max_shift..max_shift`` along each axis, zeros shifted in (on the host)."""
    if not max_shift:
        return x
    return funcnn.data.random_shift(key, x[..., 0], max_shift)[..., None]


# ---------------------------------------------------------------------------- training


def check_gradients(net, params, state, x, y) -> float:
    """The largest relative error of the net's hand-written gradients against ``jax.grad``
    (finite differences without jax), in float64 on the 4 images ``x`` with BatchNorm in
    training mode (its batch statistics differentiated through)."""
    reference = "jax" if funcnn.backend.jax_available() else "finite_differences"
    reports = funcnn.testing.check_grads(net, params, x, y, state=state, train=True, key=0,
                                         reference=reference)
    return max(r.rel_error for r in reports)


def train(args, net, data: Split, key):
    """The recipe: Adam with warm-up and cosine decay, one ``fit`` call per epoch on freshly
    shifted images. Returns ``(params, state, history)``, ``history`` one dict an epoch."""
    steps = len(data.x_train) // args.batch_size  # drop_last: one batch shape
    if steps == 0:
        sys.exit(f"cnn_mnist.py: {len(data.x_train)} training rows make no batch of "
                 f"{args.batch_size}; raise --limit or lower --batch-size")
    total = max(args.epochs * steps, 2)  # warm-up over 100 steps, cosine to 0 at the end
    schedule = funcnn.schedules.warmup_cosine_decay(args.lr, min(100, total // 2), total)
    opt = funcnn.optim.adam(schedule)
    init_key, fit_key, shift_key = funcnn.random.split(key, 3)
    params = funcnn.init_params(net, init_key, backend=args.backend)
    state = funcnn.init_state(net, backend=args.backend)
    opt_state, history = None, []
    for e in range(args.epochs):
        t0 = time.perf_counter()
        x = shifted(funcnn.random.fold_in(shift_key, e), data.x_train, args.shift)
        params, opt_state, h, state = funcnn.fit(
            net, params, opt, x, data.y_train, epochs=e + 1, initial_epoch=e,
            batch_size=args.batch_size, drop_last=True, key=fit_key, opt_state=opt_state,
            state=state, validation=(data.x_val, data.y_val), progress=False)
        history.append({"train_loss": round(h["train_loss"][0], 5),
                        "train_accuracy": round(h["train_accuracy"][0], 5),
                        "val_loss": round(h["val_loss"][0], 5),
                        "val_accuracy": round(h["val_accuracy"][0], 5),
                        "seconds": round(time.perf_counter() - t0, 2)})
        print(f"epoch {e + 1}/{args.epochs}  train loss {h['train_loss'][0]:.4f}  val loss "
              f"{h['val_loss'][0]:.4f}  val accuracy {h['val_accuracy'][0]:.4f}  "
              f"({history[-1]['seconds']:.1f} s)", flush=True)
    return params, state, history


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    data = load(args)
    net = NETS[args.net]()
    key = funcnn.random.key(args.seed)
    grad_error = None
    if not args.no_check:  # at the initial params and state, on the first 4 training images
        grad_error = check_gradients(net, funcnn.init_params(net, key),
                                     funcnn.init_state(net), data.x_train[:4], data.y_train[:4])
    checked = time.perf_counter()
    params, state, history = train(args, net, data, key)
    trained = time.perf_counter()

    # The test set, once, at the end, with BatchNorm's running statistics.
    test = None if args.no_test else funcnn.evaluate(net, params, data.x_test, data.y_test,
                                                     state=state)
    seconds = time.perf_counter() - start
    result = {
        "test_accuracy": test and round(test["accuracy"], 6),
        "test_loss": test and round(test["loss"], 6),
        "val_accuracy": history[-1]["val_accuracy"],
        "epochs": args.epochs, "seed": args.seed, "net": args.net, "backend": args.backend,
        "data": "synthetic" if args.synthetic else "mnist",
        "train_rows": len(data.train_rows), "val_rows": len(data.val_rows),
        "test_rows": len(data.y_test), "grad_check_max_rel_error": grad_error,
        "seconds": round(seconds, 2), "check_seconds": round(checked - start, 2),
        "train_seconds": round(trained - checked, 2),
        "epoch_seconds": [h.pop("seconds") for h in history], "history": history,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
