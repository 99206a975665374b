"""Checkpoints: params, optimizer state, net spec and metadata in one ``.npz`` file.

A checkpoint is an uncompressed NumPy ``.npz`` archive that holds no pickles
(the codec is :mod:`funcnn.serialization`):

- each array leaf of ``params``, ``opt_state``, ``state`` (the model state) and
  ``extra`` is one member, numbered in tree order: ``params/0``, ``params/1``, ...,
  ``opt_state/0``, ...;
- the member ``__funcnn__`` is a UTF-8 JSON header stored as a ``uint8`` array. It
  holds the format version, the structure of the trees (tuples, lists, dicts with
  ``str`` keys, ``None``, and NamedTuples by ``module:qualname`` and field names),
  each leaf's dtype, shape and tree path, the net spec (an :class:`~funcnn.MLP` as its
  fields; a :class:`~funcnn.Net` as its layers, each by class name and fields) and the
  metadata dict.

:func:`load` checks the header against the stored arrays before it reads any
of them and rebuilds the same container types, dtypes and bit-identical values.
A file names its NamedTuple classes, but loading never imports a module a file
names (that would run the module's code): a name is looked up in a fixed table
of funcnn's own classes (``Dense``, ``Cache``, the optimizer states,
``callbacks.Best``) and in the classes you register, in every process that loads
(a net's layers likewise come from the fixed table :data:`LAYERS`)::

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
import math
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from funcnn import layers, serialization
from funcnn._checks import check_params_like
from funcnn._files import atomic_write
from funcnn.activations import Activation
from funcnn.backend import check_jax_dtype, get_backend, is_jax_array, namespace
from funcnn.layers import BatchNormState, Conv2DParams, DenseCache, Layer, NormParams
from funcnn.losses import Loss
from funcnn.mlp import MLP, Dense
from funcnn.network import Cache, Net, Network, expected_params, expected_state
from funcnn.optim import AdagradState, AdamState, RMSPropState, SGDState
from funcnn.serialization import FormatError, register
from funcnn.tree import tree_leaves, tree_paths, tree_unflatten

__all__ = ["LAYERS", "Checkpoint", "CheckpointError", "convert", "load", "register", "save"]

_ENTRIES = ("params", "opt_state", "net", "metadata")
_TREES = ("params", "opt_state", "extra", "state")

serialization.funcnn_types(Dense, Cache, DenseCache, Conv2DParams, NormParams, BatchNormState,
                           SGDState, AdamState, RMSPropState, AdagradState)
serialization.funcnn_alias("funcnn.mlp:Dense", Dense)  # files written before funcnn.Net


class Checkpoint(NamedTuple):
    """What :func:`load` returns; ``net``, ``metadata`` and ``extra`` are ``None`` when
    none was saved; ``state`` is the model state, ``()`` when none was saved (and in files
    written before it existed)."""

    params: Any
    opt_state: Any
    net: Network | None
    metadata: dict[str, Any] | None
    extra: Any = None
    state: Any = ()


class CheckpointError(ValueError):
    """The file is not a readable funcnn checkpoint: corrupt, truncated, foreign or
    inconsistent. The message names the file and what is wrong."""


# ---------------------------------------------------------------------------- save


def save(
    path: str | os.PathLike,
    params: Any,
    opt_state: Any = None,
    *,
    net: Network | None = None,
    state: Any = None,
    metadata: dict[str, Any] | None = None,
    extra: Any = None,
) -> None:
    """Write ``params``, ``opt_state``, ``net``, ``state``, ``metadata`` and ``extra``
    atomically to ``path``.

    The file is written exactly at ``path``; no ``.npz`` suffix is added.

    Args:
      path: the checkpoint file; its folder must exist.
      params: a pytree (tuples, lists, dicts with ``str`` keys, NamedTuples, ``None``)
        whose leaves are NumPy or jax arrays, NumPy scalars, or Python
        ``bool``/``int``/``float``, of bool, integer, float or complex dtype.
      opt_state: the optimizer state, a pytree of the same kinds.
      net: the :class:`~funcnn.MLP` or :class:`~funcnn.Net` the params belong to; they
        (and ``state``) must match its shapes. A ``Net`` is written as data: each layer's
        class name (one of :data:`LAYERS`) and its fields; custom activations, losses and
        initializers by their names only.
      state: the model state (``funcnn.init_state(net)``, as ``fit`` returns it); ``None``
        is ``()``, the state of a net without BatchNorm.
      metadata: a dict of JSON values (dicts with ``str`` keys, lists, ``str``,
        ``int``, ``float``, ``bool``, ``None``), e.g. the epoch and the loss.
      extra: anything else worth keeping, a pytree of the same kinds (``fit`` puts its key there).

    Raises:
      TypeError: an unsupported leaf, container, dtype, layer or metadata value (named by path).
      ValueError: ``params`` or ``state`` do not match ``net``.
      OSError: the file could not be written (the error names ``path``); an existing
        checkpoint is left intact.
    """
    state = () if state is None else state
    arrays: dict[str, np.ndarray] = {}
    new = isinstance(net, Net) or not (type(state) is tuple and not state)
    header = {
        "format": serialization.FORMAT,
        "version": serialization.VERSION if new else 2,  # older funcnn reads MLP checkpoints
        "funcnn_version": _funcnn_version(),
        "params": serialization.encode_tree(params, "params", arrays),
        "opt_state": serialization.encode_tree(opt_state, "opt_state", arrays),
        "extra": serialization.encode_tree(extra, "extra", arrays),
        "state": serialization.encode_tree(state, "state", arrays),
        "net": _encode_net(net, params, state),
        "metadata": _encode_metadata(metadata),
    }
    atomic_write(path, lambda f: serialization.write_npz(f, arrays, header))


def _funcnn_version() -> str:
    return getattr(sys.modules.get("funcnn"), "__version__", "unknown")


def _check_net_trees(net: Network, params: Any, state: Any) -> None:
    """Raise ValueError unless ``params`` and ``state`` have the structure and shapes of
    ``net``'s."""
    check_params_like("params", params, expected_params(net), f"the params of {net}")
    check_params_like("state", state, expected_state(net),
                      f"the model state of {net} (funcnn.init_state(net))")


