"""Fused loops for the NumPy backend (the optional extra ``funcnn[fast]``), and when they run.

A NumPy training step makes some 60 passes over memory besides its matrix products: the
bias add and the activation, the activation's derivative and the dropout mask, the
softmax and its cross-entropy delta, and a dozen passes of Adam over four parameter-sized
arrays. With numba installed (``pip install "funcnn[fast]"``), each of these pieces is one
compiled loop (:mod:`funcnn._kernels`) that reads its arrays once; the pure NumPy code
stays the reference, is what runs without numba, and is tested equal to the loops
(``tests/test_fused.py``). What is fused: every optimizer's leaf update (SGD with
momentum, Nesterov and weight decay; RMSProp, centered and with momentum; Adagrad; Adam
and AdamW with any mask), ``z += b; h = g(z)`` for ReLU and leaky ReLU and
``z += b; p = softmax(z)`` in the forward pass, ``dz = da * mask * g'(z, h)`` in the
backward pass (for every built-in activation whose derivative needs no tanh or exp:
identity, ReLU, leaky ReLU, ELU, tanh, sigmoid), and the cross-entropy and its delta
``(p - Y) / m`` for integer labels. Only NumPy float32/float64 arrays and the built-in
activations (by name) take the loops; jax arrays and an ``Activation`` of your
own always take the pure path.

When the loops run: wherever numba can be imported, unless switched off

- for a process, by the environment variable ``FUNCNN_FUSED=0`` (read at each call, like
  ``NUMBA_NUM_THREADS`` is read by numba: set it before starting Python);
- for a block of code, by ``with use_fused(False):`` (or ``use_fused(True)``, which
  raises ``ImportError`` where numba is missing). The setting lives in a
  :class:`contextvars.ContextVar`, as NumPy keeps ``np.errstate``: it belongs to the
  thread (and asyncio task) that enters the block and is restored on exit, also after an
  exception, so a test or benchmark comparing both paths cannot leak its choice into
  other code. There is no module-level switch to set and forget.

``import funcnn`` does not import numba: the kernels module is loaded by the first call
that could use it (about 0.3 s for numba itself, then each kernel's machine code from
numba's disk cache, or about a second a kernel to compile it the very first time). The
cache (``cache=True``) is written beside ``funcnn/_kernels.py`` in ``__pycache__``;
where that directory is read-only (a system site-packages) numba falls back to a per-user
cache directory, and ``NUMBA_CACHE_DIR`` chooses one explicitly. The loops are serial
(see :mod:`funcnn._kernels`): no thread pool of their own, and ``funcnn.flush_denormals``
applies to them as to NumPy. A numba that is installed but cannot be imported (say, one
too old for this NumPy) warns once and leaves the pure path in place.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from funcnn.tree import tree_leaves

__all__ = ["BACKWARD", "FORWARD", "activation_grad_product", "available", "backward_applies",
           "bias_activation", "cross_entropy", "cross_entropy_delta", "enabled", "forward_applies",
           "optimizer_leaf", "use_fused"]

ENV = "FUNCNN_FUSED"
_OFF = ("0", "false", "no", "off")
FORWARD = ("relu", "leaky_relu", "softmax")
"""The activations whose ``z += b; h = g(z)`` is one loop (the others need tanh, exp, ...,
where NumPy's SIMD code beats a loop calling the C library's by 10x or more)."""
BACKWARD = ("identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid")
"""The activations whose ``da * mask * g'(z, h)`` is one loop (``g'`` written from ``h``)."""
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_setting: contextvars.ContextVar[bool | None] = contextvars.ContextVar("funcnn_fused",
                                                                        default=None)


@functools.cache
def _kernels() -> Any:
    """The compiled kernels' module, or ``None`` without a working numba (warned once)."""
    try:
        return importlib.import_module("funcnn._kernels")  # imports numba: only on first use
    except ModuleNotFoundError as e:
        if e.name != "numba":
            raise
    except ImportError as e:  # numba is there but refuses this NumPy or platform
        warnings.warn(f"numba is installed but cannot be imported ({e}); funcnn runs its "
                      "pure NumPy path", RuntimeWarning, stacklevel=3)
    return None


def available() -> bool:
    """Whether the fused loops can run here (numba imports; loads it on the first call)."""
    return _kernels() is not None


def enabled() -> bool:
    """Whether NumPy computations take the fused loops now: numba is available, and
    neither ``use_fused(False)`` nor ``FUNCNN_FUSED=0`` says otherwise."""
    on = _setting.get()
    if on is None:
        on = os.environ.get(ENV, "1").strip().lower() not in _OFF
    return on and available()


@contextlib.contextmanager
def use_fused(on: bool = True) -> Iterator[None]:
    """Take the fused loops (``on=True``) or the pure NumPy code (``False``) inside the
    block, in this thread; the previous setting comes back on exit."""
    if on and not available():
        raise ImportError("the fused loops need numba, which is not importable here; "
                          "install it with pip install 'funcnn[fast]'")
    token = _setting.set(bool(on))
    try:
        yield
    finally:
        _setting.reset(token)


@functools.cache
def _constants(dtype: np.dtype) -> np.ndarray:
    return np.array(_kernels().CONSTANTS, dtype=dtype)


def _is_float_numpy(x: Any) -> bool:
    return type(x) is np.ndarray and x.dtype in _FLOATS


# ---------------------------------------------------------------------------- layers


def forward_applies(z: Any, name: Any) -> bool:
    """Whether :func:`bias_activation` fuses activation ``name`` (or ``"softmax"``) on ``z``
    (a 2-D NumPy float array) now."""
    return _is_float_numpy(z) and z.ndim == 2 and name in FORWARD and enabled()


