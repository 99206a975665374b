"""Validation at the public boundary: clear errors instead of deep NumPy/JAX ones.

Shapes and dtypes are static, so they are checked always (also while
``jax.jit`` traces); values (NaN, label ranges) are checked only on concrete
arrays, never on tracers.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from funcnn.backend import array_namespace, backend_of
from funcnn.tree import describe, first_difference, tree_structure

__all__ = [
    "check_params_like",
    "check_positive",
    "check_x",
    "check_y",
    "is_concrete",
]


def is_concrete(x: Any) -> bool:
    """False for jax tracers (values unknown while tracing), True otherwise."""
    if "jax" not in sys.modules:
        return True
    import jax

    return not isinstance(x, jax.core.Tracer)


def check_positive(name: str, value: Any, *, integer: bool = False) -> None:
    """Raise unless ``value`` is a positive number (an integer if asked)."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = "a positive integer" if integer else "a positive number"
        raise TypeError(f"{name} must be {want}; got {type(value).__name__} {value!r}")
    if not value > 0 or (not integer and not np.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite; got {value!r}")


def _as_array(name: str, value: Any) -> Any:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array; got {type(value).__name__}") from err


def _check_finite(name: str, arr: Any) -> None:
    if not is_concrete(arr):
        return
    a = np.asarray(arr)
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(
            f"{name} holds NaN or infinite values (first at index {tuple(int(i) for i in bad)}: "
            f"{a[tuple(bad)]})"
        )


def check_x(net: Any, x: Any, dtype: Any) -> Any:
    """Validate inputs ``x`` of shape ``(m, n_in)`` and cast them to ``dtype``.

    Float, integer and boolean inputs are accepted (and cast); others are refused.
    """
    x = _as_array("x", x)
    kind = np.dtype(x.dtype).kind
    if kind not in "fiub":
        raise TypeError(f"x must hold real numbers (float, int or bool); got dtype {x.dtype}")
    if x.ndim != 2:
        hint = " (for one sample use x[None, :])" if x.ndim == 1 else ""
        raise ValueError(
            f"x must have shape (batch, {net.sizes[0]}); got rank {x.ndim} with shape "
            f"{tuple(x.shape)}{hint}"
        )
    if x.shape[1] != net.sizes[0]:
        raise ValueError(
            f"x has {x.shape[1]} features but the net expects {net.sizes[0]} "
            f"(x.shape = {tuple(x.shape)}, net.sizes = {net.sizes})"
        )
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (shape (0, n)); expected at least one sample")
    if kind == "f":
        _check_finite("x", x)
    if x.dtype != dtype:
        x = array_namespace(x).asarray(x, dtype=dtype)
    return x


def check_y(net: Any, y: Any, m: int, dtype: Any) -> Any:
    """Validate targets for the net's loss; return them in the form the loss uses."""
    from funcnn.losses import prepare_targets

    y = _as_array("y", y)
    k = net.sizes[-1]
    kind = np.dtype(y.dtype).kind
    if kind not in "fiub":
        raise TypeError(f"y must hold numbers; got dtype {y.dtype}")
    if y.ndim == 0 or y.shape[0] != m:
        raise ValueError(
            f"y has {y.shape[0] if y.ndim else 'no'} rows but x has {m}; "
            f"y.shape = {tuple(y.shape)}"
        )
    if net.loss == "cross_entropy":
        if y.ndim == 1:
            if kind not in "iu":
                raise TypeError(
                    f"class labels of shape (m,) must be integers in [0, {k}); got dtype "
                    f"{y.dtype} (use y.astype(int), or pass one-hot rows of shape (m, {k}))"
                )
            if is_concrete(y):
                bad = np.flatnonzero((np.asarray(y) < 0) | (np.asarray(y) >= k))
                if bad.size:
                    raise ValueError(
                        f"class labels must be in [0, {k}); y[{bad[0]}] = {y[bad[0]]} "
                        f"({bad.size} label(s) out of range)"
                    )
            return y
        if y.ndim != 2 or y.shape[1] != k:
            raise ValueError(
                f"cross-entropy targets must be integer labels (m,) or rows (m, {k}); got "
                f"shape {tuple(y.shape)}"
            )
    else:
        want = (m, k)
        if not (y.shape == want or (k == 1 and y.shape == (m,))):
            alt = f" or ({m},)" if k == 1 else ""
            raise ValueError(
                f"{net.loss} targets must have shape {want}{alt}; got {tuple(y.shape)}"
            )
    if kind == "f":
        _check_finite("y", y)
    if net.loss == "binary_cross_entropy" and is_concrete(y):
        yv = np.asarray(y)
        if yv.size and (yv.min() < 0 or yv.max() > 1):
            raise ValueError(
                f"binary cross-entropy targets must be in [0, 1]; got values in "
                f"[{yv.min()}, {yv.max()}]"
            )
    return prepare_targets(net.loss, y, k, dtype)


def _same_layout(a: Any, b: Any) -> bool:
    """Fast check: same containers (types, lengths, dict keys) and same leaf shapes."""
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_layout, a, b))
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(
            _same_layout(a[k], b[k]) for k in a
        )
    if a is None or b is None:
        return a is b
    if isinstance(b, tuple | list | dict):
        return False
    return getattr(a, "shape", None) == getattr(b, "shape", None)


def check_params_like(name: str, tree: Any, reference: Any, ref_name: str = "params") -> None:
    """Raise unless ``tree`` has the structure and leaf shapes of ``reference``."""
    if _same_layout(tree, reference):
        return
    if tree_structure(tree) == tree_structure(reference):
        diff = first_difference(tree, reference, shapes=True)
        if diff is None:
            return
    else:
        diff = first_difference(tree, reference)
    raise ValueError(
        f"{name} does not match {ref_name}: first difference at {diff}\n"
        f"  {name}: {describe(tree)}\n  {ref_name}: {describe(reference)}"
    )


def check_same_backend(*trees: Any) -> str:
    """The backend of the trees; raises TypeError when they mix backends."""
    return backend_of(*trees)
