"""Pytrees to NumPy ``.npz`` archives and back, with a JSON header and no pickles.

A tree is stored as one array member per leaf, numbered in tree order
(``params/0``, ``params/1``, ...), and a JSON description of its containers
(tuples, lists, dicts with ``str`` keys, ``None``, and NamedTuples by
``module:qualname`` and field names) with each leaf's dtype, shape and path.
The descriptions of all trees, and whatever else the caller puts there, form
the header, stored as the ``uint8`` member ``__funcnn__``.

Reading is strict and never trusts a size it has not checked: each member's
``.npy`` header is read first, its size compared with the archive's directory
and the file's length, and its dtype and shape compared with the JSON header,
all before any data is loaded. A damaged or crafted file raises
:class:`FormatError`, never a ``MemoryError`` or a pickle load.

This module knows pytrees, not networks: :mod:`funcnn.checkpoint` builds the
checkpoint format on it.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from funcnn.backend import is_jax_array

__all__ = [
    "FORMAT",
    "HEADER",
    "VERSION",
    "FormatError",
    "NpzReader",
    "decode_tree",
    "encode_tree",
    "read_header",
    "register",
    "write_npz",
]

FORMAT = "funcnn.checkpoint"
VERSION = 2  # 2 added the optional "extra" tree; version 1 files are still read
HEADER = "__funcnn__"
_LEAF_KINDS = "biufc"  # bool, int, uint, float, complex: dtypes stored without pickle
_PYTHON_SCALARS = {"bool": bool, "int": int, "float": float}
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_CONTAINERS = "tuples, lists, dicts with str keys, NamedTuples and None"

_registry: dict[str, type] = {}


class FormatError(Exception):
    """What is wrong with an archive being read (the caller names the file)."""


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


# ---------------------------------------------------------------------------- NamedTuples


def _is_namedtuple_class(cls: Any) -> bool:
    return (
        isinstance(cls, type)
        and issubclass(cls, tuple)
        and isinstance(getattr(cls, "_fields", None), tuple)
    )


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register(cls: type) -> type:
    """Let archives rebuild instances of the NamedTuple class ``cls``; returns ``cls``.

    Usable as a class decorator. The class is matched by its ``module:qualname``;
    registering another class under the same name replaces the earlier one.
    Classes defined in ``funcnn`` need no registration.
    """
    if not _is_namedtuple_class(cls):
        raise TypeError(f"register expects a NamedTuple class; got {cls!r}")
    _registry[_class_name(cls)] = cls
    return cls


def _resolve_class(name: Any, path: str) -> type:
    """The NamedTuple class ``module:qualname``: registered, or imported from funcnn only."""
    if type(name) is not str or name.count(":") != 1:
        raise FormatError(f"the header gives {path} an invalid class name {name!r:.100}")
    if name in _registry:
        return _registry[name]
    module, qualname = name.split(":")
    if module != "funcnn" and not module.startswith("funcnn."):
        short = qualname.rpartition(".")[2]
        raise FormatError(
            f"{path} is a {name}, a NamedTuple class that is not part of funcnn and has not "
            f"been registered; import it and call funcnn.checkpoint.register({short}) "
            "before loading"
        )
    if not (_DOTTED_NAME.fullmatch(module) and _DOTTED_NAME.fullmatch(qualname)):
        raise FormatError(f"the header gives {path} an invalid class name {name!r:.100}")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise FormatError(f"{path} is a {name}, which this funcnn lacks ({err})") from None
    if not _is_namedtuple_class(obj):
        raise FormatError(f"{path} names {name}, which is not a NamedTuple class")
    return obj


# ---------------------------------------------------------------------------- encode


def encode_tree(tree: Any, name: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The JSON description of ``tree``; its leaves are added to ``arrays`` as ``name/<i>``.

    Raises TypeError naming the path of an unsupported container, key or leaf.
    """
    count = 0

    def walk(x: Any, path: str) -> dict[str, Any]:
        nonlocal count
        cls = type(x)
        if x is None:
            return {"node": "none"}
        if _is_namedtuple_class(cls):
            return {"node": "namedtuple", "class": _class_name(cls), "fields": list(cls._fields),
                    "children": [walk(c, f"{path}.{f}")
                                 for f, c in zip(cls._fields, x, strict=True)]}
        if cls is tuple or cls is list:
            return {"node": cls.__name__,
                    "children": [walk(c, f"{path}[{i}]") for i, c in enumerate(x)]}
        if cls is dict:
            for k in x:
                if type(k) is not str:
                    raise TypeError(f"{path} has the key {k!r} of type {type(k).__name__}; "
                                    "checkpoint dicts need str keys")
            return {"node": "dict", "keys": list(x),
                    "children": [walk(c, f"{path}[{k!r}]") for k, c in x.items()]}
        kind, arr = _leaf_array(x, path)
        key = f"{name}/{count}"
        count += 1
        arrays[key] = arr
        entry = {"node": kind, "key": key, "dtype": arr.dtype.str, "shape": list(arr.shape),
                 "path": path}
        if kind == "python":
            entry["type"] = cls.__name__
        return entry

    return walk(tree, name)