def _check_net_type(net: Any) -> None:
    if net is not None and type(net) not in (MLP, Net):
        raise TypeError(f"net must be a funcnn.MLP, a funcnn.Net or None; "
                        f"got {type(net).__name__}")


# ---------------------------------------------------------------------------- net specs
#
# An MLP is saved as the dict of its fields (as before funcnn.Net existed), a Net as
# {"net": "Net", "fields": {...}}, each layer as {"layer": "Conv2D", "fields": {...}}.
# Field values are JSON scalars, lists (tuples), layers and custom pieces
# {"custom": kind, "name": name}. Loading looks layer names up in LAYERS, never imports.

LAYERS: dict[str, type] = {cls.__name__: cls for cls in (
    layers.Dense, layers.Activation, layers.Dropout, layers.Conv2D, layers.MaxPool2D,
    layers.AvgPool2D, layers.Flatten, layers.LayerNorm, layers.BatchNorm, layers.Serial,
    layers.Residual)}
"""The layer classes a checkpoint's net may name, by name: the only ones :func:`load` builds."""

MAX_SPEC_LAYERS = 10_000  # layers in a saved net, nested ones included
MAX_SPEC_DEPTH = 32  # nesting of lists and layers in a saved net spec
_CUSTOM_KINDS = {Activation: "activation", Loss: "loss"}


def _encode_net(net: Any, params: Any, state: Any) -> dict[str, Any] | None:
    if net is None:
        return None
    _check_net_type(net)
    if net.keeps_state and type(state) is tuple and not state:
        raise ValueError("the net keeps model state (BatchNorm's running statistics): pass it "
                         "as save(..., state=...), funcnn.init_state(net) or what fit returned")
    _check_net_trees(net, params, state)
    fields = _encode_fields(net, "net")
    return fields if type(net) is MLP else {"net": "Net", "fields": fields}


def _encode_fields(spec: Any, path: str) -> dict[str, Any]:
    return {f.name: _encode_value(getattr(spec, f.name), f"{path}.{f.name}")
            for f in dataclasses.fields(spec) if f.init}


