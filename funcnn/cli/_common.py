"""What the commands share: the argument parser, flag types, errors, data and files."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import funcnn
from funcnn._files import check_writable, write_bytes
from funcnn.data.mnist import FILES as MNIST_FILES

__all__ = [
    "MAX_SEED",
    "MAX_WIDTH",
    "N_CLASSES",
    "CommandError",
    "Parser",
    "channels",
    "check_out",
    "describe_net",
    "drops_units",
    "fraction",
    "interrupt_later",
    "load_data",
    "machine",
    "non_negative_float",
    "positive_float",
    "positive_int",
    "seed",
    "versions",
    "width",
    "widths",
    "write_json",
]

N_CLASSES = 10  # MNIST's digits


class CommandError(Exception):
    """A failure the user can fix: printed as one or two lines, then exit ``code``.

    ``code`` is 2 when the command line itself is wrong, 1 otherwise.
    """

    def __init__(self, message: str, hint: str | None = None, code: int = 1):
        super().__init__(message)
        self.hint = hint
        self.code = code


class Parser(argparse.ArgumentParser):
    """``argparse`` that reports a usage error in two lines, not a full usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------- flag types

# Each flag type turns the text of one flag into its value or raises ArgumentTypeError,
# which argparse reports in one line with exit code 2. Every number is checked for
# range, so that inf, nan, negative and huge values fail here, not deep in training.

MAX_WIDTH = 1_000_000  # a layer or batch wider than this cannot fit a CPU's memory anyway
MAX_SEED = 2**64 - 3  # a key takes [0, 2**64), and `train` also uses SEED+1 and SEED+2


def _number(text: str, convert, ok, expected: str):
    try:
        value = convert(text)
    except (ValueError, OverflowError):
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v > 0, "a positive integer")


def width(text: str) -> int:
    """A layer width or a row count: a positive integer up to :data:`MAX_WIDTH`."""
    return _number(text, int, lambda v: 0 < v <= MAX_WIDTH,
                   f"a positive integer up to {MAX_WIDTH}")


def seed(text: str) -> int:
    return _number(text, int, lambda v: 0 <= v <= MAX_SEED,
                   "an integer seed in [0, 2**64 - 3]")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < math.inf, "a positive finite number")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < math.inf, "a finite number >= 0")


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def widths(text: str) -> tuple[int, ...]:
    """``"512,256"`` -> ``(512, 256)``; ``""`` or ``"none"`` -> no hidden layer."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(width(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers (up to {MAX_WIDTH}) like 512,256, "
            f"or none; got {text!r}") from None


# ---------------------------------------------------------------------------- data and files


def load_data(folder: str | None) -> funcnn.data.MNIST:
    """MNIST from ``--data`` (or ``$FUNCNN_DATA``, the cache, a download), checked: both
    splits non-empty and every label a digit, before anything trains; or a CommandError."""
    if folder is not None:
        path = Path(folder)
        if path.exists() and not path.is_dir():
            raise CommandError(f"--data {folder} is a file; a folder is expected",
                               "pass the folder that holds the four MNIST files")
        if not path.is_dir():
            raise CommandError(f"--data {folder}: no such folder",
                               "pass the folder that holds the four MNIST files")
        missing = [n for n in MNIST_FILES
                   if not (path / n).is_file() and not (path / f"{n}.gz").is_file()]
        if missing:
            raise CommandError(f"--data {folder} lacks {', '.join(missing)}",
                               "each MNIST file may be raw or gzip-compressed (.gz)")
    try:
        data = funcnn.data.load_mnist(folder)
    except FileNotFoundError:
        raise CommandError(
            "MNIST files not found ($FUNCNN_DATA, the cache) and the download failed",
            f"pass --data FOLDER holding {MNIST_FILES[0]} and the three other files "
            "(raw or .gz), or set FUNCNN_DATA",
        ) from None
    except ValueError as err:  # IDXError, ChecksumError, wrong shapes
        raise CommandError(f"cannot read the MNIST files: {_first_line(err)}") from None
    where = f"--data {folder}" if folder is not None else "the MNIST files"
    for labels, name in ((data.y_train, MNIST_FILES[1]), (data.y_test, MNIST_FILES[3])):
        if len(labels) == 0:
            raise CommandError(f"{where}: {name} holds no labels (and its images file none)")
        bad = np.flatnonzero((labels < 0) | (labels >= N_CLASSES))
        if len(bad):
            raise CommandError(
                f"{where}: {name} holds the label {labels[bad[0]]} at index {bad[0]} "
                f"({len(bad)} label(s) outside 0..{N_CLASSES - 1})",
                f"MNIST labels are the {N_CLASSES} digits 0 to {N_CLASSES - 1}")
    return data


def check_out(folder: str, name: str = "--out") -> Path:
    """Create ``folder`` if needed and make sure files can be written in it."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise CommandError(f"{name} {folder} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        check_writable(path / ".funcnn-probe")
    except OSError as err:
        reason = err.strerror or str(err)
        raise CommandError(f"cannot write into {name} {folder}: {reason}") from None
    return path


