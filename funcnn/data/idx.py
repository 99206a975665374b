"""The IDX array format used by MNIST and its relatives, read and written strictly.

An IDX file is a header followed by the array data, all big-endian::

    0x00 0x00 <type code> <ndim>      4 bytes: magic number
    <size 0> ... <size ndim-1>         ndim big-endian uint32 sizes
    <data>                             prod(sizes) items, C order

Type codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64. Files may be gzip-compressed; :func:`read_idx` tells by the gzip
magic bytes, not by the file name. Any deviation (bad magic number, unknown
type code, too few or too many data bytes, a broken gzip stream) raises
:class:`IDXError` naming the file: a damaged download never turns into a
silently wrong array.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from typing import Any

import numpy as np

from funcnn._files import write_bytes

__all__ = ["IDXError", "read_idx", "write_idx"]

# Type code -> big-endian on-disk dtype.
_CODES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXError(ValueError):
    """A file that is not a well-formed IDX file; ``path`` and ``problem`` say why."""

    def __init__(self, path: Any, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)


def _decompress(path: Any, raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise IDXError(path, "truncated gzip stream (the file ends mid-stream)") from None
    except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise IDXError(path, f"corrupt gzip stream ({err})") from None


def _parse(path: Any, data: bytes) -> np.ndarray:
    if len(data) < 4:
        raise IDXError(path, f"truncated header: {len(data)} bytes, need at least 4")
    zero, code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00":
        raise IDXError(path, f"bad magic number 0x{data[:4].hex()}: must start with two zero bytes")
    if code not in _CODES:
        known = ", ".join(f"0x{c:02X}" for c in _CODES)
        raise IDXError(path, f"unknown type code 0x{code:02X} (known: {known})")
    start = 4 + 4 * ndim
    if len(data) < start:
        raise IDXError(
            path, f"truncated header: {ndim} dimensions need {start} bytes, file has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:start])
    dtype = _CODES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(data) - start
    if got < expected:
        raise IDXError(
            path,
            f"truncated data: header promises shape {shape} of {dtype.name} "
            f"({expected} bytes) but only {got} bytes follow",
        )
    if got > expected:
        raise IDXError(
            path,
            f"{got - expected} trailing bytes after the {expected} data bytes "
            f"of shape {shape} ({dtype.name})",
        )
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start)
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a new native-endian array.

    Returns an array of the shape and dtype stored in the header; raises
    :class:`IDXError` if the file is malformed in any way.
    """
    with open(path, "rb") as f:
        raw = f.read()
    data = _decompress(path, raw) if raw[:2] == _GZIP_MAGIC else raw
    return _parse(path, data)


def _code_of(dtype: np.dtype) -> int:
    native = dtype.newbyteorder("=")
    for code, disk in _CODES.items():
        if native == disk.newbyteorder("="):
            return code
    names = ", ".join(d.name for d in _CODES.values())
    raise TypeError(f"IDX cannot store dtype {dtype}; supported: {names}")


def write_idx(path: str | os.PathLike, array: Any, *, compress: bool | None = None) -> None:
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64) as an IDX file.

    ``compress`` gzips the file; by default it is True when ``path`` ends in
    ``.gz``. The file appears atomically: readers see the old file or the
    complete new one, never a partial write.
    """
    array = np.asarray(array)
    code = _code_of(array.dtype)
    if array.ndim > 255:
        raise ValueError(f"IDX stores at most 255 dimensions; got {array.ndim}")
    if any(n >= 2**32 for n in array.shape):
        raise ValueError(f"IDX sizes must fit in uint32; got shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=_CODES[code]).tobytes()
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    if compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    write_bytes(path, data)