def _encode_value(value: Any, path: str) -> Any:
    """A spec field as JSON: layers by class name and fields, tuples as lists, a custom
    activation, loss or initializer by its name only."""
    kind = _CUSTOM_KINDS.get(type(value))
    if kind is not None:
        return {"custom": kind, "name": value.name}
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) is tuple:
        return [_encode_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Layer):
        name = type(value).__name__
        if LAYERS.get(name) is not type(value):
            raise TypeError(f"{path} is a {type(value).__qualname__}, a layer a checkpoint "
                            f"cannot describe (it holds {', '.join(LAYERS)}); save the params "
                            "without net= and rebuild the net in code")
        return {"layer": name, "fields": _encode_fields(value, path)}
    if callable(value) and not isinstance(value, type):  # a custom initializer
        return {"custom": "initializer",
                "name": getattr(value, "__qualname__", type(value).__qualname__)}
    raise TypeError(f"{path} is a {type(value).__name__}, which a checkpoint's net spec cannot "
                    "hold (ints, floats, strs, bools, None, tuples, layers)")


def _custom_pieces(value: Any, found: dict) -> dict:
    """``{(kind, name): piece}`` for every custom piece in the spec ``value``."""
    kind = _CUSTOM_KINDS.get(type(value))
    if kind is not None:
        found[kind, value.name] = value
    elif type(value) is tuple:
        for v in value:
            _custom_pieces(v, found)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _custom_pieces(getattr(value, f.name), found)
    elif callable(value) and not isinstance(value, type):
        found["initializer", getattr(value, "__qualname__", type(value).__qualname__)] = value
    return found


