"""A training loop written by hand from funcnn's pure pieces and compiled with jax.jit.

    python examples/custom_loop.py --data DIR         # DIR: a folder with the MNIST files
    python examples/custom_loop.py --synthetic        # two spirals: no files needed

``funcnn.fit`` does all of this for you. Written out, a loop is four pure
functions and two values threaded through them: ``params`` (a tuple of
``funcnn.Dense(W, b)``) and the optimizer state (an ``AdamState``). Nothing is
mutated; every step returns new ones. Prints the mean training loss of each
epoch and the test accuracy, and as its last line a JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp

import funcnn


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None,
                   help="folder of MNIST-layout files (default: $FUNCNN_DATA, then the cache)")
    p.add_argument("--synthetic", action="store_true",
                   help="train on two spirals (funcnn.data.spirals) instead of MNIST")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default 1e-3 for MNIST, 1e-2 for spirals)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    return p.parse_args(argv)


def load(args):
    """``(x_train, y_train, x_test, y_test)`` as NumPy arrays, with integer labels."""
    if args.synthetic:
        # Two interleaved spiral arms, 1.5 turns each; the test set is drawn with another key.
        x_train, y_train = funcnn.data.spirals(args.seed, n=20_000, noise=0.05)
        x_test, y_test = funcnn.data.spirals(args.seed + 1, n=2_000, noise=0.05)
    else:
        x_train, y_train, x_test, y_test = load_mnist(args.data)
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    return x_train, y_train, x_test, y_test


def load_mnist(folder):
    """MNIST from ``folder`` (default: $FUNCNN_DATA, the cache, a download); one line if not."""
    try:
        return funcnn.data.load_mnist(folder)
    except FileNotFoundError:
        looked = folder or "$FUNCNN_DATA or ~/.cache/funcnn/mnist (and the download failed)"
        problem = f"no MNIST files in {looked}"
    except ValueError as err:  # a truncated or malformed file, a checksum that differs
        problem = f"cannot read the MNIST files: {str(err).splitlines()[0]}"
    sys.exit(f"custom_loop.py: {problem}; pass --data DIR, a folder with "
             "train-images-idx3-ubyte(.gz) and the three other MNIST files, or --synthetic")


# The network spec is a frozen, hashable dataclass, so it can be a *static* argument
# of jax.jit: jax compiles one program per spec (and per batch shape) and reuses it.
# Everything else, the learning rate included, is traced: new values reuse the program.
@functools.partial(jax.jit, static_argnames="net")
def train_step(net, params, opt_state, x, y, lr):
    """One Adam step on the batch ``(x, y)``: returns ``(params, opt_state, loss)``."""
    probs, cache = funcnn.forward(net, params, x)  # softmax outputs (m, k), and what backprop needs
    grads = funcnn.backprop(net, params, cache, y)  # d(mean loss)/d(params): same tree as params
    params, opt_state = funcnn.adam_update(params, grads, opt_state, lr=lr)
    # The loss is only reported; the gradients above do not need it. Cross-entropy is
    # -log(probability of the true class), clipped so that a 0 does not give -inf.
    p_true = jnp.take_along_axis(probs, y[:, None], axis=1)
    loss = -jnp.mean(jnp.log(jnp.maximum(p_true, jnp.finfo(probs.dtype).tiny)))
    return params, opt_state, loss


@functools.partial(jax.jit, static_argnames="net")
def accuracy(net, params, x, y):
    """The fraction of rows whose most probable class is the label."""
    probs, _ = funcnn.forward(net, params, x)
    return jnp.mean(jnp.argmax(probs, axis=1) == y)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load(args)
    n_classes = int(y_train.max()) + 1
    hidden = (64, 64) if args.synthetic else (256, 128)
    lr = args.lr if args.lr is not None else (1e-2 if args.synthetic else 1e-3)
    net = funcnn.MLP((x_train.shape[1], *hidden, n_classes), hidden="relu", output="softmax")

    # Randomness comes from explicit keys: one for the initial weights, one for shuffling.
    init_key, shuffle_key = funcnn.random.split(funcnn.random.key(args.seed, backend="jax"))
    params = funcnn.init_params(net, init_key)  # a jax key gives jax arrays (He init for ReLU)
    opt_state = funcnn.adam_init(params)  # AdamState(count=0, mu=zeros, nu=zeros)

    # Put the data on the device once; each batch is then a gather by an index array.
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
    n = x_train.shape[0]

    for epoch in range(args.epochs):
        losses = []
        # A new row order each epoch, from (shuffle_key, epoch). drop_last keeps every batch
        # the same shape, so train_step is compiled once, not again for a short last batch.
        for idx in funcnn.batches(shuffle_key, n, args.batch_size, epoch=epoch, drop_last=True):
            params, opt_state, loss = train_step(net, params, opt_state, x_train[idx],
                                                 y_train[idx], lr)
            losses.append(loss)  # stays on the device: no wait for the step to finish
        epoch_loss = float(jnp.mean(jnp.stack(losses)))  # one transfer per epoch
        print(f"epoch {epoch + 1:3d}  train loss {epoch_loss:.4f}  "
              f"({int(opt_state.count)} steps so far)")

    test_accuracy = float(accuracy(net, params, x_test, y_test))
    seconds = time.perf_counter() - start
    print(f"test accuracy {test_accuracy:.4f}  ({seconds:.1f} s)")
    print(json.dumps({
        "test_accuracy": round(test_accuracy, 6), "train_loss": round(epoch_loss, 6),
        "epochs": args.epochs, "steps": int(opt_state.count),
        "data": "spirals" if args.synthetic else "mnist", "train_rows": n,
        "sizes": list(net.sizes), "seconds": round(seconds, 2),
    }))


if __name__ == "__main__":
    main()
