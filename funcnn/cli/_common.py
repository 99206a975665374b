"""What the commands share: the argument parser, flag types, errors, data and files."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import funcnn
from funcnn._files import check_writable, write_bytes
from funcnn.data.mnist import FILES as MNIST_FILES

__all__ = [
    "CommandError",
    "Parser",
    "check_out",
    "describe_net",
    "fraction",
    "load_data",
    "machine",
    "positive_float",
    "positive_int",
    "versions",
    "widths",
    "write_json",
]


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


def widths(text: str) -> tuple[int, ...]:
    """``"512,256"`` -> ``(512, 256)``; ``""`` or ``"none"`` -> no hidden layer."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        out = tuple(int(part) for part in text.split(","))
    except ValueError:
        out = ()
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers like 512,256; got {text!r}")
    return out


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1); got {text!r}")
    return value


# ---------------------------------------------------------------------------- data and files


def load_data(folder: str | None) -> funcnn.data.MNIST:
    """MNIST from ``--data`` (or ``$FUNCNN_DATA``, the cache, a download), or a CommandError."""
    if folder is not None:
        path = Path(folder)
        if not path.is_dir():
            raise CommandError(f"--data {folder}: no such folder",
                               "pass the folder that holds the four MNIST files")
        missing = [n for n in MNIST_FILES
                   if not (path / n).is_file() and not (path / f"{n}.gz").is_file()]
        if missing:
            raise CommandError(f"--data {folder} lacks {', '.join(missing)}",
                               "each MNIST file may be raw or gzip-compressed (.gz)")
    try:
        return funcnn.data.load_mnist(folder)
    except FileNotFoundError:
        raise CommandError(
            "MNIST files not found ($FUNCNN_DATA, the cache) and the download failed",
            f"pass --data FOLDER holding {MNIST_FILES[0]} and the three other files "
            "(raw or .gz), or set FUNCNN_DATA",
        ) from None
    except ValueError as err:  # IDXError, ChecksumError, wrong shapes
        raise CommandError(f"cannot read the MNIST files: {_first_line(err)}") from None


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


def describe_net(net: funcnn.MLP) -> str:
    """``"784-512-256-10 MLP, relu hidden, softmax output, dropout 0.2"``."""
    text = "-".join(map(str, net.sizes)) + " MLP"
    if net.n_layers > 1:
        text += f", {net.hidden} hidden"
    text += f", {net.output} output"
    if net.dropout:
        text += f", dropout {net.dropout:g}"
    return text