class _Decoder:
    """Rebuilds a saved spec from :data:`LAYERS` and the custom pieces of the net given to
    :func:`load`, with at most :data:`MAX_SPEC_LAYERS` layers nested at most
    :data:`MAX_SPEC_DEPTH` deep."""

    def __init__(self, given: Network | None, source: str):
        self.pieces = {} if given is None else _custom_pieces(given, {})
        self.source, self.count = source, 0

    def net(self, spec: Any) -> Network:
        if type(spec) is not dict:
            raise FormatError(f"the saved net spec is not a dict: {spec!r:.200}")
        if "net" not in spec:  # an MLP, saved as its fields
            return self.build(MLP, spec, "net", 0)
        if spec.get("net") != "Net" or set(spec) != {"net", "fields"}:
            raise FormatError(f"the saved net spec names an unknown kind of net "
                              f"{spec.get('net')!r:.100}; funcnn rebuilds MLP and Net")
        return self.build(Net, spec["fields"], "net", 0)

    def build(self, cls: type, fields: Any, path: str, depth: int) -> Any:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        if type(fields) is not dict:
            raise FormatError(f"the saved net spec gives {path} malformed fields {fields!r:.200}")
        unknown = sorted(set(fields) - names)
        if unknown:
            raise FormatError(f"the saved net spec gives {path} ({cls.__name__}) the fields "
                              f"{unknown!r:.200}, which are not fields of {cls.__name__} "
                              f"({', '.join(sorted(names)) or 'none'})")
        kwargs = {k: self.value(v, f"{path}.{k}", depth + 1) for k, v in fields.items()}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise FormatError(f"the saved net spec is not valid: {path} = {cls.__name__}"
                              f"({kwargs!r:.300}) fails ({err})") from None

    def value(self, node: Any, path: str, depth: int) -> Any:
        if depth > MAX_SPEC_DEPTH:
            raise FormatError(f"the saved net spec nests deeper than {MAX_SPEC_DEPTH} at {path}")
        if node is None or type(node) in (bool, int, float, str):
            return node
        if type(node) is list:
            return tuple(self.value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))
        if type(node) is dict and "custom" in node:
            return self.custom(node, path)
        if type(node) is dict and set(node) == {"layer", "fields"}:
            cls = LAYERS.get(node["layer"]) if type(node["layer"]) is str else None
            if cls is None:
                raise FormatError(
                    f"the saved net spec gives {path} the layer {node['layer']!r:.100}, which "
                    f"funcnn does not rebuild: a checkpoint's net holds {', '.join(LAYERS)}, "
                    "and funcnn never imports what a file names")
            self.count += 1
            if self.count > MAX_SPEC_LAYERS:
                raise FormatError(f"the saved net spec has more than {MAX_SPEC_LAYERS} layers")
            return self.build(cls, node["fields"], path, depth)
        raise FormatError(f"the saved net spec gives {path} a value funcnn does not rebuild: "
                          f"{node!r:.200}")

    def custom(self, node: dict, path: str) -> Any:
        kind, name = node.get("custom"), node.get("name")
        if type(kind) is not str or type(name) is not str or set(node) != {"custom", "name"}:
            raise FormatError(f"the saved net spec gives {path} a malformed custom piece "
                              f"{node!r:.200}")
        piece = self.pieces.get((kind, name))
        if piece is not None:
            return piece
        field, kind, name = path.removeprefix("net."), kind[:40], repr(name[:100])
        example = (f"funcnn.MLP(..., {field}=<your {kind} named {name}>)" if "." not in field
                   else f"funcnn.Net(...) whose {field} is your {kind} named {name}")
        raise ValueError(
            f"checkpoint {self.source!r} was saved for a net whose {field} is the custom "
            f"{kind} {name}; funcnn cannot rebuild your code from a file: pass the "
            f"net, e.g. funcnn.load(path, net={example})"
        )


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
    path: str | os.PathLike, *, backend: str | None = None, net: Network | None = None
) -> Checkpoint:
    """Read a checkpoint written by :func:`save`.

    Args:
      path: the checkpoint file.
      backend: ``None`` or ``"numpy"`` for NumPy arrays, ``"jax"`` for jax arrays.
        Dtypes are kept (64-bit leaves on jax need ``jax_enable_x64``); Python
        scalar leaves stay Python scalars.
      net: the :class:`~funcnn.MLP` or :class:`~funcnn.Net` you expect; checked against
        the saved one, and the params and the model state are checked against its
        shapes. Needed to load a net with custom activations, losses or initializers
        (a file holds their names, not their code): they are taken from it.

    Returns:
      ``Checkpoint(params, opt_state, net, metadata, extra, state)`` with the saved
      container types (NamedTuples included), dtypes, shapes and bit-identical values;
      ``state`` is ``()`` when none was saved.

    Raises:
      FileNotFoundError: no file at ``path``.
      CheckpointError: the file is truncated, corrupt, not an ``.npz``, has no funcnn
        header, holds compressed members, its header does not match its arrays, or it
        names a NamedTuple class that is neither funcnn's own nor registered with
        :func:`register`, or a layer that is not one of :data:`LAYERS`.
      ValueError: ``net`` differs from the saved net or does not fit the params or the
        state, the saved net holds a custom piece and ``net`` is not given, or 64-bit
        leaves are loaded on jax without ``jax_enable_x64``.
    """
    source = os.fspath(path)
    convert = _leaf_converter(get_backend(backend) if backend is not None else "numpy")
    _check_net_type(net)
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
            _check_net_trees(net, ckpt.params, ckpt.state)
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
            given: Network | None, source: str) -> Checkpoint:
    header = serialization.read_header(reader, _ENTRIES)
    trees = serialization.decode_trees(header, _TREES, reader, convert)
    state = trees["state"] if "state" in header else ()  # older files have no model state

    spec = header["net"]
    net = None
    if spec is not None:
        try:
            net = _Decoder(given, source).net(spec)
        except RecursionError:
            raise FormatError("the saved net spec nests too deeply") from None
        stored = sum(math.prod(np.shape(leaf)) for leaf in tree_leaves((trees["params"], state)))
        if _size(net.layers, net.in_shape) > stored:  # before expected_params allocates them
            raise FormatError(f"the params do not fit the saved net: it has "
                              f"{_size(net.layers, net.in_shape)} parameters and state values, "
                              f"but the file stores {stored}")
        try:
            _check_net_trees(net, trees["params"], state)
        except ValueError as err:
            raise FormatError(f"the params or the model state do not fit the saved net: "
                              f"{err}") from None

    metadata = header["metadata"]
    if metadata is not None and type(metadata) is not dict:
        raise FormatError(f"the metadata is not a dict: {type(metadata).__name__}")
    return Checkpoint(trees["params"], trees["opt_state"], net, metadata, trees["extra"], state)


def _size(stack: tuple, shape: tuple) -> int:
    """The number of parameters and state values of the layers ``stack`` on inputs of one
    example's ``shape``, counted without allocating them (a forged spec may declare
    terabytes)."""
    total = 0
    for layer in stack:
        channels = shape[-1]
        if isinstance(layer, layers.Serial):
            total += _size(layer.layers, shape)
        elif isinstance(layer, layers.Dense):
            total += (channels + layer.bias) * layer.n_out
        elif isinstance(layer, layers.Conv2D):
            total += (math.prod(layer.kernel_size) * channels + layer.bias) * layer.filters
        elif isinstance(layer, layers.LayerNorm | layers.BatchNorm):
            total += 4 * channels if layer.keeps_state else 2 * channels
        shape = layer.output_shape(shape)
    return total
