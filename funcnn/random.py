"""Explicit random keys; the same random numbers on NumPy and on jax.

A key is a ``uint32`` array of shape ``(2,)``, the data of ``jax.random.PRNGKey(seed)``.
On a jax key each function calls ``jax.random`` (traceable under ``jax.jit``); on a
NumPy key it computes the same thing in NumPy (:mod:`funcnn._threefry`: jax's
threefry-2x32 hash, its ``split`` and ``fold_in``, its conversions). So one key gives
one stream on both backends (docs/reliability.md, section 6):

* ``split``, ``fold_in``, ``uniform``, ``bernoulli``, ``permutation``: bit for bit;
* ``normal``: within 4 ulp in float32 and 8 ulp in float64 (XLA's ``log`` and
  multiply-adds round differently from NumPy's).

``uniform`` with a range other than ``[0, 1)`` is exact where XLA fuses ``a * b + c``
into one rounding (CPUs with FMA: x86-64 with FMA3, ARM64), as funcnn does.
The stream follows jax's ``jax_threefry_partitionable`` flag (True by default), read
from ``jax.config`` once jax is imported, else from ``$JAX_THREEFRY_PARTITIONABLE``.
The jax path always uses the threefry2x32 PRNG, whatever ``jax_default_prng_impl``
says. Dtypes do not depend on ``jax_enable_x64``: ``bernoulli`` compares float32
uniforms with ``float32(p)`` and ``permutation`` returns int32.

Using a key twice gives the same numbers twice; split it for new randomness::

    key = funcnn.random.key(0)
    k_init, k_drop = funcnn.random.split(key)
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from funcnn import _threefry
from funcnn._checks import check_count
from funcnn.backend import _import_jax, float_dtype, get_backend, is_concrete, is_jax_array

__all__ = [
    "as_key",
    "bernoulli",
    "fold_in",
    "key",
    "normal",
    "permutation",
    "split",
    "threefry_partitionable",
    "uniform",
]

_TRUE, _FALSE = ("y", "yes", "t", "true", "on", "1"), ("n", "no", "f", "false", "off", "0")


def threefry_partitionable() -> bool:
    """The counter layout the NumPy stream follows: jax's ``jax_threefry_partitionable``."""
    jax = sys.modules.get("jax")
    if jax is not None and hasattr(jax, "config"):
        return bool(jax.config.jax_threefry_partitionable)
    value = os.environ.get("JAX_THREEFRY_PARTITIONABLE", "true").lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(
            f"JAX_THREEFRY_PARTITIONABLE={value!r} is not a truth value; expected one of "
            f"{', '.join(_TRUE + _FALSE)}"
        )
    return value in _TRUE


# ---------------------------------------------------------------------- argument checks


