"""Array backends: one code path written against an array namespace.

funcnn computes with whatever namespace the arrays belong to: ``numpy`` or
``jax.numpy``. The backend of a call is inferred from its arrays; functions
that *create* arrays (``init_params``, ``random.key``) take ``backend=`` and
otherwise use the default: ``set_backend(...)``, else the environment variable
``FUNCNN_BACKEND``, else ``"numpy"``.

JAX is imported lazily, only when a jax backend is asked for or a jax array is
seen, so ``import funcnn`` needs NumPy alone.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "array_namespace",
    "backend_of",
    "get_backend",
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


def backend_of(*trees: Any) -> str:
    """The backend of the array leaves of ``trees``; the first tree plays the params.

    NumPy arrays in later trees mix freely with jax params, but a jax array meeting
    NumPy params raises ``TypeError`` (see ``funcnn._checks.check_same_backend``).
    """
    from funcnn._checks import check_same_backend

    if not trees:
        return "numpy"
    return check_same_backend(trees[0], **{f"trees[{i}]": t for i, t in enumerate(trees[1:], 1)})


def to_backend(tree: Any, name: str, dtype: Any = None) -> Any:
    """Convert every array leaf of ``tree`` to backend ``name`` (optionally to ``dtype``).

    Containers (tuples, NamedTuples, lists, dicts) keep their types.
    """
    from funcnn.tree import tree_map

    name = _check_name(name)
    if name == "jax":
        jnp = _import_jax()[1]

        def convert(leaf):
            return jnp.asarray(leaf, dtype=dtype)
    else:

        def convert(leaf):
            return np.asarray(leaf, dtype=dtype)

    return tree_map(convert, tree)
