"""Checkpoints: params, optimizer state, net spec and metadata in one ``.npz`` file.

A checkpoint is an uncompressed NumPy ``.npz`` archive that holds no pickles:

- each array leaf of ``params`` and ``opt_state`` is one member, numbered in tree
  order: ``params/0``, ``params/1``, ..., ``opt_state/0``, ...;
- the member ``__funcnn__`` is a UTF-8 JSON header stored as a ``uint8`` array. It
  holds the format version, the structure of both trees (tuples, lists, dicts with
  ``str`` keys, ``None``, and NamedTuples by ``module:qualname`` and field names),
  each leaf's dtype, shape and tree path, the :class:`~funcnn.MLP` spec and the
  metadata dict.

:func:`load` reads with ``np.load(path, allow_pickle=False)``, checks the header
against the stored arrays and rebuilds the same container types, dtypes and
bit-identical values. A NamedTuple class is looked up by name only inside
``funcnn``; classes of your own must be registered, in every process that loads::

    @funcnn.checkpoint.register
    class EMAState(NamedTuple):
        count: Any
        ema: Any

:func:`save` is atomic: the archive goes to a temporary file next to ``path``,
is flushed to disk, and is then renamed over ``path``. A crash at any moment
leaves either the old checkpoint or the new one, never a torn file; at worst a
stray ``.NAME.*.tmp`` file remains, which is safe to delete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from funcnn._checks import check_params_like
from funcnn.backend import get_backend, is_jax_array, namespace
from funcnn.mlp import MLP, Dense

__all__ = ["Checkpoint", "CheckpointError", "load", "register", "save"]

FORMAT = "funcnn.checkpoint"
VERSION = 1

_HEADER = "__funcnn__"
_LEAF_KINDS = "biufc"  # bool, int, uint, float, complex: dtypes stored without pickle
_PYTHON_SCALARS = {"bool": bool, "int": int, "float": float}
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_CONTAINERS = "tuples, lists, dicts with str keys, NamedTuples and None"

_registry: dict[str, type] = {}


class Checkpoint(NamedTuple):
    """What :func:`load` returns; ``net`` and ``metadata`` are ``None`` when none was saved."""

    params: Any
    opt_state: Any
    net: MLP | None
    metadata: dict[str, Any] | None


class CheckpointError(ValueError):
    """The file is not a readable funcnn checkpoint: corrupt, truncated, foreign or
    inconsistent. The message names the file and what is wrong."""


class _Invalid(Exception):
    """Internal: what is wrong with the file being loaded (wrapped into CheckpointError)."""


def _is_namedtuple_class(cls: Any) -> bool:
    return (
        isinstance(cls, type)
        and issubclass(cls, tuple)
        and isinstance(getattr(cls, "_fields", None), tuple)
    )


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register(cls: type) -> type:
    """Let :func:`load` rebuild instances of the NamedTuple class ``cls``; returns ``cls``.

    Usable as a class decorator. The class is matched by its ``module:qualname``;
    registering another class under the same name replaces the earlier one.
    Classes defined in ``funcnn`` need no registration.
    """
    if not _is_namedtuple_class(cls):
        raise TypeError(f"register expects a NamedTuple class; got {cls!r}")
    _registry[_class_name(cls)] = cls
    return cls


# ---------------------------------------------------------------------------- save


def save(
    path: str | os.PathLike,
    params: Any,
    opt_state: Any = None,
    *,
    net: MLP | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write ``params``, ``opt_state``, ``net`` and ``metadata`` atomically to ``path``.

    The file is written exactly at ``path``; no ``.npz`` suffix is added.

    Args:
      path: the checkpoint file; its directory must exist.
      params, opt_state: pytrees (tuples, lists, dicts with ``str`` keys, NamedTuples,
        ``None``) whose leaves are NumPy or jax arrays, NumPy scalars, or Python
        ``bool``/``int``/``float``, of bool, integer, float or complex dtype.
      net: the :class:`~funcnn.MLP` the params belong to; they must match its shapes.
      metadata: a dict of JSON values (dicts with ``str`` keys, lists, ``str``,
        ``int``, ``float``, ``bool``, ``None``), e.g. the epoch and the loss.

    Raises:
      TypeError: an unsupported leaf, container, dtype or metadata value (named by path).
      ValueError: ``params`` do not match ``net``.
      OSError: the file could not be written; an existing checkpoint is left intact.
    """
    target = os.fspath(path)
    arrays: dict[str, np.ndarray] = {}
    header = {
        "format": FORMAT,
        "version": VERSION,
        "funcnn_version": _funcnn_version(),
        "params": _encode_tree(params, "params", arrays),
        "opt_state": _encode_tree(opt_state, "opt_state", arrays),
        "net": _encode_net(net, params),
        "metadata": _encode_metadata(metadata),
    }
    arrays[_HEADER] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    _atomic_write(target, arrays)


