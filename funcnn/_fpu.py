"""Subnormal floats flushed to zero for the length of a ``with`` block, as XLA does on CPU.

A subnormal float (``0 < |x| < 1.18e-38`` in float32) costs an x86 core about a hundred
times a normal one in every arithmetic operation. Training makes them: where a unit's
gradient stays exactly zero (a dead ReLU unit), Adam's first moment decays by ``b1``
every step and spends some 150 steps in the subnormal range on its way to zero. On the
NumPy path that made the optimizer's passes 4-5x slower (``benchmarks/numpy_breakdown.py``:
1.6-2.2 s of Adam per MNIST-sized epoch instead of 0.44 s). XLA runs its CPU programs
with subnormals flushed to zero, so the jax path never paid this.

:func:`flush_denormals` sets the FTZ (results) and DAZ (inputs) bits of the calling
thread's MXCSR register through the C library's ``fegetenv``/``fesetenv`` and restores
the previous environment on exit. It works on Linux x86-64 (glibc and musl share the
``fenv_t`` layout); elsewhere it does nothing and yields ``False``. Values that would be
subnormal become zero, which changes nothing a training run can see: the smallest
normal float32 is 1.2e-38, and an Adam step of ``lr * m / (sqrt(v) + eps)`` with ``m``
that small is below any parameter's rounding.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
import sys
from collections.abc import Iterator

__all__ = ["flush_denormals"]

_FTZ, _DAZ = 0x8000, 0x0040  # MXCSR bits: flush-to-zero (results), denormals-are-zero (inputs)
_ENV_WORDS, _MXCSR_WORD = 8, 7  # x86-64 fenv_t: 32 bytes, MXCSR in the last 32-bit word
_Env = ctypes.c_uint32 * _ENV_WORDS


@functools.cache
def _libm():
    """The C library's ``fegetenv``/``fesetenv``, or None where the layout is not known."""
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        lib.fegetenv.argtypes = lib.fesetenv.argtypes = [ctypes.POINTER(_Env)]
    except (OSError, AttributeError):
        return None
    return lib


def _get(lib) -> _Env:
    env = _Env()
    if lib.fegetenv(ctypes.byref(env)) != 0:
        raise OSError("fegetenv failed")
    return env


@contextlib.contextmanager
def flush_denormals() -> Iterator[bool]:
    """Flush subnormal floats to zero in this thread inside the block; yield whether it could.

    ::

        with funcnn.backend.flush_denormals():
            for xb, yb in batches:                 # a NumPy training loop of your own
                params, state, loss = step(params, state, xb, yb)

    ``funcnn.fit`` does this around its NumPy epochs. Nesting is fine; the previous
    state of the register comes back on exit, also after an exception.
    """
    lib = _libm()
    if lib is None:
        yield False
        return
    saved = _get(lib)
    env = _get(lib)
    env[_MXCSR_WORD] |= _FTZ | _DAZ
    if lib.fesetenv(ctypes.byref(env)) != 0:
        yield False
        return
    try:
        yield True
    finally:
        lib.fesetenv(ctypes.byref(saved))