@contextlib.contextmanager
def interrupt_later(message: str = "") -> Iterator[Callable[[], None]]:
    """Within the block, the first Ctrl-C is noted (and ``message`` printed) instead of
    raising ``KeyboardInterrupt`` at once; a second one raises at once.

    Yields ``check``, which raises ``KeyboardInterrupt`` when a Ctrl-C was noted: call it
    at safe points. Leaving the block normally calls it too. Why: a KeyboardInterrupt
    raised inside jax is lost when it lands in a callback of the garbage collector (jax
    runs one often while it is imported), and one raised while a compiled program runs
    can leave jax to crash the process at exit (a segmentation fault, not exit 130).
    Outside the main thread, or where Ctrl-C is ignored, nothing changes.
    """
    noted: list[int] = []

    def check() -> None:
        if noted:
            raise KeyboardInterrupt

    def note(signum: int, frame: object) -> None:
        if noted:
            raise KeyboardInterrupt
        noted.append(signum)
        if message:
            _say_now(f"\n{message}\n")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    if previous is not signal.default_int_handler:
        yield check
        return
    signal.signal(signal.SIGINT, note)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)
    check()


def _say_now(text: str) -> None:
    """Write on stderr from a signal handler: straight to the file descriptor, since
    ``print`` could re-enter a write under way (a RuntimeError); through ``sys.stderr``
    when it has none (a captured stream)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        sys.stderr.write(text)
        return
    os.write(fd, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """funcnn, numpy and jax versions (jax ``None`` when not installed), without importing jax."""
    jax = sys.modules.get("jax")
    return {
        "funcnn": funcnn.__version__,
        "numpy": _version("numpy"),
        "jax": getattr(jax, "__version__", None) or _version("jax"),
        "python": platform.python_version(),
    }


def machine() -> dict[str, Any]:
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpus": os.cpu_count(),
    }


def drops_units(net: funcnn.MLP | funcnn.Net) -> bool:
    """Whether training drops units: dropout acts on hidden units only, so a net without
    a hidden layer has none (``--hidden none`` keeps the default ``--dropout 0.2``)."""
    if not isinstance(net, funcnn.MLP):
        return net.draws
    return net.dropout > 0 and net.n_layers > 1


def describe_net(net: funcnn.MLP | funcnn.Net) -> str:
    """``"784-512-256-10 MLP, relu hidden, softmax output, dropout 0.2"`` (dropout only
    when it :func:`drops_units`); for a ``Net`` its convolutions' and dense layers' widths,
    ``"conv 16-32, dense 128-10 net, BatchNorm, softmax output"``."""
    if not isinstance(net, funcnn.MLP):
        return _describe_layers(net)
    text = "-".join(map(str, net.sizes)) + " MLP"
    if net.n_layers > 1:
        text += f", {net.hidden} hidden"
    text += f", {net.output} output"
    if drops_units(net):
        text += f", dropout {net.dropout:g}"
    return text


def _describe_layers(net: funcnn.Net) -> str:
    found: dict[str, list] = {"conv": [], "dense": [], "kinds": []}

    def walk(layers) -> None:
        for layer in layers:
            kind = type(layer).__name__
            if isinstance(layer, funcnn.layers.Serial):
                if kind == "Residual":
                    found["kinds"].append("residual")
                walk(layer.layers)
            elif kind == "Conv2D":
                found["conv"].append(layer.filters)
            elif kind == "Dense":
                found["dense"].append(layer.n_out)
            elif kind in ("BatchNorm", "LayerNorm") or (kind == "Dropout" and layer.draws):
                found["kinds"].append(kind if kind != "Dropout" else f"dropout {layer.p:g}")

    walk(net.layers)
    widths = [f"{name} {'-'.join(map(str, found[name]))}" for name in ("conv", "dense")
              if found[name]]
    kinds = list(dict.fromkeys(found["kinds"]))  # in order, once each
    return ", ".join([" ".join([", ".join(widths), "net"]), *kinds, f"{net.output} output"])


def channels(text: str) -> tuple[int, ...]:
    """``"16,32"`` -> ``(16, 32)``: the channels of one or two convolution blocks (each
    pools 28x28 images to half their size; a third would meet 7x7, which 2x2 does not tile)."""
    try:
        values = tuple(width(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        values = ()
    if not 1 <= len(values) <= 2:
        raise argparse.ArgumentTypeError(
            f"expected one or two comma-separated positive integers (up to {MAX_WIDTH}) like "
            f"16,32; got {text!r}")
    return values