def _funcnn_version() -> str:
    import funcnn

    return getattr(funcnn, "__version__", "unknown")


def _encode_tree(tree: Any, name: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The JSON description of ``tree``; its leaves are added to ``arrays`` as ``name/<i>``."""
    count = 0

    def walk(x: Any, path: str) -> dict[str, Any]:
        nonlocal count
        cls = type(x)
        if x is None:
            return {"node": "none"}
        if _is_namedtuple_class(cls):
            return {
                "node": "namedtuple",
                "class": _class_name(cls),
                "fields": list(cls._fields),
                "children": [walk(c, f"{path}.{f}") for f, c in zip(cls._fields, x, strict=True)],
            }
        if cls is tuple or cls is list:
            return {
                "node": cls.__name__,
                "children": [walk(c, f"{path}[{i}]") for i, c in enumerate(x)],
            }
        if cls is dict:
            for k in x:
                if type(k) is not str:
                    raise TypeError(
                        f"{path} has the key {k!r} of type {type(k).__name__}; "
                        "checkpoint dicts need str keys"
                    )
            return {
                "node": "dict",
                "keys": list(x),
                "children": [walk(c, f"{path}[{k!r}]") for k, c in x.items()],
            }
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


def _expected_params(net: MLP) -> tuple[Dense, ...]:
    return tuple(
        Dense(np.empty((i, o), np.float32), np.empty((o,), np.float32))
        for i, o in zip(net.sizes[:-1], net.sizes[1:], strict=True)
    )


def _encode_net(net: Any, params: Any) -> dict[str, Any] | None:
    if net is None:
        return None
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a funcnn.MLP or None; got {type(net).__name__}")
    check_params_like("params", params, _expected_params(net), f"the params of {net}")
    return {f.name: getattr(net, f.name) for f in dataclasses.fields(net)}


def _encode_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if type(metadata) is not dict:
        raise TypeError(f"metadata must be a dict or None; got {type(metadata).__name__}")
    _check_json(metadata, "metadata")
    return metadata


def _check_json(value: Any, path: str) -> None:
    """Raise TypeError naming the first value under ``path`` that would not round-trip as JSON."""
    cls = type(value)
    if value is None or cls in (bool, int, float, str):
        return
    if cls is list:
        for i, v in enumerate(value):
            _check_json(v, f"{path}[{i}]")
        return
    if cls is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(
                    f"{path} has the key {k!r} of type {type(k).__name__}; metadata keys "
                    "must be str"
                )
            _check_json(v, f"{path}[{k!r}]")
        return
    if cls is tuple:
        hint = "; use a list (JSON has no tuples, so a tuple would come back as a list)"
    elif isinstance(value, np.generic):
        hint = "; convert it with .item()"
    elif isinstance(value, np.ndarray) or is_jax_array(value):
        hint = "; put arrays in params or opt_state, or convert small ones with .tolist()"
    else:
        hint = ""
    raise TypeError(
        f"{path} is a {cls.__name__}, which is not JSON-serialisable: metadata holds only "
        f"dicts with str keys, lists, str, int, float, bool and None{hint}"
    )


def _write_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    # Through a file object, so NumPy writes at the given name and never appends ".npz".
    np.savez(f, **arrays)


def _atomic_write(target: str, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temporary file in the target's directory, fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):  # mkstemp makes 0600 files; keep usual permissions
            os.chmod(tmp, _file_mode(target))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _file_mode(target: str) -> int:
    """The existing checkpoint's permissions, else those of a new file under the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0o022)  # the only portable way to read the umask is to set it
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    """Make the rename durable; best effort (not possible on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- load


def load(
    path: str | os.PathLike, *, backend: str | None = None, net: MLP | None = None
) -> Checkpoint:
    """Read a checkpoint written by :func:`save`.

    Args:
      path: the checkpoint file.
      backend: ``None`` or ``"numpy"`` for NumPy arrays, ``"jax"`` for jax arrays.
        Dtypes are kept (64-bit leaves on jax need ``jax_enable_x64``); Python
        scalar leaves stay Python scalars.
      net: the spec you expect; checked against the saved one, and the params are
        checked against its layer shapes.

    Returns:
      ``Checkpoint(params, opt_state, net, metadata)`` with the saved container
      types (NamedTuples included), dtypes, shapes and bit-identical values.

    Raises:
      FileNotFoundError: no file at ``path``.
      CheckpointError: the file is truncated, corrupt, not an ``.npz``, has no funcnn
        header, its header does not match its arrays, or it names a NamedTuple class
        that is neither in funcnn nor registered with :func:`register`.
      ValueError: ``net`` differs from the saved net or does not fit the params, or
        64-bit leaves are loaded on jax without ``jax_enable_x64``.
    """
    source = os.fspath(path)
    convert = _leaf_converter(get_backend(backend) if backend is not None else "numpy")
    if net is not None and not isinstance(net, MLP):
        raise TypeError(f"net must be a funcnn.MLP or None; got {type(net).__name__}")
    try:
        arrays = _read_arrays(source)
        ckpt = _decode(arrays, convert)
    except _Invalid as err:
        raise CheckpointError(f"cannot load checkpoint {source!r}: {err}") from err.__cause__
    if net is not None:
        if ckpt.net is not None and net != ckpt.net:
            raise ValueError(
                f"checkpoint {source!r} was saved for a different net:\n"
                f"  saved: {ckpt.net}\n  given: {net}"
            )
        try:
            check_params_like("params", ckpt.params, _expected_params(net), f"the params of {net}")
        except ValueError as err:
            raise ValueError(f"checkpoint {source!r}: {err}") from None
    return ckpt


def _leaf_converter(backend: str) -> Callable[[Any, str], Any]:
    if backend == "numpy":
        return lambda leaf, path: leaf
    jnp = namespace("jax")
    import jax

    def to_jax(leaf: Any, path: str) -> Any:
        if jax.dtypes.canonicalize_dtype(leaf.dtype) != leaf.dtype:
            raise ValueError(
                f"{path} is {leaf.dtype}, which jax would turn into "
                f"{jax.dtypes.canonicalize_dtype(leaf.dtype)}; call "
                "jax.config.update('jax_enable_x64', True) first, or load with backend='numpy'"
            )
        return jnp.asarray(leaf)

    return to_jax


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _read_arrays(source: str) -> dict[str, Any]:
    """Every member of the archive, read in full (so any damage shows up here)."""
    try:
        f = open(source, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no checkpoint file", source) from None
    with f:
        try:
            data = np.load(f, allow_pickle=False)
        except MemoryError:
            raise
        except Exception as err:
            raise _Invalid(f"not an .npz archive ({_reason(err)})") from err
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise _Invalid("a single .npy array, not an .npz checkpoint")
        with data:
            try:
                names = list(data.files)
                if _HEADER not in names:
                    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                    raise _Invalid(
                        f"an .npz archive without the funcnn header {_HEADER!r} "
                        f"(its members: {shown or 'none'})"
                    )
                return {name: data[name] for name in names}
            except (_Invalid, MemoryError):
                raise
            except Exception as err:  # zip, CRC or npy errors of a damaged member
                raise _Invalid(f"a damaged archive member ({_reason(err)})") from err


def _decode(arrays: dict[str, Any], convert: Callable[[Any, str], Any]) -> Checkpoint:
    header = _read_header(arrays.pop(_HEADER))
    used: set[str] = set()
    params = _decode_tree(header["params"], "params", arrays, used, convert)
    opt_state = _decode_tree(header["opt_state"], "opt_state", arrays, used, convert)
    unused = sorted(set(arrays) - used)
    if unused:
        raise _Invalid(f"the archive holds arrays the header does not describe: {unused[:5]}")

    spec = header["net"]
    net = None
    if spec is not None:
        if type(spec) is not dict:
            raise _Invalid(f"the saved net spec is not a dict: {spec!r}")
        try:
            net = MLP(**spec)
        except (TypeError, ValueError) as err:
            raise _Invalid(f"the saved net spec {spec} is not valid ({err})") from None
        try:
            check_params_like("params", params, _expected_params(net), f"the params of {net}")
        except ValueError as err:
            raise _Invalid(f"the params do not fit the saved net: {err}") from None

    metadata = header["metadata"]
    if metadata is not None and type(metadata) is not dict:
        raise _Invalid(f"the metadata is not a dict: {type(metadata).__name__}")
    return Checkpoint(params, opt_state, net, metadata)


def _read_header(raw: Any) -> dict[str, Any]:
    if not (isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.ndim == 1):
        raise _Invalid(f"the funcnn header {_HEADER!r} is not a 1-d uint8 array")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _Invalid(f"the funcnn header is not valid JSON ({_reason(err)})") from None
    if type(header) is not dict or header.get("format") != FORMAT:
        raise _Invalid(f"the header {_HEADER!r} is not a funcnn checkpoint header")
    version = header.get("version")
    if type(version) is not int or version < 1:
        raise _Invalid(f"the header has an invalid format version {version!r}")
    if version > VERSION:
        raise _Invalid(
            f"format version {version} is newer than this funcnn reads (up to {VERSION}); "
            "upgrade funcnn"
        )
    missing = [k for k in ("params", "opt_state", "net", "metadata") if k not in header]
    if missing:
        raise _Invalid(f"the header lacks the entries {missing}")
    return header


def _decode_tree(
    node: Any, path: str, arrays: dict[str, Any], used: set[str],
    convert: Callable[[Any, str], Any],
) -> Any:
    """Rebuild the tree described by ``node`` from ``arrays``, marking the members it uses."""

    def walk(node: Any, path: str) -> Any:
        if type(node) is not dict:
            raise _Invalid(f"the header describes {path} with a malformed node: {node!r:.200}")
        kind = node.get("node")
        if kind == "none":
            return None
        if kind in ("array", "scalar", "python"):
            return leaf(node, kind, path)
        if kind not in ("tuple", "list", "dict", "namedtuple"):
            raise _Invalid(f"the header gives {path} an unknown node type {kind!r:.100}")
        children = node.get("children")
        if type(children) is not list:
            raise _Invalid(f"the header describes {path} with a malformed node: {node!r:.200}")
        if kind == "tuple":
            return tuple(walk(c, f"{path}[{i}]") for i, c in enumerate(children))
        if kind == "list":
            return [walk(c, f"{path}[{i}]") for i, c in enumerate(children)]
        if kind == "dict":
            keys = node.get("keys")
            if (
                type(keys) is not list
                or len(keys) != len(children)
                or any(type(k) is not str for k in keys)
                or len(set(keys)) != len(keys)
            ):
                raise _Invalid(f"the header gives {path} malformed dict keys: {keys!r:.200}")
            return {k: walk(c, f"{path}[{k!r}]") for k, c in zip(keys, children, strict=True)}
        cls = _resolve_class(node.get("class"), path)  # a namedtuple
        fields = node.get("fields")
        if fields != list(cls._fields) or len(children) != len(fields):
            raise _Invalid(
                f"{path} was saved as {_class_name(cls)} with fields {fields!r:.200}, "
                f"but that class now has fields {list(cls._fields)}"
            )
        return cls(*(walk(c, f"{path}.{f}") for f, c in zip(fields, children, strict=True)))

    def leaf(node: dict[str, Any], kind: str, path: str) -> Any:
        key = node.get("key")
        if type(key) is not str or key not in arrays:
            raise _Invalid(f"the header maps {path} to {key!r:.100}, which is not in the archive")
        if key in used:
            raise _Invalid(f"the header maps {path} to {key!r}, which another leaf uses too")
        used.add(key)
        arr = arrays[key]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in _LEAF_KINDS:
            raise _Invalid(f"the member {key!r} for {path} is not a numeric array")
        want = (node.get("dtype"), node.get("shape"))
        if want != (arr.dtype.str, list(arr.shape)):
            raise _Invalid(
                f"the header says {path} is {want[0]!r:.20} of shape {want[1]!r:.100}, but the "
                f"member {key!r} is {arr.dtype.str!r} of shape {list(arr.shape)}"
            )
        if kind == "array":
            return convert(arr, path)
        if arr.ndim != 0:
            raise _Invalid(f"the scalar {path} is stored with shape {arr.shape}")
        if kind == "scalar":
            return convert(arr[()], path)
        value = arr.item()
        if type(value) is not _PYTHON_SCALARS.get(node.get("type")):
            raise _Invalid(f"the Python scalar {path} is stored as {arr.dtype}")
        return value

    return walk(node, path)


def _resolve_class(name: Any, path: str) -> type:
    """The NamedTuple class ``module:qualname``: registered, or imported from funcnn only."""
    if type(name) is not str or name.count(":") != 1:
        raise _Invalid(f"the header gives {path} an invalid class name {name!r:.100}")
    if name in _registry:
        return _registry[name]
    module, qualname = name.split(":")
    if module != "funcnn" and not module.startswith("funcnn."):
        short = qualname.rpartition(".")[2]
        raise _Invalid(
            f"{path} is a {name}, a NamedTuple class that is not part of funcnn and has not "
            f"been registered; import it and call funcnn.checkpoint.register({short}) "
            "before loading"
        )
    if not (_DOTTED_NAME.fullmatch(module) and _DOTTED_NAME.fullmatch(qualname)):
        raise _Invalid(f"the header gives {path} an invalid class name {name!r:.100}")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise _Invalid(f"{path} is a {name}, which this funcnn lacks ({err})") from None
    if not _is_namedtuple_class(obj):
        raise _Invalid(f"{path} names {name}, which is not a NamedTuple class")
    return obj
