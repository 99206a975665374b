"""Data-parallel training on many devices and many processes, on ``jax.sharding``.

One mesh axis, ``"data"``, splits every batch by rows; everything else is replicated::

    mesh = funcnn.parallel.data_mesh()                  # all devices of all processes
    params, opt_state = funcnn.parallel.replicate((params, opt_state), mesh)
    xb, yb = funcnn.parallel.shard_batch((xb, yb), mesh)  # rows split over the devices
    params, opt_state, loss = jax.jit(step)(params, opt_state, xb, yb)

A jitted step over these global arrays is compiled once for the whole mesh (SPMD):
each device runs the hand-written forward and backward pass on its rows, and the
compiler adds the all-reduce that turns the per-device sums of ``dW = a.T @ dz`` into
the gradient of the global batch. ``funcnn.fit(..., devices=...)`` does exactly this
for whole epochs: it keeps the training set replicated and shards the gather of each
batch (:func:`constrain_batch`), so only the gradients cross devices (a training set
you placed split by rows stays so, and then each batch crosses them too).

Several processes (several hosts, or :mod:`funcnn.launch` on one machine) first call
:func:`initialize`; then ``jax.devices()`` lists every process's devices and
:func:`data_mesh` spans them all. Every process passes the same full arrays: the
functions here place each process's own shards.

jax is imported only when a function needs it. The guide: ``docs/parallel.md``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from funcnn._checks import check_count
from funcnn.backend import _import_jax, is_jax_array
from funcnn.batching import BatchSplit
from funcnn.tree import tree_map, tree_paths

__all__ = [
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "batch_sharding",
    "check_batches",
    "check_same_on_all_processes",
    "constrain_batch",
    "data_mesh",
    "fit_mesh",
    "initialize",
    "is_main_process",
    "place_fit",
    "replicate",
    "replicated",
    "shard_batch",
]

ENV_COORDINATOR = "FUNCNN_COORDINATOR"  # host:port of process 0's coordinator service
ENV_NUM_PROCESSES = "FUNCNN_NUM_PROCESSES"
ENV_PROCESS_ID = "FUNCNN_PROCESS_ID"


# ---------------------------------------------------------------------------- processes


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name}={value!r} is not an integer") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout: int = 300) -> bool:
    """Join this process to a multi-process run (``jax.distributed.initialize``, gloo on CPU).

    Arguments left out are read from ``$FUNCNN_COORDINATOR`` (``host:port`` of process 0),
    ``$FUNCNN_NUM_PROCESSES`` and ``$FUNCNN_PROCESS_ID``, which :mod:`funcnn.launch` sets.
    With none of them (a plain ``python train.py``), or one process, nothing happens and
    ``False`` is returned, so the same script runs alone and launched. Call it before
    anything else touches jax's devices. ``timeout`` (seconds) bounds the wait for the
    other processes. Returns ``True`` once the processes are joined.
    """
    address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    count = _env_int(ENV_NUM_PROCESSES) if num_processes is None else num_processes
    index = _env_int(ENV_PROCESS_ID) if process_id is None else process_id
    given = {"coordinator_address": address, "num_processes": count, "process_id": index}
    if all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"initialize needs coordinator_address, num_processes and process_id; {missing} "
            f"missing (pass them, or set ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES} and "
            f"${ENV_PROCESS_ID}, as `python -m funcnn.launch` does)")
    count = check_count("num_processes", count)
    index = check_count("process_id", index, minimum=0)
    if index >= count:
        raise ValueError(f"process_id must be an integer in [0, {count}); got {index}")
    if not isinstance(address, str) or address.rpartition(":")[0] == "":
        raise ValueError(f"coordinator_address must be 'host:port'; got {address!r}")
    if count == 1:
        return False
    jax = _import_jax()[0]
    if jax.distributed.is_initialized():
        return True
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=index, initialization_timeout=int(timeout))
    return True


def is_main_process() -> bool:
    """True in process 0 of a multi-process run, and in a run of one process.

    Progress and checkpoints are written by the main process only. Before jax is set
    up for several processes this trusts ``$FUNCNN_PROCESS_ID`` (unset means 0).
    """
    jax = sys.modules.get("jax")
    if jax is not None and hasattr(jax, "distributed") and jax.distributed.is_initialized():
        return jax.process_index() == 0
    return _env_int(ENV_PROCESS_ID) in (None, 0)


# ---------------------------------------------------------------------------- mesh


def data_mesh(devices: Any = None, axis: str = "data") -> Any:
    """A ``jax.sharding.Mesh`` whose axis ``axis`` splits batches.

    ``devices``: ``None`` for ``jax.devices()`` (every device of every process), a
    sequence of jax devices, or a ``Mesh`` that has an axis named ``axis`` (returned
    as it is; its other axes replicate the batch).
    """
    jax = _import_jax()[0]
    if not isinstance(axis, str):
        raise TypeError(f"axis must be a mesh axis name (a str); got {type(axis).__name__}")
    if isinstance(devices, jax.sharding.Mesh):
        if axis not in devices.axis_names:
            raise ValueError(f"the mesh has axes {tuple(devices.axis_names)}, none named "
                             f"{axis!r}: data parallelism splits batches along {axis!r}")
        return devices
    if devices is None:
        devices = jax.devices()
    if not isinstance(devices, Sequence) or isinstance(devices, str) or not devices \
            or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError("devices must be None, a non-empty sequence of jax devices (e.g. "
                        f"jax.devices()) or a jax.sharding.Mesh; got {devices!r}")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices lists a device twice: {list(devices)}")
    return jax.sharding.Mesh(np.array(devices, dtype=object), (axis,))


def batch_sharding(mesh: Any, axis: str = "data") -> Any:
    """``NamedSharding(mesh, P(axis))``: rows split evenly over the ``axis`` devices."""
    jax = _import_jax()[0]
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def replicated(mesh: Any) -> Any:
    """``NamedSharding(mesh, P())``: a whole copy on every device of the mesh."""
    jax = _import_jax()[0]
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _axis_size(mesh: Any, axis: str) -> int:
    return int(mesh.shape[axis])


def check_batches(split: BatchSplit, n: int, mesh: Any, axis: str = "data") -> None:
    """Raise ValueError unless every batch of an epoch (``split`` of ``n`` rows) divides
    into the ``axis`` devices of ``mesh``: the full batches and the short last one."""
    k = _axis_size(mesh, axis)
    if split.size % k:
        what = "batch_size=None (the full batch)" if split.size == n and split.full == 1 \
            else f"batch_size {split.size}"
        raise ValueError(
            f"{what} does not divide into the {k} devices of the mesh axis {axis!r} "
            f"({split.size} % {k} = {split.size % k}); choose a batch size that is a multiple "
            f"of {k}")
    if split.tail % k:
        raise ValueError(
            f"the last batch of each epoch has {split.tail} rows ({n} = {split.full} x "
            f"{split.size} + {split.tail}), which does not divide into the {k} devices of the "
            f"mesh axis {axis!r}; pass drop_last=True to leave those rows out, or choose "
            f"batch_size so that {n} % batch_size is a multiple of {k}")


def constrain_batch(tree: Any, mesh: Any, axis: str = "data") -> Any:
    """Inside ``jax.jit``: ask for the rows of every leaf of ``tree`` split along ``axis``.

    ``mesh=None`` returns ``tree`` as it is (one device). On a gathered batch
    ``x[idx]`` of a replicated ``x`` this makes each device gather only its own rows."""
    if mesh is None:
        return tree
    jax = _import_jax()[0]
    sharding = batch_sharding(mesh, axis)
    return tree_map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


# ---------------------------------------------------------------------------- placing


def _place(tree: Any, sharding: Any) -> Any:
    """Each leaf of ``tree`` as one global array with ``sharding``.

    On one process a device-to-device copy. With several processes each process
    holds the whole value and builds the shards its own devices need."""
    jax = _import_jax()[0]
    if sharding.is_fully_addressable:
        return tree_map(lambda a: jax.device_put(a, sharding), tree)

    def place(leaf):
        if is_jax_array(leaf) and leaf.sharding == sharding:
            return leaf
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return tree_map(place, tree)


def replicate(tree: Any, mesh: Any) -> Any:
    """``tree`` (params, an optimizer state, a data set) copied whole to every device."""
    return _place(tree, replicated(mesh))


def shard_batch(tree: Any, mesh: Any, axis: str = "data") -> Any:
    """Each leaf of ``tree`` (a global batch, the same on every process) split by rows
    over the ``axis`` devices; ValueError when its rows do not divide among them."""
    k = _axis_size(mesh, axis)
    for path, leaf in tree_paths(tree):
        rows = np.shape(leaf)[0] if np.ndim(leaf) else None
        if rows is None or rows % k:
            raise ValueError(f"{path or 'the batch'} has {rows} rows, which do not divide into "
                             f"the {k} devices of the mesh axis {axis!r}")
    return _place(tree, batch_sharding(mesh, axis))


# ---------------------------------------------------------------------------- agreement


def _digest(tree: Any) -> np.ndarray:
    """Eight numbers that differ when two processes hold different trees: a SHA-256 of
    each leaf's path, shape, dtype and raw bytes of up to 64 evenly spaced rows."""
    h = hashlib.sha256()
    for path, leaf in tree_paths(tree):
        leaf = leaf if hasattr(leaf, "dtype") else np.asarray(leaf)  # Python numbers
        shape = np.shape(leaf)
        h.update(f"{path}:{shape}:{np.dtype(leaf.dtype)};".encode())
        if shape and shape[0] > 64:
            leaf = leaf[np.unique(np.linspace(0, shape[0] - 1, num=64).astype(np.int64))]
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint32).astype(np.float64)  # exact


