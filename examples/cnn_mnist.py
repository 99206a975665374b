"""Train a small convolutional net on MNIST with funcnn.layers and a hand-written loop.

    python examples/cnn_mnist.py --data DIR        # DIR: a folder with the four MNIST files
    python examples/cnn_mnist.py --synthetic       # random images of ten templates: no files

The net is a ``funcnn.layers.Serial`` stack; each step is written out: the forward pass
(BatchNorm's running statistics come back as a new ``state``), the softmax +
cross-entropy delta ``(p - Y) / m`` from ``funcnn.losses``, the hand-written
``Serial.backward`` and an Adam update on the params pytree. On jax the step is compiled
with ``jax.jit`` and an epoch is one ``lax.scan`` over its batches; on NumPy the same
functions run batch by batch. Before training, ``funcnn.testing.check_layer`` referees
the net's backward pass against ``jax.grad`` in float64 (finite differences without jax).

A tenth of the training images is held out for validation (``--val-fraction``); the
recipe was chosen on it, and the test set is evaluated once, at the end. Prints one line
per epoch and, as its last line, a JSON object. The recipe and results: docs/mnist.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from typing import NamedTuple

import numpy as np

import funcnn
from funcnn.activations import softmax
from funcnn.layers import Activation, BatchNorm, Conv2D, Dense, Flatten, MaxPool2D, Serial

CROSS_ENTROPY = funcnn.losses.get_loss("cross_entropy")
IMAGE = (28, 28, 1)  # one image, channels last


def conv_block(filters: int) -> list:
    """3x3 convolution, 2x2 max-pooling, BatchNorm, ReLU. Pooling first: BatchNorm and ReLU
    then run on a quarter of the pixels. The convolution has no bias: BatchNorm's shift
    is one (a bias before it would get a gradient of exactly 0)."""
    return [Conv2D(filters, 3, padding="same", bias=False), MaxPool2D(2), BatchNorm(),
            Activation("relu")]


def bn_net(c1: int, c2: int) -> Serial:
    """Two convolution blocks of ``c1`` and ``c2`` channels (28x28 -> 14x14 -> 7x7), then a
    dense layer of 128 with BatchNorm and ReLU, and the 10 logits."""
    return Serial([*conv_block(c1), *conv_block(c2), Flatten(), Dense(128, bias=False),
                   BatchNorm(), Activation("relu"), Dense(10)])


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
                   help="random shifts of the training images by up to this many pixels")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--loop", default="scan", choices=("scan", "steps"),
                   help="jax: one lax.scan per epoch, or one jitted call per step")
    p.add_argument("--no-test", action="store_true",
                   help="leave the test set alone (while choosing a recipe on validation)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check of the hand-written gradients against autodiff")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.shift < 0:
        p.error("--epochs and --batch-size must be positive and --shift at least 0")
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


def shifted(key, x, max_shift: int):
    """Each image of ``x`` ``(m, H, W, C)`` moved by its own random whole number of pixels,
    ``-max_shift..max_shift`` along each axis, zeros shifted in (NumPy or jax alike)."""
    xp = funcnn.backend.array_namespace(x)
    m, h, w, _ = x.shape
    s = max_shift
    offsets = (funcnn.random.uniform(key, (2, m)) * (2 * s + 1)).astype("int32")  # 0..2s
    padded = xp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
    rows = offsets[0][:, None] + xp.arange(h, dtype="int32")[None, :]   # (m, H)
    cols = offsets[1][:, None] + xp.arange(w, dtype="int32")[None, :]   # (m, W)
    return padded[xp.arange(m)[:, None, None], rows[:, :, None], cols[:, None, :]]


# ---------------------------------------------------------------------------- training


def train_step(net, opt, max_shift, carry, x, y, key):
    """One step of Adam on the batch ``(x, y)``: ``((params, state, opt_state), loss)``.

    Everything the step changes comes in and goes out: the params, BatchNorm's running
    statistics (``state``) and the optimizer state. Pure, so ``jax.jit`` compiles it."""
    params, state, opt_state = carry
    k_shift, k_drop = funcnn.random.split(key)
    if max_shift:
        x = shifted(k_shift, x, max_shift)
    z, cache, state = net.forward(params, state, x, train=True, key=k_drop)  # logits (m, 10)
    p = softmax(z)
    loss = CROSS_ENTROPY.value("softmax", z, p, y)
    dz = CROSS_ENTROPY.delta("softmax", z, p, y)         # (p - Y) / m
    grads, _ = net.backward(params, cache, dz)           # hand-written, the tree of params
    params, opt_state = opt.update(params, grads, opt_state)
    return (params, state, opt_state), loss


def make_epoch(step, backend: str, loop: str):
    """``epoch(carry, x, y, order, key) -> (carry, losses)``: the steps over the batches
    ``x[order[t]]``, step ``t`` with the key ``fold_in(key, t)``."""
    if backend == "numpy":
        def epoch(carry, x, y, order, key):
            losses = []
            for t, idx in enumerate(order):
                carry, loss = step(carry, x[idx], y[idx], funcnn.random.fold_in(key, t))
                losses.append(loss)
            return carry, np.asarray(losses)
        return epoch

    import jax
    import jax.numpy as jnp

    if loop == "steps":
        jitted = jax.jit(step)

        def epoch(carry, x, y, order, key):
            losses = []
            for t, idx in enumerate(np.asarray(order)):  # a gather per step, on the device
                carry, loss = jitted(carry, x[idx], y[idx], funcnn.random.fold_in(key, t))
                losses.append(loss)
            return carry, jnp.stack(losses)
        return epoch

    @jax.jit
    def epoch(carry, x, y, order, key):
        def body(carry, t):
            idx = order[t]
            return step(carry, x[idx], y[idx], funcnn.random.fold_in(key, t))
        return jax.lax.scan(body, carry, jnp.arange(order.shape[0]))
    return epoch


def make_evaluate(net, backend: str, chunk: int = 500):
    """``evaluate(params, state, x, y) -> (loss, accuracy)`` in evaluation mode (BatchNorm's
    running statistics), ``chunk`` images at a time (the last chunk padded)."""
    def logits(params, state, x):
        return net.forward(params, state, x, train=False)[0]

    if backend == "jax":
        import jax

        logits = jax.jit(logits)

    def evaluate(params, state, x, y):
        n = len(x)
        z = []
        for start in range(0, n, chunk):
            part = x[start:start + chunk]
            if len(part) < chunk:  # one shape: one compilation
                part = np.concatenate([part, np.zeros((chunk - len(part), *part.shape[1:]),
                                                      part.dtype)])
            part = funcnn.backend.to_backend(part, backend)
            z.append(np.asarray(logits(params, state, part)))
        z = np.concatenate(z)[:n].astype(np.float64)                 # logits (n, 10)
        loss = CROSS_ENTROPY.value("softmax", z, softmax(z), y)
        return float(loss), float((z.argmax(axis=1) == y).mean())
    return evaluate


def check_gradients(net) -> float:
    """The largest relative error of the net's hand-written gradients (params and input)
    against ``jax.grad`` (finite differences without jax), float64, on 4 images."""
    reference = "jax" if funcnn.backend.jax_available() else "finite_differences"
    reports = funcnn.testing.check_layer(net, IMAGE, dtype="float64", batch=4, key=0,
                                         reference=reference)
    return max(r.rel_error for r in reports)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    data = load(args)
    net = NETS[args.net]()
    grad_error = None if args.no_check else check_gradients(net)
    checked = time.perf_counter()

    steps = len(data.x_train) // args.batch_size  # drop_last: one batch shape
    if steps == 0:
        sys.exit(f"cnn_mnist.py: {len(data.x_train)} training rows make no batch of "
                 f"{args.batch_size}; raise --limit or lower --batch-size")
    total = max(args.epochs * steps, 2)  # warm-up over 100 steps, cosine to 0 at the end
    schedule = funcnn.schedules.warmup_cosine_decay(args.lr, min(100, total // 2), total)
    opt = funcnn.optim.adam(schedule)
    init_key, shuffle_key, step_key = funcnn.random.split(funcnn.random.key(args.seed), 3)
    params, state, _ = net.init(init_key, IMAGE, backend=args.backend)
    carry = (params, state, opt.init(params))
    step = functools.partial(train_step, net, opt, args.shift)
    epoch = make_epoch(step, args.backend, args.loop)
    evaluate = make_evaluate(net, args.backend)
    x = funcnn.backend.to_backend(data.x_train, args.backend)  # on the device once
    y = funcnn.backend.to_backend(data.y_train, args.backend)
    step_key = funcnn.random.as_key(step_key, args.backend)

    history, epoch_seconds = [], []
    for e in range(args.epochs):
        t0 = time.perf_counter()
        order = funcnn.batching.epoch_order(shuffle_key, len(x), epoch=e)[: steps * args.batch_size]
        order = funcnn.backend.to_backend(np.asarray(order).reshape(steps, -1), args.backend)
        carry, losses = epoch(carry, x, y, order, funcnn.random.fold_in(step_key, e))
        train_loss = float(np.mean(np.asarray(losses)))
        epoch_seconds.append(time.perf_counter() - t0)
        val_loss, val_acc = evaluate(carry[0], carry[1], data.x_val, data.y_val)
        history.append({"train_loss": round(train_loss, 5), "val_loss": round(val_loss, 5),
                        "val_accuracy": round(val_acc, 5)})
        print(f"epoch {e + 1}/{args.epochs}  train loss {train_loss:.4f}  val loss "
              f"{val_loss:.4f}  val accuracy {val_acc:.4f}  ({epoch_seconds[-1]:.1f} s)",
              flush=True)
    trained = time.perf_counter()

    # The test set, once, at the end: (loss, accuracy).
    test = None if args.no_test else evaluate(carry[0], carry[1], data.x_test, data.y_test)
    seconds = time.perf_counter() - start
    result = {
        "test_accuracy": test and round(test[1], 6), "test_loss": test and round(test[0], 6),
        "val_accuracy": history[-1]["val_accuracy"],
        "epochs": args.epochs, "seed": args.seed, "net": args.net, "backend": args.backend,
        "loop": args.loop if args.backend == "jax" else "steps",
        "data": "synthetic" if args.synthetic else "mnist",
        "train_rows": len(data.train_rows), "val_rows": len(data.val_rows),
        "test_rows": len(data.y_test), "grad_check_max_rel_error": grad_error,
        "seconds": round(seconds, 2), "check_seconds": round(checked - start, 2),
        "train_seconds": round(trained - checked, 2),
        "epoch_seconds": [round(s, 2) for s in epoch_seconds], "history": history,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
