"""Array backends: one code path written against an array namespace.

funcnn computes with whatever namespace the arrays belong to: ``numpy`` or
``jax.numpy``. The backend of a call is inferred from its arrays; functions
that *create* arrays (``init_params``, ``random.key``) take ``backend=`` and
otherwise use the default: ``set_backend(...)``, else the environment variable
``FUNCNN_BACKEND``, else ``"numpy"``.

JAX is imported lazily, only when a jax backend is asked for or a jax array is
seen, so ``import funcnn`` needs NumPy alone.

One rule for 64-bit values, kept here (:func:`check_jax_dtype`) and applied by every
function that moves arrays to jax (``to_backend``, ``init_params``, ``funcnn.load``,
``from_optax`` on NumPy params, ...): without ``jax_enable_x64``, jax silently turns
float64 into float32 (and int64 into int32, complex128 into complex64); funcnn refuses
instead, with a ``ValueError`` that names ``jax_enable_x64``.

The process-wide switches live here, not at the top level: :func:`set_backend` (the default
backend) and :func:`flush_denormals` (subnormal floats as zero on the NumPy path, as XLA
does on CPU, for a ``with`` block; defined in ``funcnn._fpu``), and
:func:`enable_compilation_cache`.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

import numpy as np

from funcnn._fpu import flush_denormals
from funcnn.tree import tree_leaves, tree_map, tree_paths

__all__ = [
    "BACKENDS",
    "array_namespace",
    "backend_of",
    "check_jax_dtype",
    "check_jax_dtypes",
    "check_same_backend",
    "concrete_value",
    "enable_compilation_cache",
    "float_dtype",
    "flush_denormals",
    "get_backend",
    "is_concrete",
    "is_jax_array",
    "jax_available",
    "namespace",
    "set_backend",
    "to_backend",
]

BACKENDS = ("numpy", "jax")

_default_backend: str | None = None


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: str | None) -> None:
    """Set the default backend for array creation (``None`` restores the default)."""
    global _default_backend
    if name is not None:
        _check_name(name)
        if name == "jax":
            _import_jax()
    _default_backend = name


def get_backend(name: str | None = None) -> str:
    """Resolve a backend: ``name``, else ``set_backend``, else ``$FUNCNN_BACKEND``, else numpy."""
    if name is not None:
        return _check_name(name)
    if _default_backend is not None:
        return _default_backend
    env = os.environ.get("FUNCNN_BACKEND")
    if env:
        try:
            return _check_name(env)
        except ValueError:
            raise ValueError(
                f"FUNCNN_BACKEND={env!r} is not a backend; expected one of {', '.join(BACKENDS)}"
            ) from None
    return "numpy"


def jax_available() -> bool:
    """True when jax can be imported."""
    if "jax" in sys.modules:
        return True
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def _import_jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as err:
        raise ImportError(
            "the jax backend needs jax; install it with `pip install \"funcnn[jax]\"`"
        ) from err
    return jax, jnp


def namespace(name: str | None = None) -> ModuleType:
    """The array module of a backend: ``numpy`` or ``jax.numpy``."""
    if get_backend(name) == "jax":
        return _import_jax()[1]
    return np


def is_jax_array(x: Any) -> bool:
    """True for jax arrays and tracers, without importing jax."""
    if "jax" not in sys.modules:
        return False
    import jax

    return isinstance(x, jax.Array)


def array_namespace(*xs: Any) -> ModuleType:
    """``jax.numpy`` if any of ``xs`` is a jax array (or tracer), else ``numpy``."""
    if "jax" in sys.modules:
        import jax

        for x in xs:
            if isinstance(x, jax.Array):
                return jax.numpy
    return np


def is_concrete(x: Any) -> bool:
    """False for jax tracers (values unknown while tracing), True otherwise."""
    if "jax" not in sys.modules:
        return True
    import jax

    return not isinstance(x, jax.core.Tracer)


def concrete_value(x: Any) -> np.ndarray | None:
    """``x`` as a NumPy array when its values are known here, else ``None``.

    ``None`` for a tracer, and also for a concrete jax array seen while ``jax.jit``
    traces (a constant closed over by a jitted function): any reduction of it would be
    traced, so value checks must not look at it there.
    """
    if not is_concrete(x):
        return None
    if is_jax_array(x) and _staging():
        return None
    return np.asarray(x)


def _staging() -> bool:
    """True while ``jax.jit`` (or ``lax.scan``, ...) traces: a ``device_put`` made now is
    staged into the program, a tracer. Outside it is a plain transfer, no compilation."""
    import jax

    return not is_concrete(jax.device_put(np.int32(0)))


def _jax_flags(leaves: list) -> list[bool]:
    """Which leaves are jax arrays (or tracers). NumPy arrays are recognised by type
    first, because ``isinstance(leaf, jax.Array)`` costs about a microsecond each."""
    if "jax" not in sys.modules:
        return [False] * len(leaves)
    import jax

    return [type(leaf) is not np.ndarray and isinstance(leaf, jax.Array) for leaf in leaves]


def check_same_backend(params: Any, **others: Any) -> str:
    """The backend of a call, ``"numpy"`` or ``"jax"``; ``TypeError`` when it mixes backends.

    ``params`` must be all NumPy or all jax arrays. NumPy values in ``others`` (data,
    grads, optimizer state) may go with jax params (they are moved to jax), but a jax
    array may not go with NumPy params: that would pull device arrays to the host in
    the middle of a NumPy computation. The message names the argument and leaf path.
    """
    if "jax" not in sys.modules:
        return "numpy"
    flags = _jax_flags(tree_leaves(params))
    if any(flags) and not all(flags):
        paths = [path for path, _ in tree_paths(params)]
        on_jax = paths[flags.index(True)]
        on_numpy = paths[flags.index(False)]
        raise TypeError(
            f"mixed backends: params{on_jax} is a jax array but params{on_numpy} is not; "
            "convert them with funcnn.to_backend(params, 'jax') (or 'numpy')"
        )
    if flags and flags[0]:
        return "jax"
    for name, tree in others.items():
        if any(_jax_flags(tree_leaves(tree))):
            if not flags:  # no params leaves: the others decide
                return "jax"
            path = next(p for p, leaf in tree_paths(tree) if _jax_flags([leaf])[0])
            raise TypeError(
                f"mixed backends: the params are NumPy arrays but {name}{path} is a jax "
                f"array; convert with funcnn.to_backend({name}, 'numpy'), or move the "
                "params to jax with funcnn.to_backend(params, 'jax')"
            )
    return "numpy"


def backend_of(*trees: Any) -> str:
    """The backend of the array leaves of ``trees``; the first tree plays the params.

    NumPy arrays in later trees mix freely with jax params, but a jax array meeting
    NumPy params raises ``TypeError`` (see :func:`check_same_backend`).
    """
    if not trees:
        return "numpy"
    return check_same_backend(trees[0], **{f"trees[{i}]": t for i, t in enumerate(trees[1:], 1)})


def check_jax_dtype(dtype: Any, what: str, instead: str = "") -> None:
    """The rule for 64-bit values on jax: ``ValueError`` when jax would narrow ``dtype``.

    Without ``jax_enable_x64`` jax has no 64-bit types and turns float64 into float32
    (int64 into int32, complex128 into complex64) without a word; funcnn never moves a
    value to jax that way. The message names ``what`` (e.g. ``"params[0].W"``), says how
    to turn 64-bit mode on, and adds ``instead``, what else the caller can do.
    """
    jax = _import_jax()[0]
    dt = np.dtype(dtype)
    narrowed = jax.dtypes.canonicalize_dtype(dt)
    if narrowed != dt:
        raise ValueError(
            f"{what} is {dt}, which jax would silently turn into {narrowed}: jax has 64-bit "
            "types only with jax.config.update('jax_enable_x64', True), called at start-up "
            f"before any jax array is created{instead}"
        )


def check_jax_dtypes(tree: Any, name: str, instead: str = "") -> None:
    """:func:`check_jax_dtype` for each leaf of ``tree`` that has a dtype (arrays and NumPy
    scalars; Python numbers take jax's default precision), named by its path."""
    for path, leaf in tree_paths(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None:
            check_jax_dtype(dtype, f"{name}{path}", instead)


def float_dtype(dtype: Any, backend: str) -> np.dtype:
    """``dtype`` as float32 or float64, refused otherwise, and refused as float64 on a jax
    without ``jax_enable_x64`` (:func:`check_jax_dtype`)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64; got {dtype!r}")
    if backend == "jax":
        check_jax_dtype(dt, "the dtype asked for", "; or use dtype='float32'")
    return dt


def _int32_if_exact(leaf: Any) -> Any:
    """A NumPy int64 array (labels, indices) as int32 when every value fits: the one 64-bit
    type jax without x64 can take exactly; anything else is left to :func:`check_jax_dtype`."""
    if not isinstance(leaf, np.ndarray | np.integer) or leaf.dtype != np.int64:
        return leaf
    if _import_jax()[0].dtypes.canonicalize_dtype(np.int64) == np.int64:
        return leaf  # x64 on: jax keeps int64
    info = np.iinfo(np.int32)
    if leaf.size and (leaf.min() < info.min or leaf.max() > info.max):
        return leaf
    return np.asarray(leaf, np.int32)


def to_backend(tree: Any, name: str, dtype: Any = None) -> Any:
    """Convert every array leaf of ``tree`` to backend ``name`` (optionally to ``dtype``).

    Containers (tuples, NamedTuples, lists, dicts) keep their types. On jax without
    ``jax_enable_x64``, a 64-bit ``dtype``, or without ``dtype`` a 64-bit leaf, is refused
    with a ``ValueError`` (:func:`check_jax_dtype`): jax would silently give 32 bits. The
    one exception is an int64 leaf whose values all fit in int32 (labels, indices): it moves
    as int32, which changes no value.
    """
    name = _check_name(name)
    if name == "jax":
        jnp = _import_jax()[1]
        if dtype is not None:
            check_jax_dtype(dtype, "the dtype asked of to_backend")
        else:
            tree = tree_map(_int32_if_exact, tree)
            check_jax_dtypes(tree, "tree", "; or convert to 32 bits, e.g. "
                             "funcnn.to_backend(tree, 'jax', 'float32') for float leaves")

        def convert(leaf):
            return jnp.asarray(leaf, dtype=dtype)
    else:

        def convert(leaf):
            return np.asarray(leaf, dtype=dtype)

    return tree_map(convert, tree)


def enable_compilation_cache(path: str | os.PathLike) -> None:
    """Keep every compiled jax program in the directory ``path`` (JAX's persistent cache), so
    a new process loads ``fit``'s epoch program instead of compiling it. Off unless called;
    call it before the process's first jax computation (jax decides once per process)."""
    import jax

    for name, value in (("jax_compilation_cache_dir", os.fspath(path)),
                        ("jax_persistent_cache_min_compile_time_secs", 0.0),
                        ("jax_persistent_cache_min_entry_size_bytes", -1)):
        jax.config.update(name, value)