def check_same_on_all_processes(**trees: Any) -> None:
    """Raise ValueError (in every process alike) unless each named tree holds the same
    values in every process; a no-op with one process. A cheap check on sampled rows."""
    jax = _import_jax()[0]
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    table = np.stack([_digest(tree) for tree in trees.values()])  # the same shape everywhere
    everyone = np.asarray(multihost_utils.process_allgather(table))
    for i, name in enumerate(trees):
        bad = [q for q in range(everyone.shape[0])
               if not np.array_equal(everyone[q, i], everyone[0, i])]
        if bad:
            raise ValueError(
                f"{name} differs between process 0 and process {bad[0]}: in a multi-process "
                "run every process passes the same params, optimizer state, key and full data "
                "(same seed, same files); each process then uses its own devices' shards")


# ---------------------------------------------------------------------------- fit


def fit_mesh(devices: Any, split: BatchSplit, n: int, backend: str) -> Any:
    """The mesh of ``fit(..., devices=devices)`` on ``n`` rows split as ``split``
    (``None`` for ``devices=None``), after checking that every batch divides."""
    if devices is None:
        return None
    if backend != "jax":
        raise ValueError("fit(devices=...) trains on jax devices and needs jax params and "
                         "data (funcnn.to_backend(params, 'jax')); got NumPy params")
    mesh = data_mesh(devices)
    check_batches(split, n, mesh)
    return mesh


def place_fit(mesh: Any, state: Any, data: Any) -> tuple[Any, Any]:
    """``(state, data)`` of a data-parallel ``fit`` on ``mesh``: the params, optimizer
    state and model state of ``state`` (a ``FitState``) replicated; each array of ``data``
    replicated too, unless it already lives on ``mesh`` (e.g. split by rows with
    :func:`shard_batch`), where it stays. With several processes it first checks that they
    all passed the same values and key. ``mesh=None`` (one device) returns them as they are."""
    if mesh is None:
        return state, data
    check_same_on_all_processes(params=state.params, opt_state=state.opt_state,
                                model_state=state.model_state, key=state.key, data=data)
    params, opt_state, model_state = replicate(
        (state.params, state.opt_state, state.model_state), mesh)
    whole = replicated(mesh)
    data = tree_map(lambda a: a if _on_mesh(a, mesh) else _place(a, whole), data)
    return state._replace(params=params, opt_state=opt_state, model_state=model_state), data


def _on_mesh(leaf: Any, mesh: Any) -> bool:
    return is_jax_array(leaf) and getattr(leaf.sharding, "mesh", None) == mesh