def _leaf_array(x: Any, path: str) -> tuple[str, np.ndarray]:
    """``(kind, array)`` for a leaf: kind is ``array``, ``scalar`` (NumPy) or ``python``."""
    if type(x) in (bool, int, float):
        kind, arr = "python", np.asarray(x)
    elif isinstance(x, np.generic):
        kind, arr = "scalar", np.asarray(x)
    elif isinstance(x, np.ndarray):
        kind, arr = "array", np.asarray(x)
    elif is_jax_array(x):
        try:
            kind, arr = "array", np.asarray(x)
        except Exception as err:  # tracers and typed PRNG keys cannot become NumPy arrays
            raise TypeError(
                f"{path} is a jax value that cannot be converted to a NumPy array "
                f"({type(err).__name__}); save concrete arrays, outside jax.jit"
            ) from err
    else:
        raise TypeError(
            f"{path} is a {type(x).__name__}; checkpoint leaves must be NumPy or jax arrays, "
            f"NumPy scalars or Python bool/int/float, inside {_CONTAINERS}"
        )
    if arr.dtype.kind not in _LEAF_KINDS:
        what = "an int too large for int64" if kind == "python" else f"dtype {arr.dtype}"
        raise TypeError(
            f"{path} has {what}; checkpoints store bool, integer, float and complex arrays only"
        )
    return kind, arr


def write_npz(f: BinaryIO, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> None:
    """Write ``arrays`` and the JSON ``header`` (as the member ``__funcnn__``) to ``f``."""
    members = {**arrays, HEADER: np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8)}
    np.savez(f, **members)  # through a file object: no ".npz" is appended to any name


# ---------------------------------------------------------------------------- read


class _Member(NamedTuple):
    info: zipfile.ZipInfo
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool


class NpzReader:
    """The members of an open ``.npz`` archive, each described by its ``.npy`` header.

    Construction reads only the archive directory and the small ``.npy`` headers, and
    checks that every member's size is what its header promises and fits in the file;
    :meth:`read` then loads one member's data.
    """

    def __init__(self, f: BinaryIO, file_size: int):
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
        if HEADER not in names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise FormatError(f"an .npz archive without the funcnn header {HEADER!r} "
                              f"(its members: {shown or 'none'})")
        if len(set(names)) != len(names):
            raise FormatError("the archive holds two members of the same name")
        self.members = {name: self._describe(name, info, file_size)
                        for name, info in zip(names, infos, strict=True)}

    def _describe(self, name: str, info: zipfile.ZipInfo, file_size: int) -> _Member:
        if info.compress_size > file_size or (
            info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size
        ):
            raise FormatError(f"the archive directory gives the member {name!r} a size "
                              f"({info.file_size} bytes) that the file does not hold")
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


