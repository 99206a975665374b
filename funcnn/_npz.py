"""``.npz`` archives read without trusting a size: the reading half of the checkpoint format.

A file a user is handed may be crafted. Opening one reads only the zip directory and
each member's small ``.npy`` header, and refuses, before any data is read, every
member that could cost more than the file's own size: a compressed member (a 1 MB
deflated member can inflate to 1 GB; funcnn writes stored members only), a size the
file does not hold, members that overlap, an ``.npy`` header that promises another
size than its member's, and object arrays (which would need a pickle). What is wrong
raises :class:`FormatError`; :mod:`funcnn.serialization` reads trees on top of it.
"""

from __future__ import annotations

import math
import zipfile
from typing import BinaryIO, NamedTuple

import numpy as np

__all__ = ["FormatError", "NpzReader"]


class FormatError(Exception):
    """What is wrong with an archive being read (the caller names the file)."""


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class _Member(NamedTuple):
    info: zipfile.ZipInfo
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool


def _check_directory(names: list[str], infos: list[zipfile.ZipInfo], file_size: int) -> None:
    """Refuse, before any member is opened, what could cost more to read than the file's
    size: a compressed member (funcnn writes stored ones; a small deflated member can
    inflate to gigabytes) and sizes the file does not hold, alone or added up (members
    that overlap, so that one stretch of the file would be read many times)."""
    for name, info in zip(names, infos, strict=True):
        if info.compress_type != zipfile.ZIP_STORED:
            raise FormatError(
                f"the member {name!r} is compressed (zip method {info.compress_type}): funcnn "
                "writes stored members only and refuses compressed ones, whose data could "
                "inflate far beyond the file's size"
            )
        if info.compress_size != info.file_size or info.file_size > file_size:
            raise FormatError(f"the archive directory gives the member {name!r} a size "
                              f"({info.file_size} bytes) that the file does not hold")
    total = sum(info.file_size for info in infos)
    if total > file_size:
        raise FormatError(f"the archive directory gives its members {total} bytes in all, more "
                          f"than the file's {file_size}: its members overlap")


class NpzReader:
    """The members of an open ``.npz`` archive (which must hold the member ``required``),
    each described by its ``.npy`` header.

    Construction reads only the archive directory and the small ``.npy`` headers, and
    checks that every member is stored (not compressed), that the members' sizes fit in
    the file and that each is what its ``.npy`` header promises;
    :meth:`read` then loads one member's data.
    """

    def __init__(self, f: BinaryIO, file_size: int, required: str):
        start = f.read(6)
        f.seek(0)
        if start == b"\x93NUMPY":
            raise FormatError("a single .npy array, not an .npz checkpoint")
        try:
            self._zip = zipfile.ZipFile(f)
        except Exception as err:  # BadZipFile, or OSError/EOFError of a cut directory
            raise FormatError(f"not an .npz archive ({_reason(err)})") from err
        infos = self._zip.infolist()
        names = [i.filename.removesuffix(".npy") for i in infos]
        if required not in names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise FormatError(f"an .npz archive without the funcnn header {required!r} "
                              f"(its members: {shown or 'none'})")
        if len(set(names)) != len(names):
            raise FormatError("the archive holds two members of the same name")
        _check_directory(names, infos, file_size)
        self.members = {name: self._describe(name, info)
                        for name, info in zip(names, infos, strict=True)}

    def _describe(self, name: str, info: zipfile.ZipInfo) -> _Member:
        try:
            with self._zip.open(info) as m:
                version = np.lib.format.read_magic(m)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"unsupported .npy format version {version}")
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read(m)
                offset = m.tell()
        except Exception as err:  # a bad magic, header dict or zip entry
            raise FormatError(f"the member {name!r} is not a .npy array ({_reason(err)})") \
                from err
        if dtype.hasobject:
            raise FormatError(f"the member {name!r} holds Python objects (dtype {dtype}), "
                              "which a checkpoint never contains")
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes != info.file_size:
            raise FormatError(
                f"the member {name!r} promises shape {shape} of {dtype} ({nbytes} bytes) but "
                f"holds {info.file_size - offset} bytes of data"
            )
        return _Member(info, dtype, tuple(shape), fortran)

    def read(self, name: str) -> np.ndarray:
        """The data of member ``name`` as a new writeable array (CRC checked)."""
        member = self.members[name]
        nbytes = math.prod(member.shape) * member.dtype.itemsize
        try:
            with self._zip.open(member.info) as m:
                m.seek(member.info.file_size - nbytes)
                data = m.read(nbytes)
                if len(data) != nbytes or m.read(1):  # reading to the end checks the CRC
                    raise EOFError(f"{len(data)} of {nbytes} bytes")
        except Exception as err:  # zip, CRC or decompression errors of a damaged member
            raise FormatError(f"a damaged archive member {name!r} ({_reason(err)})") from err
        if nbytes == 0:
            return np.zeros(member.shape, member.dtype)
        order = "F" if member.fortran else "C"
        return np.frombuffer(bytearray(data), member.dtype).reshape(member.shape, order=order)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
