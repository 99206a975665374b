"""Explicit random keys on both backends; never the global ``np.random`` state.

A key is a ``uint32`` array of shape ``(2,)``. On jax it is a raw
``jax.random.PRNGKey``; on NumPy it is a read-only array from which each
sampler derives a fresh ``numpy.random.Generator``, so using a key twice
gives the same numbers twice, as in JAX. Split keys to get new randomness::

    key = funcnn.random.key(0)
    k_init, k_drop = funcnn.random.split(key)

Samplers dispatch on the key's backend: a NumPy key gives NumPy arrays and a
jax key gives jax arrays (traceable under ``jax.jit``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from funcnn.backend import _import_jax, get_backend, is_jax_array

__all__ = [
    "as_key",
    "bernoulli",
    "fold_in",
    "key",
    "normal",
    "permutation",
    "split",
    "uniform",
]

# Domain tags so that splitting, folding and sampling from one NumPy key draw
# from unrelated streams.
_SPLIT, _FOLD, _SAMPLE = 0x5B117, 0xF01D, 0x5A3B1E


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"a seed must be an integer; got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"a seed must be in [0, 2**64); got {seed}")
    return seed


def _frozen(words: np.ndarray) -> np.ndarray:
    words = np.asarray(words, dtype=np.uint32)
    words.flags.writeable = False
    return words


def key(seed: int, backend: str | None = None) -> Any:
    """A key from an integer seed; ``backend`` as in :func:`funcnn.get_backend`."""
    seed = _check_seed(seed)
    if get_backend(backend) == "jax":
        jax, jnp = _import_jax()
        return jnp.array([seed >> 32, seed & 0xFFFFFFFF], dtype=jnp.uint32)
    return _frozen(np.array([seed >> 32, seed & 0xFFFFFFFF]))


def as_key(key_or_seed: Any, backend: str | None = None) -> Any:
    """Accept an int seed or a key; return a key (converted to ``backend`` if given)."""
    if isinstance(key_or_seed, int | np.integer) and not isinstance(key_or_seed, bool):
        return key(key_or_seed, backend)
    k = key_or_seed
    shape = getattr(k, "shape", None)
    dtype = getattr(k, "dtype", None)
    if is_jax_array(k):
        jax, jnp = _import_jax()
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
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


def _words(k: np.ndarray, tag: int, count: int, *extra: int) -> np.ndarray:
    seq = np.random.SeedSequence([int(k[0]), int(k[1]), tag, *extra])
    return seq.generate_state(count, np.uint32)


def _rng(k: np.ndarray) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k[0]), int(k[1]), _SAMPLE]))


def split(key: Any, n: int = 2) -> Any:
    """``n`` new independent keys, as an array of shape ``(n, 2)``."""
    key = as_key(key)
    if is_jax_array(key):
        return _import_jax()[0].random.split(key, n)
    return _frozen(_words(key, _SPLIT, 2 * n).reshape(n, 2))


def fold_in(key: Any, data: int) -> Any:
    """A new key derived from ``key`` and the integer ``data`` (e.g. an epoch number)."""
    key = as_key(key)
    if is_jax_array(key):
        return _import_jax()[0].random.fold_in(key, data)
    return _frozen(_words(key, _FOLD, 2, int(data) & 0xFFFFFFFF))


def normal(key: Any, shape: tuple[int, ...], dtype: Any = "float32") -> Any:
    """Standard normal samples."""
    key = as_key(key)
    if is_jax_array(key):
        return _import_jax()[0].random.normal(key, shape, dtype)
    return _rng(key).standard_normal(shape, dtype=np.dtype(dtype))


def uniform(
    key: Any, shape: tuple[int, ...], dtype: Any = "float32", minval: float = 0.0,
    maxval: float = 1.0,
) -> Any:
    """Uniform samples in ``[minval, maxval)``."""
    key = as_key(key)
    if is_jax_array(key):
        return _import_jax()[0].random.uniform(key, shape, dtype, minval, maxval)
    u = _rng(key).random(shape, dtype=np.dtype(dtype))
    return (u * (maxval - minval) + minval).astype(dtype, copy=False)


def bernoulli(key: Any, p: float, shape: tuple[int, ...]) -> Any:
    """Boolean samples that are True with probability ``p``."""
    key = as_key(key)
    if is_jax_array(key):
        return _import_jax()[0].random.bernoulli(key, p, shape)
    return _rng(key).random(shape, dtype=np.float32) < p


def permutation(key: Any, n: int) -> Any:
    """A random permutation of ``range(n)``."""
    key = as_key(key)
    if is_jax_array(key):
        return _import_jax()[0].random.permutation(key, n)
    return _rng(key).permutation(n)