def read_header(reader: NpzReader, required: tuple[str, ...]) -> dict[str, Any]:
    """The JSON header, checked for the format, a readable version and the ``required`` keys."""
    member = reader.members[HEADER]
    if member.dtype != np.uint8 or len(member.shape) != 1:
        raise FormatError(f"the funcnn header {HEADER!r} is not a 1-d uint8 array")
    raw = reader.read(HEADER)
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FormatError(f"the funcnn header is not valid JSON ({_reason(err)})") from None
    if type(header) is not dict or header.get("format") != FORMAT:
        raise FormatError(f"the header {HEADER!r} is not a funcnn checkpoint header")
    version = header.get("version")
    if type(version) is not int or version < 1:
        raise FormatError(f"the header has an invalid format version {version!r}")
    if version > VERSION:
        raise FormatError(f"format version {version} is newer than this funcnn reads "
                          f"(up to {VERSION}); upgrade funcnn")
    missing = [k for k in required if k not in header]
    if missing:
        raise FormatError(f"the header lacks the entries {missing}")
    return header


def decode_tree(node: Any, path: str, reader: NpzReader, used: set[str],
                convert: Callable[[Any, str], Any]) -> Any:
    """Rebuild the tree that ``node`` describes from ``reader``, adding the members used.

    Each leaf's dtype and shape are compared with its member's before its data is read;
    ``convert(array, path)`` turns the loaded arrays into the caller's backend.
    """

    def walk(node: Any, path: str) -> Any:
        if type(node) is not dict:
            raise FormatError(f"the header describes {path} with a malformed node: "
                              f"{node!r:.200}")
        kind = node.get("node")
        if kind == "none":
            return None
        if kind in ("array", "scalar", "python"):
            return leaf(node, kind, path)
        if kind not in ("tuple", "list", "dict", "namedtuple"):
            raise FormatError(f"the header gives {path} an unknown node type {kind!r:.100}")
        children = node.get("children")
        if type(children) is not list:
            raise FormatError(f"the header describes {path} with a malformed node: "
                              f"{node!r:.200}")
        if kind == "tuple":
            return tuple(walk(c, f"{path}[{i}]") for i, c in enumerate(children))
        if kind == "list":
            return [walk(c, f"{path}[{i}]") for i, c in enumerate(children)]
        if kind == "dict":
            keys = node.get("keys")
            if (type(keys) is not list or len(keys) != len(children)
                    or any(type(k) is not str for k in keys) or len(set(keys)) != len(keys)):
                raise FormatError(f"the header gives {path} malformed dict keys: {keys!r:.200}")
            return {k: walk(c, f"{path}[{k!r}]") for k, c in zip(keys, children, strict=True)}
        cls = _resolve_class(node.get("class"), path)  # a namedtuple
        fields = node.get("fields")
        if fields != list(cls._fields) or len(children) != len(fields):
            raise FormatError(
                f"{path} was saved as {_class_name(cls)} with fields {fields!r:.200}, "
                f"but that class now has fields {list(cls._fields)}"
            )
        return cls(*(walk(c, f"{path}.{f}") for f, c in zip(fields, children, strict=True)))

    def leaf(node: dict[str, Any], kind: str, path: str) -> Any:
        key = node.get("key")
        if type(key) is not str or key == HEADER or key not in reader.members:
            raise FormatError(f"the header maps {path} to {key!r:.100}, which is not in the "
                              "archive")
        if key in used:
            raise FormatError(f"the header maps {path} to {key!r}, which another leaf uses too")
        used.add(key)
        member = reader.members[key]
        if member.dtype.kind not in _LEAF_KINDS:
            raise FormatError(f"the member {key!r} for {path} is not a numeric array")
        want = (node.get("dtype"), node.get("shape"))
        if want != (member.dtype.str, list(member.shape)):
            raise FormatError(
                f"the header says {path} is {want[0]!r:.20} of shape {want[1]!r:.100}, but the "
                f"member {key!r} is {member.dtype.str!r} of shape {list(member.shape)}"
            )
        if kind != "array" and member.shape != ():
            raise FormatError(f"the scalar {path} is stored with shape {member.shape}")
        arr = reader.read(key)
        if kind == "array":
            return convert(arr, path)
        if kind == "scalar":
            return convert(arr[()], path)
        value = arr.item()
        if type(value) is not _PYTHON_SCALARS.get(node.get("type")):
            raise FormatError(f"the Python scalar {path} is stored as {arr.dtype}")
        return value

    return walk(node, path)
