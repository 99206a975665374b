"""``funcnn evaluate``: a saved model on the MNIST test set, class by class."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

import funcnn
from funcnn import serialization
from funcnn.checkpoint import CheckpointError
from funcnn.cli import _plots
from funcnn.cli._common import N_CLASSES, CommandError, check_out, describe_net, load_data
from funcnn.tree import tree_leaves

__all__ = ["add_parser", "confusion_matrix", "custom_pieces", "load_model", "run"]

N_PIXELS = 784


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="test a saved model: accuracy per class, confusion matrix",
        description="Evaluate a checkpoint on the 10000 MNIST test images: loss, accuracy, "
                    "accuracy per class and the confusion matrix (printed, and drawn in "
                    "confusion.png). The checkpoint holds the net spec: no architecture flags.",
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="model.npz written by `funcnn train` (or its checkpoint.npz, or "
                        "any funcnn.save(..., net=net) file)")
    p.add_argument("--data", metavar="DIR",
                   help="folder with the four MNIST files (default: $FUNCNN_DATA, then "
                        "~/.cache/funcnn/mnist, then download)")
    p.add_argument("--out", metavar="DIR",
                   help="folder for confusion.png (default: the checkpoint's folder)")
    p.set_defaults(run=run)
    return p


def load_model(path: str) -> tuple[funcnn.MLP | funcnn.Net, tuple, tuple]:
    """The net, params and model state (``()`` without BatchNorm) of a checkpoint (on
    NumPy), or a CommandError saying what is wrong."""
    try:
        ckpt = funcnn.load(path)
    except FileNotFoundError:
        raise CommandError(f"no checkpoint file at {path}") from None
    except CheckpointError as err:
        raise CommandError(str(err).splitlines()[0],
                           "is it a file written by `funcnn train` or funcnn.save?") from None
    except OSError as err:
        raise CommandError(f"cannot read the checkpoint {path}: {err.strerror or err}") from None
    except ValueError as err:  # a custom activation or loss, which only Python can supply
        pieces = custom_pieces(path)
        if not pieces:
            raise CommandError(f"cannot load the checkpoint {path}: "
                               f"{str(err).strip().splitlines()[0]}") from None
        named = " and ".join(f"the custom {kind} {name!r} ({field})"
                             for field, kind, name in pieces)
        yours = ", ".join(f"{field}=<your {kind}>" for field, kind, _ in pieces)
        if any("." in field or "[" in field for field, _, _ in pieces):  # in a Net's layers
            yours = "funcnn.Net([...]) with your pieces"
            state = ", state=ckpt.state"
        else:
            yours, state = f"funcnn.MLP(..., {yours})", ""
        raise CommandError(
            f"the checkpoint {path} holds a net with {named}, whose code is not in the "
            "file: only Python can evaluate it",
            f"in Python, where it is defined: net = {yours}; ckpt = "
            f"funcnn.load(path, net=net); funcnn.evaluate(net, ckpt.params, x, y{state})",
        ) from None
    if ckpt.net is None:
        raise CommandError(f"the checkpoint {path} holds no net spec",
                           "save it with funcnn.save(path, params, net=net)")
    return ckpt.net, ckpt.params, ckpt.state


def custom_pieces(path: str) -> list[tuple[str, str, str]]:
    """The custom activations, losses and initializers a checkpoint's net spec names, as
    ``(field, kind, name)``, e.g. ``("hidden", "activation", "swish")`` for an MLP or
    ``("layers[0].activation", "activation", "swish")`` for a ``Net``: a file keeps only
    their names. ``[]`` when there are none or the header cannot be read (``funcnn.load``
    says why)."""
    try:
        with open(path, "rb") as f, \
                serialization.NpzReader(f, os.fstat(f.fileno()).st_size,
                                        serialization.HEADER) as reader:
            spec = serialization.read_header(reader, ()).get("net")
    except (OSError, serialization.FormatError):
        return []
    return list(_customs(spec, ""))


def _customs(node, where: str):
    """``(field, kind, name)`` of each custom piece under ``node`` of a saved net spec,
    ``where`` being its place (a Net's layers and fields are walked)."""
    if type(node) is dict and "custom" in node:
        yield where, str(node.get("custom"))[:40], str(node.get("name"))[:100]
    elif type(node) is dict:
        for key, value in node.items():
            yield from _customs(value, where if key == "fields" else
                                f"{where}.{key}" if where else str(key))
    elif type(node) is list:
        for i, value in enumerate(node):
            yield from _customs(value, f"{where}[{i}]")


def check_fits_mnist(net: funcnn.MLP | funcnn.Net, path: str) -> None:
    if math.prod(net.in_shape) != N_PIXELS or net.n_out != N_CLASSES \
            or net.loss != "cross_entropy":
        raise CommandError(
            f"the checkpoint {path} holds a {describe_net(net)} on inputs of shape "
            f"{net.in_shape} with {net.loss} loss",
            f"MNIST needs {N_PIXELS} inputs (any shape of them, e.g. (28, 28, 1)), "
            f"{N_CLASSES} softmax outputs and cross-entropy",
        )


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """``counts[i, j]``: how many examples of class ``i`` were predicted as ``j``."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def table(counts: np.ndarray) -> str:
    """The confusion matrix with each class's image count and accuracy."""
    k = counts.shape[0]
    head = "true \\ predicted" + "".join(f"{j:>6d}" for j in range(k)) + "    images  accuracy"
    rows = [head]
    for i in range(k):
        total = counts[i].sum()
        acc = f"{100 * counts[i, i] / total:8.2f}%" if total else "       -"
        rows.append(f"{i:>16d}" + "".join(f"{c:>6d}" for c in counts[i]) + f"{total:>10d}{acc}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    net, params, state = load_model(args.checkpoint)
    check_fits_mnist(net, args.checkpoint)
    out = check_out(args.out if args.out is not None else str(Path(args.checkpoint).parent))
    data = load_data(args.data)
    x = data.x_test.reshape(-1, *net.in_shape)
    test = funcnn.evaluate(net, params, x, data.y_test, state=state)
    predicted = np.argmax(np.asarray(funcnn.predict(net, params, x, state=state)), axis=1)
    counts = confusion_matrix(data.y_test, predicted, N_CLASSES)
    per_class = np.diag(counts) / np.maximum(counts.sum(axis=1), 1)

    dtype = np.asarray(tree_leaves(params)[0]).dtype
    print(f"checkpoint {args.checkpoint}: {describe_net(net)} ({dtype})")
    print(f"MNIST test set, {len(data.y_test)} images: loss {test['loss']:.4f}, "
          f"accuracy {100 * test['accuracy']:.2f}%\n")
    print(table(counts))
    figure = confusion_figure(counts, out / "confusion.png", net, test["accuracy"])
    if figure is not None:
        print(f"\nconfusion matrix drawn in {figure}")
    print(json.dumps({
        "checkpoint": str(args.checkpoint), "test_loss": round(test["loss"], 6),
        "test_accuracy": round(test["accuracy"], 6),
        "per_class_accuracy": [round(float(a), 6) for a in per_class],
        "confusion": counts.tolist(), "plot": None if figure is None else str(figure),
    }))
    return 0


def confusion_figure(counts, path: Path, net, accuracy) -> Path | None:
    title = (f"MNIST test set ({counts.sum()} images): accuracy {100 * accuracy:.2f}%\n"
             f"{describe_net(net)}")
    try:
        _plots.confusion_figure(counts, path, title=title)
    except ImportError:
        print("no confusion.png: matplotlib is missing (pip install 'funcnn[examples]')",
              file=sys.stderr)
        return None
    return path