def backward_applies(da: Any, name: Any) -> bool:
    """Whether :func:`activation_grad_product` fuses ``name``'s derivative on ``da`` now."""
    return _is_float_numpy(da) and da.ndim == 2 and name in BACKWARD and enabled()


def bias_activation(z: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """``z += b`` in place and return ``g(z)``, one pass; ``z``: (m, n), ``b``: (n,).
    Call only where :func:`forward_applies` (``z``, the fresh product, is the caller's)."""
    k, out = _kernels(), np.empty_like(z)
    b = np.asarray(b, dtype=z.dtype)
    if name == "softmax":
        k.bias_softmax(z, b, out, _constants(z.dtype))
    else:
        k.bias_activation(z, b, out, _constants(z.dtype), k.FORWARD.index(name))
    return out


def activation(z: np.ndarray, name: str) -> np.ndarray:
    """``g(z)`` in one pass (``z`` unchanged but for the sign of zeros): the output
    activation of a net whose last layer added its own bias. Call only where
    :func:`forward_applies`."""
    return bias_activation(z, np.zeros(z.shape[1], z.dtype), name)


def activation_grad_product(da: np.ndarray, mask: Any, z: np.ndarray, h: np.ndarray,
                            name: str) -> np.ndarray:
    """``da * mask * g'(z, h)`` in one pass, into a new array (``da`` is only read: it may
    be shared, e.g. a residual block's skip); ``mask`` is the scaled dropout mask or
    ``None``; all (m, n). Call only where :func:`backward_applies`."""
    k, out = _kernels(), np.empty_like(da)
    k.grad_product(da, mask, z, h, out, _constants(da.dtype), k.BACKWARD.index(name))
    return out


def _labels_apply(z: Any, y: Any) -> bool:
    return (_is_float_numpy(z) and z.ndim == 2 and type(y) is np.ndarray and y.ndim == 1
            and y.dtype.kind in "iu" and enabled())


def cross_entropy(z: Any, y: Any) -> Any:
    """``mean_i [logsumexp(z_i) - z_i[y_i]]`` in one pass over the logits, a scalar of
    ``z``'s dtype (NaN for a label outside ``[0, k)``), or ``None`` where the fused loop
    does not apply (not NumPy floats, not integer labels)."""
    if not _labels_apply(z, y):
        return None
    return z.dtype.type(_kernels().cross_entropy(z, y, _constants(z.dtype)))


def cross_entropy_delta(p: Any, y: Any) -> np.ndarray | None:
    """``(p - onehot(y)) / m`` in one pass (rows of NaN for labels outside ``[0, k)``), or
    ``None`` where the fused loop does not apply (not NumPy floats, not integer labels)."""
    if not _labels_apply(p, y):
        return None
    out = np.empty_like(p)
    _kernels().cross_entropy_delta(p, y, out, p.dtype.type(1.0 / p.shape[0]),
                                   _constants(p.dtype))
    return out


# ---------------------------------------------------------------------------- optimizers


def optimizer_leaf(name: str, params: Any) -> Any:
    """The fused twin of optimizer ``name``'s leaf update (same signature and results), or
    ``None`` where the pure one must run (fused off, or a leaf that is not NumPy float)."""
    if not all(_is_float_numpy(p) for p in tree_leaves(params)) or not enabled():
        return None
    return _LEAVES[name]


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1)


def _sgd(p, g, v, *, lr, momentum, nesterov, weight_decay):
    t = p.dtype.type
    p_new, v_new = _kernels().sgd(
        _flat(p), _flat(g), _flat(v), t(lr), t(momentum or 0), bool(nesterov),
        t(weight_decay or 0), momentum is not None, weight_decay is not None)
    return p_new.reshape(p.shape), v if momentum is None else v_new.reshape(p.shape)


def _rmsprop(p, g, nu, velocity, mu, *, lr, decay, one_minus_decay, eps, momentum, centered):
    t = p.dtype.type
    p_new, nu_new, vel_new, mu_new = _kernels().rmsprop(
        _flat(p), _flat(g), _flat(nu), _flat(velocity), _flat(mu), t(lr), t(decay),
        t(one_minus_decay), t(eps), t(momentum or 0), bool(centered), momentum is not None)
    return (p_new.reshape(p.shape), nu_new.reshape(p.shape),
            velocity if momentum is None else vel_new.reshape(p.shape),
            mu_new.reshape(p.shape) if centered else mu)


def _adagrad(p, g, s, *, lr, eps):
    t = p.dtype.type
    p_new, s_new = _kernels().adagrad(_flat(p), _flat(g), _flat(s), t(lr), t(eps))
    return p_new.reshape(p.shape), s_new.reshape(p.shape)


def _adam(p, g, m, v, decayed=False, *, b1, b2, one_minus_b1, one_minus_b2, step_size,
          eps_hat, decay=None):
    t = p.dtype.type
    mode = 0 if decayed is False or decay is None else 1 if decayed is True else 2
    mask = _flat(np.asarray(decayed, dtype=p.dtype)) if mode == 2 else _flat(p)
    if mask.shape != _flat(p).shape:  # a 0-d array mask: the same for every entry
        mask = np.broadcast_to(mask, _flat(p).shape)
    p_new, m_new, v_new = _kernels().adam(
        _flat(p), _flat(g), _flat(m), _flat(v), mask, mode, t(b1), t(b2), t(one_minus_b1),
        t(one_minus_b2), t(step_size), t(eps_hat), t(decay if mode else 0))
    return p_new.reshape(p.shape), m_new.reshape(p.shape), v_new.reshape(p.shape)


_LEAVES = {"sgd": _sgd, "rmsprop": _rmsprop, "adagrad": _adagrad, "adam": _adam}