def _is_int(x: Any) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _check_seed(seed: Any) -> int:
    if not _is_int(seed):
        raise TypeError(f"a seed must be an integer; got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"a seed must be in [0, 2**64); got {seed}")
    return seed


def _check_shape(shape: Any) -> tuple[int, ...]:
    dims = (shape,) if _is_int(shape) else shape
    if not isinstance(dims, tuple | list) or not all(_is_int(d) and d >= 0 for d in dims):
        raise ValueError(f"shape must be a tuple of non-negative integers; got {shape!r}")
    return tuple(int(d) for d in dims)


def _frozen(words: np.ndarray) -> np.ndarray:
    words = np.asarray(words, dtype=np.uint32)
    words.flags.writeable = False
    return words


def _typed(k: Any) -> Any:
    """A raw jax key as a typed threefry2x32 key, whatever ``jax_default_prng_impl`` is."""
    return _import_jax()[0].random.wrap_key_data(k, impl="threefry2x32")


# ---------------------------------------------------------------------- keys


def key(seed: int, backend: str | None = None) -> Any:
    """A key from an integer seed in ``[0, 2**64)``: ``(seed >> 32, seed & 0xFFFFFFFF)``,
    as ``jax.random.PRNGKey(seed)``; ``backend`` as in :func:`funcnn.get_backend`."""
    seed = _check_seed(seed)
    words = [seed >> 32, seed & 0xFFFFFFFF]
    if get_backend(backend) == "jax":
        return _import_jax()[1].array(words, dtype="uint32")
    return _frozen(np.array(words))


def _seed_array(seed: Any, backend: str | None) -> Any:
    """The key of a 0-d integer array seed, also a traced one (an int passed into
    ``jax.jit``): ``[seed >> 32, seed & 0xFFFFFFFF]`` as ``key(int(seed))`` gives."""
    if not is_jax_array(seed):
        return key(int(seed), backend)
    jnp = _import_jax()[1]
    wide = seed.astype(jnp.uint64) if seed.dtype.itemsize == 8 else None
    high = (wide >> 32).astype(jnp.uint32) if wide is not None else jnp.zeros((), jnp.uint32)
    low = (wide & 0xFFFFFFFF).astype(jnp.uint32) if wide is not None else seed.astype(jnp.uint32)
    k = jnp.stack([high, low])
    return k if backend is None or get_backend(backend) == "jax" else np.asarray(k)


def as_key(key_or_seed: Any, backend: str | None = None) -> Any:
    """Accept an int seed (a Python or NumPy int, or a 0-d integer array, traced or not) or
    a key; return a key (converted to ``backend`` if given)."""
    if _is_int(key_or_seed):
        return key(key_or_seed, backend)
    k = key_or_seed
    shape = getattr(k, "shape", None)
    dtype = getattr(k, "dtype", None)
    if shape == () and getattr(dtype, "kind", None) in ("i", "u"):  # not a typed jax key
        return _seed_array(k, backend)
    if is_jax_array(k):
        jax = _import_jax()[0]
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            impl = str(jax.random.key_impl(k))
            if impl != "threefry2x32":
                raise TypeError(f"funcnn keys are threefry2x32 keys; got a jax {impl} key")
            k = jax.random.key_data(k)
            shape, dtype = k.shape, k.dtype
    if shape != (2,) or dtype != np.uint32:
        raise TypeError(
            "expected an int seed or a key from funcnn.random.key (uint32 array of shape (2,)); "
            f"got {type(key_or_seed).__name__} with shape {shape} and dtype {dtype}"
        )
    if backend is None:
        return k if is_jax_array(k) else _frozen(k)
    if get_backend(backend) == "jax":
        return _import_jax()[1].asarray(k, dtype="uint32")
    return _frozen(np.asarray(k))


def split(key: Any, n: int = 2) -> Any:
    """``n`` new independent keys, as an array of shape ``(n, 2)``."""
    key = as_key(key)
    n = check_count("n", n, minimum=0, below=2**32)
    if is_jax_array(key):
        jax = _import_jax()[0]
        return jax.random.key_data(jax.random.split(_typed(key), n))
    return _frozen(_threefry.split(key, n, threefry_partitionable()))


def fold_in(key: Any, data: Any) -> Any:
    """A new key from ``key`` and an integer ``data`` in ``[0, 2**32)`` (e.g. an epoch).

    ``data`` may be a traced jax integer under ``jax.jit`` (then the result is jax).
    """
    key = as_key(key)
    if is_jax_array(data) and not is_concrete(data):
        jax, jnp = _import_jax()
        return jax.random.key_data(jax.random.fold_in(_typed(jnp.asarray(key)), data))
    data = check_count("fold_in data", data, minimum=0, below=2**32)
    if is_jax_array(key):
        jax = _import_jax()[0]
        return jax.random.key_data(jax.random.fold_in(_typed(key), data))
    return _frozen(_threefry.fold_in(key, data))


# ---------------------------------------------------------------------- samplers


def normal(key: Any, shape: tuple[int, ...], dtype: Any = "float32") -> Any:
    """Standard normal samples of ``shape``: ``sqrt(2) * erfinv(u)``, ``u ~ U(-1, 1)``."""
    key = as_key(key)
    shape = _check_shape(shape)
    dtype = float_dtype(dtype, "jax" if is_jax_array(key) else "numpy")
    if is_jax_array(key):
        return _import_jax()[0].random.normal(_typed(key), shape, dtype)
    return _threefry.normal(key, shape, dtype, threefry_partitionable())


def uniform(
    key: Any, shape: tuple[int, ...], dtype: Any = "float32", minval: float = 0.0,
    maxval: float = 1.0,
) -> Any:
    """Uniform samples of ``shape`` in ``[minval, maxval)`` (scalar bounds)."""
    key = as_key(key)
    shape = _check_shape(shape)
    dtype = float_dtype(dtype, "jax" if is_jax_array(key) else "numpy")
    if is_jax_array(key):
        return _import_jax()[0].random.uniform(_typed(key), shape, dtype, minval, maxval)
    return _threefry.uniform(key, shape, dtype, minval, maxval, threefry_partitionable())


def bernoulli(key: Any, p: float, shape: tuple[int, ...]) -> Any:
    """Boolean samples of ``shape``, True with probability ``p``: ``uniform(float32) < p``.

    ``p`` is rounded to float32 first, on both backends and whatever ``jax_enable_x64``.
    """
    key = as_key(key)
    shape = _check_shape(shape)
    if is_jax_array(key):
        jax, jnp = _import_jax()
        return jax.random.bernoulli(_typed(key), jnp.asarray(p, jnp.float32), shape)
    p = np.float32(p)
    n = int(np.prod(shape))
    floats = _threefry.unit_floats(key, n, np.dtype(np.float32), threefry_partitionable())
    return (floats < p).reshape(shape)


def permutation(key: Any, n: int) -> Any:
    """A random permutation of ``range(n)``, int32, by jax's sort-based shuffle."""
    key = as_key(key)
    n = check_count("n", n, minimum=0, below=2**31)
    if is_jax_array(key):
        jax, jnp = _import_jax()
        return jax.random.permutation(_typed(key), jnp.arange(n, dtype=jnp.int32))
    return _threefry.permutation(key, n, threefry_partitionable())
