"""Checkpoints: params, optimizer state, net spec and metadata in one ``.npz`` file.

A checkpoint is an uncompressed NumPy ``.npz`` archive that holds no pickles
(the codec is :mod:`funcnn.serialization`):

- each array leaf of ``params``, ``opt_state`` and ``extra`` is one member,
  numbered in tree order: ``params/0``, ``params/1``, ..., ``opt_state/0``, ...;
- the member ``__funcnn__`` is a UTF-8 JSON header stored as a ``uint8`` array. It
  holds the format version, the structure of the trees (tuples, lists, dicts with
  ``str`` keys, ``None``, and NamedTuples by ``module:qualname`` and field names),
  each leaf's dtype, shape and tree path, the :class:`~funcnn.MLP` spec and the
  metadata dict.

:func:`load` checks the header against the stored arrays before it reads any
of them and rebuilds the same container types, dtypes and bit-identical values.
A file names its NamedTuple classes, but loading never imports a module a file
names (that would run the module's code): a name is looked up in a fixed table
of funcnn's own classes (``Dense``, ``Cache``, the optimizer states,
``callbacks.Best``) and in the classes you register, in every process that loads::

    @funcnn.checkpoint.register
    class EMAState(NamedTuple):
        count: Any
        ema: Any

:func:`save` is atomic (:func:`funcnn._files.atomic_write`): a crash at any
moment leaves either the old checkpoint or the new one, never a torn file; at
worst a stray ``.NAME.*.tmp`` file remains, which is safe to delete.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from funcnn import serialization
from funcnn._checks import check_params_like
from funcnn._files import atomic_write
from funcnn.activations import Activation
from funcnn.backend import check_jax_dtype, get_backend, is_jax_array, namespace
from funcnn.layers import BatchNormState, Conv2DParams, DenseCache, NormParams
from funcnn.losses import Loss
from funcnn.mlp import MLP, Dense
from funcnn.network import Cache, expected_params
from funcnn.optim import AdagradState, AdamState, RMSPropState, SGDState
from funcnn.serialization import FormatError, register
from funcnn.tree import tree_paths, tree_unflatten

__all__ = ["Checkpoint", "CheckpointError", "convert", "load", "register", "save"]

_ENTRIES = ("params", "opt_state", "net", "metadata")
_TREES = ("params", "opt_state", "extra")

serialization.funcnn_types(Dense, Cache, DenseCache, Conv2DParams, NormParams, BatchNormState,
                           SGDState, AdamState, RMSPropState, AdagradState)
serialization.funcnn_alias("funcnn.mlp:Dense", Dense)  # files written before funcnn.Net


class Checkpoint(NamedTuple):
    """What :func:`load` returns; ``net``, ``metadata`` and ``extra`` are ``None`` when
    none was saved."""

    params: Any
    opt_state: Any
    net: MLP | None
    metadata: dict[str, Any] | None
    extra: Any = None


class CheckpointError(ValueError):
    """The file is not a readable funcnn checkpoint: corrupt, truncated, foreign or
    inconsistent. The message names the file and what is wrong."""


# ---------------------------------------------------------------------------- save


def save(
    path: str | os.PathLike,
    params: Any,
    opt_state: Any = None,
    *,
    net: MLP | None = None,
    metadata: dict[str, Any] | None = None,
    extra: Any = None,
) -> None:
    """Write ``params``, ``opt_state``, ``net``, ``metadata`` and ``extra`` atomically to ``path``.

    The file is written exactly at ``path``; no ``.npz`` suffix is added.

    Args:
      path: the checkpoint file; its folder must exist.
      params: a pytree (tuples, lists, dicts with ``str`` keys, NamedTuples, ``None``)
        whose leaves are NumPy or jax arrays, NumPy scalars, or Python
        ``bool``/``int``/``float``, of bool, integer, float or complex dtype.
      opt_state: the optimizer state, a pytree of the same kinds.
      extra: anything else worth keeping, a pytree of the same kinds (``fit`` puts its key there).
      net: the :class:`~funcnn.MLP` the params belong to; they must match its shapes.
      metadata: a dict of JSON values (dicts with ``str`` keys, lists, ``str``,
        ``int``, ``float``, ``bool``, ``None``), e.g. the epoch and the loss.

    Raises:
      TypeError: an unsupported leaf, container, dtype or metadata value (named by path).
      ValueError: ``params`` do not match ``net``.
      OSError: the file could not be written (the error names ``path``); an existing
        checkpoint is left intact.
    """
    arrays: dict[str, np.ndarray] = {}
    header = {
        "format": serialization.FORMAT,
        "version": serialization.VERSION,
        "funcnn_version": _funcnn_version(),
        "params": serialization.encode_tree(params, "params", arrays),
        "opt_state": serialization.encode_tree(opt_state, "opt_state", arrays),
        "extra": serialization.encode_tree(extra, "extra", arrays),
        "net": _encode_net(net, params),
        "metadata": _encode_metadata(metadata),
    }
    atomic_write(path, lambda f: serialization.write_npz(f, arrays, header))


def _funcnn_version() -> str:
    return getattr(sys.modules.get("funcnn"), "__version__", "unknown")


def _check_net_params(net: MLP, params: Any) -> None:
    check_params_like("params", params, expected_params(net), f"the params of {net}")


def _encode_net(net: Any, params: Any) -> dict[str, Any] | None:
    if net is None:
        return None
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a funcnn.MLP or None; got {type(net).__name__}")
    _check_net_params(net, params)
    return {f.name: _encode_piece(getattr(net, f.name)) for f in dataclasses.fields(net)}


_CUSTOM_KINDS = {Activation: "activation", Loss: "loss"}


def _encode_piece(value: Any) -> Any:
    """A spec field as JSON: a custom activation or loss is saved by its name only."""
    kind = _CUSTOM_KINDS.get(type(value))
    return value if kind is None else {"custom": kind, "name": value.name}


def _resolve_custom(spec: dict, given: MLP | None, source: str) -> dict:
    """The saved spec with each custom piece replaced by the piece of the same name in the
    net passed to ``load``; without it, a ``ValueError`` that says how to pass it."""
    out = dict(spec)
    for field, value in spec.items():
        if not (type(value) is dict and "custom" in value):
            continue
        piece = getattr(given, field, None) if given is not None else None
        if getattr(piece, "name", None) != value.get("name"):
            raise ValueError(
                f"checkpoint {source!r} was saved for a net whose {field} is the custom "
                f"{value.get('custom')} {value.get('name')!r}; funcnn cannot rebuild your "
                f"code from a file: pass the net, e.g. funcnn.load(path, net=funcnn.MLP(..., "
                f"{field}=<your {value.get('custom')} named {value.get('name')!r}>))"
            )
        out[field] = piece
    return out


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
                raise TypeError(f"{path} has the key {k!r} of type {type(k).__name__}; "
                                "metadata keys must be str")
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
      ``Checkpoint(params, opt_state, net, metadata, extra)`` with the saved container
      types (NamedTuples included), dtypes, shapes and bit-identical values.

    Raises:
      FileNotFoundError: no file at ``path``.
      CheckpointError: the file is truncated, corrupt, not an ``.npz``, has no funcnn
        header, holds compressed members, its header does not match its arrays, or it
        names a NamedTuple class that is neither funcnn's own nor registered with
        :func:`register`.
      ValueError: ``net`` differs from the saved net or does not fit the params, or
        64-bit leaves are loaded on jax without ``jax_enable_x64``.
    """
    source = os.fspath(path)
    convert = _leaf_converter(get_backend(backend) if backend is not None else "numpy")
    if net is not None and not isinstance(net, MLP):
        raise TypeError(f"net must be a funcnn.MLP or None; got {type(net).__name__}")
    try:
        f = open(source, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no checkpoint file", source) from None
    try:
        with f, serialization.NpzReader(f, os.fstat(f.fileno()).st_size,
                                        serialization.HEADER) as reader:
            ckpt = _decode(reader, convert, net, source)
    except FormatError as err:
        raise CheckpointError(f"cannot load checkpoint {source!r}: {err}") from err.__cause__
    if net is not None:
        if ckpt.net is not None and net != ckpt.net:
            raise ValueError(
                f"checkpoint {source!r} was saved for a different net:\n"
                f"  saved: {ckpt.net}\n  given: {net}"
            )
        try:
            _check_net_params(net, ckpt.params)
        except ValueError as err:
            raise ValueError(f"checkpoint {source!r}: {err}") from None
    return ckpt


def convert(tree: Any, backend: str, name: str = "tree") -> Any:
    """``tree``, as :func:`load` gives it on NumPy, moved to ``backend`` the way
    ``load(..., backend=backend)`` would: dtypes kept, Python scalars left as they are,
    64-bit leaves on jax only with ``jax_enable_x64`` (else ``ValueError``)."""
    to = _leaf_converter(get_backend(backend))
    leaves = [leaf if type(leaf) in (bool, int, float) else to(leaf, f"{name}{path}")
              for path, leaf in tree_paths(tree)]
    return tree_unflatten(tree, leaves)


def _leaf_converter(backend: str) -> Callable[[Any, str], Any]:
    if backend == "numpy":
        return lambda leaf, path: leaf
    jnp = namespace("jax")

    def to_jax(leaf: Any, path: str) -> Any:
        check_jax_dtype(leaf.dtype, path, "; or load with backend='numpy'")
        return jnp.asarray(leaf)

    return to_jax


def _decode(reader: serialization.NpzReader, convert: Callable[[Any, str], Any],
            given: MLP | None, source: str) -> Checkpoint:
    header = serialization.read_header(reader, _ENTRIES)
    trees = serialization.decode_trees(header, _TREES, reader, convert)

    spec = header["net"]
    net = None
    if spec is not None:
        if type(spec) is not dict:
            raise FormatError(f"the saved net spec is not a dict: {spec!r}")
        spec = _resolve_custom(spec, given, source)
        try:
            net = MLP(**spec)
        except (TypeError, ValueError) as err:
            raise FormatError(f"the saved net spec {spec} is not valid ({err})") from None
        try:
            _check_net_params(net, trees["params"])
        except ValueError as err:
            raise FormatError(f"the params do not fit the saved net: {err}") from None

    metadata = header["metadata"]
    if metadata is not None and type(metadata) is not dict:
        raise FormatError(f"the metadata is not a dict: {type(metadata).__name__}")
    return Checkpoint(trees["params"], trees["opt_state"], net, metadata, trees["extra"])
