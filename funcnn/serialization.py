"""Pytrees to NumPy ``.npz`` archives and back, with a JSON header and no pickles.

A tree is stored as one array member per leaf, numbered in tree order
(``params/0``, ``params/1``, ...), and a JSON description of its containers
(tuples, lists, dicts with ``str`` keys, ``None``, and NamedTuples by
``module:qualname`` and field names) with each leaf's dtype, shape and path.
The descriptions of all trees, and whatever else the caller puts there, form
the header, stored as the ``uint8`` member ``__funcnn__``. Every member is
stored, never compressed.

Reading is strict and never trusts a size it has not checked. The archive is
opened by :mod:`funcnn._npz`, which refuses compressed, overlapping or mis-sized
members before any data is read; the JSON header may have at most
:data:`MAX_HEADER_BYTES`; and every leaf it describes must have its member's dtype
and shape before any leaf is read. A NamedTuple's class name is looked up in two
tables, funcnn's own classes and those :func:`register`-ed, and never imported
(importing a module a file names would run that module's code). A damaged or
crafted file raises :class:`FormatError`, never a ``MemoryError``, a pickle load or
an import.

This module knows pytrees, not networks: :mod:`funcnn.checkpoint` builds the
checkpoint format on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from funcnn._npz import FormatError, NpzReader
from funcnn.backend import is_jax_array

__all__ = [
    "FORMAT",
    "HEADER",
    "MAX_HEADER_BYTES",
    "VERSION",
    "FormatError",
    "NpzReader",
    "decode_trees",
    "encode_tree",
    "funcnn_types",
    "read_header",
    "funcnn_alias",
    "register",
    "write_npz",
]

FORMAT = "funcnn.checkpoint"
VERSION = 3  # 2 added the optional "extra" tree, 3 a funcnn.Net spec and the model state
HEADER = "__funcnn__"
MAX_HEADER_BYTES = 16 * 2**20  # JSON: ~100 bytes a leaf, plus the metadata (per-epoch history)
_LEAF_KINDS = "biufc"  # bool, int, uint, float, complex: dtypes stored without pickle
_CONTAINERS = "tuples, lists, dicts with str keys, NamedTuples and None"

_FUNCNN: dict[str, type] = {}  # funcnn's own classes, added by the modules that save them
_registry: dict[str, type] = {}  # the user's, added by register


# ---------------------------------------------------------------------------- NamedTuples


def _is_namedtuple_class(cls: Any) -> bool:
    return (
        isinstance(cls, type)
        and issubclass(cls, tuple)
        and isinstance(getattr(cls, "_fields", None), tuple)
    )


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _checked_name(cls: Any, caller: str) -> str:
    if not _is_namedtuple_class(cls):
        raise TypeError(f"{caller} expects a NamedTuple class; got {cls!r}")
    return _class_name(cls)


def funcnn_types(*classes: type) -> None:
    """Add funcnn's own NamedTuple ``classes`` to the fixed table every archive may name.

    For the funcnn modules that define what a checkpoint holds, at import
    (:mod:`funcnn.checkpoint`, :mod:`funcnn.callbacks`); users call :func:`register`.
    """
    _FUNCNN.update({_checked_name(cls, "funcnn_types"): cls for cls in classes})


def funcnn_alias(name: str, cls: type) -> None:
    """Let archives that name ``cls`` by an older ``module:qualname`` rebuild it."""
    _FUNCNN[name] = cls


def register(cls: type) -> type:
    """Let archives rebuild instances of the NamedTuple class ``cls``; returns ``cls``.

    Usable as a class decorator. The class is matched by its ``module:qualname``;
    registering another class under the same name replaces the earlier one, but not one
    of funcnn's own classes (which need no registration).
    """
    name = _checked_name(cls, "register")
    if _FUNCNN.get(name, cls) is not cls:
        raise ValueError(f"{name} is the name of one of funcnn's own classes; give your class "
                         "another name or module")
    _registry[name] = cls
    return cls


def _resolve_class(name: Any, path: str) -> type:
    """The NamedTuple class ``module:qualname`` from funcnn's table or the user's, never
    imported (importing a module named in a file would run its code)."""
    if type(name) is not str:
        raise FormatError(f"the header gives {path} an invalid class name {name!r:.100}")
    cls = _FUNCNN.get(name) or _registry.get(name)
    if cls is None:
        short = name.rpartition(":")[2].rpartition(".")[2]
        ours = ", ".join(sorted(c.__qualname__ for c in _FUNCNN.values()))
        theirs = ", ".join(sorted(_registry)[:5]) + (", ..." if len(_registry) > 5 else "")
        same = [n for n, c in _FUNCNN.items() if c.__qualname__ == short]
        raise FormatError(
            f"{path} is a {name!r:.100}, a class funcnn does not rebuild: a checkpoint may "
            f"name funcnn's own NamedTuples ({ours}) and the classes registered with "
            f"funcnn.checkpoint.register ({theirs or 'none'}), and funcnn never imports a "
            "module a file names. " + (
                f"funcnn's {short} is {same[0]!r}: this file was not written as funcnn.save "
                "wrote it" if same else "For a class of yours, import it and call "
                f"funcnn.checkpoint.register({short if short.isidentifier() else 'YourClass'}) "
                "before loading")
        )
    return cls


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
    """Write ``arrays`` and the JSON ``header`` (as the member ``__funcnn__``) to ``f``.

    Raises ValueError when the header is larger than :data:`MAX_HEADER_BYTES`, which
    :func:`read_header` would refuse.
    """
    raw = json.dumps(header).encode("utf-8")
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"the checkpoint header would be {len(raw)} bytes, more than the "
                         f"{MAX_HEADER_BYTES} a checkpoint may have; keep metadata small (arrays "
                         "belong in params, opt_state or extra)")
    members = {**arrays, HEADER: np.frombuffer(raw, np.uint8)}
    np.savez(f, **members)  # through a file object: no ".npz" is appended to any name


# ---------------------------------------------------------------------------- read


def read_header(reader: NpzReader, required: tuple[str, ...]) -> dict[str, Any]:
    """The JSON header, checked for the format, a readable version and the ``required`` keys."""
    member = reader.members[HEADER]
    if member.dtype != np.uint8 or len(member.shape) != 1:
        raise FormatError(f"the funcnn header {HEADER!r} is not a 1-d uint8 array")
    if member.shape[0] > MAX_HEADER_BYTES:
        raise FormatError(f"the funcnn header is {member.shape[0]} bytes, more than the "
                          f"{MAX_HEADER_BYTES} a checkpoint header may have")
    raw = reader.read(HEADER)
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FormatError(f"the funcnn header is not valid JSON ({type(err).__name__}: "
                          f"{err})") from None
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


class _Leaf(NamedTuple):
    key: str  # its member
    kind: str  # "array", "scalar" (a NumPy scalar) or "python" (a bool, int or float)
    path: str


_NONE = {"node": "none"}
_PYTHON_KINDS = {"bool": "b", "int": "iu", "float": "f"}  # the dtype kinds each is saved as


def decode_trees(header: dict[str, Any], names: tuple[str, ...], reader: NpzReader,
                 convert: Callable[[Any, str], Any]) -> dict[str, Any]:
    """The trees ``header[name]`` (absent: ``None``) for each of ``names``, from ``reader``.

    Everything is checked before any data is read: the structure and class names of every
    tree, each leaf's dtype and shape against its member's, and that each member other than
    the header is described exactly once. Then the leaves are read; ``convert(array,
    path)`` turns the arrays into the caller's backend.
    """
    used = {HEADER}
    leaves: list[_Leaf] = []
    try:
        for name in names:
            _check_node(header.get(name, _NONE), name, reader, used, leaves)
    except RecursionError:
        raise FormatError("the header nests its trees too deeply") from None
    unused = sorted(set(reader.members) - used)
    if unused:
        raise FormatError(f"the archive holds arrays the header does not describe: {unused[:5]}")
    values = {leaf.key: _read_leaf(leaf, reader, convert) for leaf in leaves}
    return {name: _build(header.get(name, _NONE), values) for name in names}


def _check_node(node: Any, path: str, reader: NpzReader, used: set[str],
                leaves: list[_Leaf]) -> None:
    """Check the tree ``node`` describes at ``path``, adding its leaves and members used."""
    if type(node) is not dict:
        raise FormatError(f"the header describes {path} with a malformed node: {node!r:.200}")
    kind = node.get("node")
    if kind == "none":
        return
    if kind in ("array", "scalar", "python"):
        leaves.append(_check_leaf(node, kind, path, reader, used))
        return
    if kind not in ("tuple", "list", "dict", "namedtuple"):
        raise FormatError(f"the header gives {path} an unknown node type {kind!r:.100}")
    children = node.get("children")
    if type(children) is not list:
        raise FormatError(f"the header describes {path} with a malformed node: {node!r:.200}")
    if kind == "dict":
        keys = node.get("keys")
        if (type(keys) is not list or len(keys) != len(children)
                or any(type(k) is not str for k in keys) or len(set(keys)) != len(keys)):
            raise FormatError(f"the header gives {path} malformed dict keys: {keys!r:.200}")
        steps = [f"[{k!r}]" for k in keys]
    elif kind == "namedtuple":
        cls = _resolve_class(node.get("class"), path)
        fields = node.get("fields")
        if not _known_fields(fields, cls) or len(children) != len(fields):
            raise FormatError(
                f"{path} was saved as {_class_name(cls)} with fields {fields!r:.200}, "
                f"but that class now has fields {list(cls._fields)}"
            )
        steps = [f".{f}" for f in fields]
    else:
        steps = [f"[{i}]" for i in range(len(children))]
    for step, child in zip(steps, children, strict=True):
        _check_node(child, path + step, reader, used, leaves)


def _known_fields(fields: Any, cls: type) -> bool:
    """Whether ``fields`` are those of ``cls``, or its first ones when the others have
    defaults (a field added to a class later: older files leave it at its default)."""
    return (type(fields) is list and fields == list(cls._fields[:len(fields)])
            and set(cls._fields[len(fields):]) <= set(cls._field_defaults))


def _check_leaf(node: dict[str, Any], kind: str, path: str, reader: NpzReader,
                used: set[str]) -> _Leaf:
    key = node.get("key")
    if type(key) is not str or key == HEADER or key not in reader.members:
        raise FormatError(f"the header maps {path} to {key!r:.100}, which is not in the archive")
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
    python = node.get("type")
    if kind == "python" and member.dtype.kind not in _PYTHON_KINDS.get(str(python), ""):
        raise FormatError(f"the Python scalar {path} is stored as {member.dtype}")
    return _Leaf(key, kind, path)


def _read_leaf(leaf: _Leaf, reader: NpzReader, convert: Callable[[Any, str], Any]) -> Any:
    arr = reader.read(leaf.key)
    if leaf.kind == "array":
        return convert(arr, leaf.path)
    if leaf.kind == "scalar":
        return convert(arr[()], leaf.path)
    return arr.item()


def _build(node: dict[str, Any], values: dict[str, Any]) -> Any:
    """The tree of a node :func:`_check_node` accepted, with the leaves read into ``values``."""
    kind = node["node"]
    if kind == "none":
        return None
    if kind in ("array", "scalar", "python"):
        return values[node["key"]]
    children = [_build(child, values) for child in node["children"]]
    if kind == "tuple":
        return tuple(children)
    if kind == "list":
        return children
    if kind == "dict":
        return dict(zip(node["keys"], children, strict=True))
    return _resolve_class(node["class"], "")(*children)
