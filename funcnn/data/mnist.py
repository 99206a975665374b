"""MNIST (and any folder of MNIST-layout IDX files), found locally or downloaded once.

Where :func:`load_mnist` looks, in order:

1. ``path``, when given, and nowhere else;
2. ``$FUNCNN_DATA``, either the folder itself or its ``mnist/`` subfolder;
3. the cache, ``$XDG_CACHE_HOME/funcnn/mnist`` (default ``~/.cache/funcnn/mnist``).

If none holds the four files and ``download`` is true, the compressed files
are fetched from :data:`MIRRORS` (tried in order), checked against their
published MD5 sums and written atomically into the cache. Each file may be
stored raw or gzip-compressed (``.gz``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np

from funcnn._files import write_bytes
from funcnn.data.idx import read_idx

__all__ = ["FILES", "MD5", "MIRRORS", "MNIST", "ChecksumError", "load_mnist"]

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Base URLs serving the original gzip files; a file's URL is base + name + ".gz".
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# MD5 of the original compressed files (as published by LeCun et al. and mirrored).
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_SIDE = 28


class MNIST(NamedTuple):
    """Train and test splits.

    ``x_*``: float32 images in [0, 1], shape ``(n, 784)`` (``(n, 28, 28)`` with
    ``flatten=False``); ``y_*``: int64 labels, shape ``(n,)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class ChecksumError(ValueError):
    """A downloaded file whose MD5 differs from the published one on every mirror."""


def _fetch(url: str) -> bytes:
    """The bytes at ``url``; the one place that touches the network (tests replace it)."""
    request = urllib.request.Request(url, headers={"User-Agent": "funcnn"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def _cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "funcnn" / "mnist"


def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing(folder: Path) -> list[str]:
    return [name for name in FILES if _file_in(folder, name) is None]


def _candidates() -> list[Path]:
    folders = []
    env = os.environ.get("FUNCNN_DATA", "")
    if env:
        folders += [Path(env), Path(env) / "mnist"]
    folders.append(_cache_dir())
    return folders


def _describe(folder: Path, missing: list[str]) -> str:
    if not folder.is_dir():
        return f"  {folder} (no such folder)"
    return f"  {folder} (missing {', '.join(missing)})"


def _not_found(looked: list[str], notes: list[str]) -> FileNotFoundError:
    names = ", ".join(FILES)
    lines = [
        "MNIST files not found. Looked in:",
        *looked,
        *notes,
        f"Expected the files {names}, each raw or gzip-compressed (.gz).",
        "Provide them with load_mnist(path='folder'), or set FUNCNN_DATA to a folder that "
        "holds them (directly or in an mnist/ subfolder), or allow download=True with a "
        "network connection.",
    ]
    return FileNotFoundError("\n".join(lines))


def _download_one(gz_name: str) -> tuple[bytes | None, list[str], bool]:
    """(verified bytes or None, one line per failed mirror, whether a checksum failed)."""
    failures, bad_sum = [], False
    expected = MD5[gz_name]
    for base in MIRRORS:
        url = base + gz_name
        try:
            data = _fetch(url)
        except (OSError, http.client.HTTPException) as err:
            failures.append(f"    {url}: {type(err).__name__}: {err}")
            continue
        got = hashlib.md5(data).hexdigest()
        if got == expected:
            return data, failures, bad_sum
        bad_sum = True
        failures.append(f"    {url}: MD5 {got} does not match the expected {expected}")
    return None, failures, bad_sum


def _download(folder: Path, names: list[str]) -> list[str]:
    """Fetch and verify every missing file, then write them all; [] or failure lines."""
    fetched, failures = {}, []
    for name in names:
        data, lines, bad_sum = _download_one(f"{name}.gz")
        if data is None:
            if bad_sum:
                raise ChecksumError(
                    f"checksum mismatch for {name}.gz on every mirror; nothing was written "
                    f"to {folder}:\n" + "\n".join(lines)
                )
            failures += [f"  download of {name}.gz failed:", *lines]
        else:
            fetched[name] = data
    if failures:
        return failures
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in fetched.items():
        write_bytes(folder / f"{name}.gz", data)
    return []


def _images_and_labels(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (_SIDE, _SIDE):
        raise ValueError(
            f"{image_path}: expected uint8 images of shape (n, {_SIDE}, {_SIDE}); "
            f"got {images.dtype} of shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{label_path}: expected integer labels of shape (n,); "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{len(images)} images in {image_path} but {len(labels)} labels in {label_path}"
        )
    return images, labels


def _read_folder(folder: Path, flatten: bool) -> MNIST:
    paths = [_file_in(folder, name) for name in FILES]
    arrays = []
    for image_path, label_path in (paths[:2], paths[2:]):
        images, labels = _images_and_labels(image_path, label_path)
        x = images.astype(np.float32) / np.float32(255)
        arrays += [x.reshape(len(x), -1) if flatten else x, labels.astype(np.int64)]
    return MNIST(*arrays)


def load_mnist(
    path: str | os.PathLike | None = None, *, download: bool = True, flatten: bool = True
) -> MNIST:
    """Load MNIST: 60000 train and 10000 test images with their labels.

    Returns :class:`MNIST` ``(x_train, y_train, x_test, y_test)``: images as
    float32 in [0, 1] of shape ``(n, 784)`` (``(n, 28, 28)`` if ``flatten`` is
    False), labels as int64 of shape ``(n,)``. ``path`` names a folder to read
    and disables every other place; otherwise the search order and download are
    as in the module docstring. Any folder of MNIST-layout files works (e.g.
    Fashion-MNIST); checksums are verified only for downloads.

    Raises ``FileNotFoundError`` listing every place looked when no files are
    found, :class:`ChecksumError` when downloads fail verification, and
    ``ValueError`` (or :class:`~funcnn.data.IDXError`) for malformed files.
    """
    if path is not None:
        folder = Path(path)
        missing = _missing(folder)
        if missing:
            raise _not_found(
                [_describe(folder, missing)],
                ["(path= was given, so no other place was searched and nothing downloaded.)"],
            )
        return _read_folder(folder, flatten)

    looked = []
    for folder in _candidates():
        missing = _missing(folder)
        if not missing:
            return _read_folder(folder, flatten)
        looked.append(_describe(folder, missing))

    cache = _cache_dir()
    if not download:
        raise _not_found(looked, ["(download=False, so nothing was downloaded.)"])
    failures = _download(cache, _missing(cache))
    if failures:
        raise _not_found(looked, failures)
    return _read_folder(cache, flatten)
