"""The MLP's own validation: inputs ``x``, targets ``y``, forward caches, initializers.

Shapes and dtypes are checked always (also while ``jax.jit`` traces); values (NaN,
label ranges, target ranges) only where they are concrete. A value computed inside
a trace is never asked for, whatever the origin of its inputs: a concrete jax array
closed over by a jitted function still gives traced reductions, so every value check
looks at the *result* of its reduction before using it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from funcnn.activations import name_of
from funcnn.backend import array_namespace, concrete_value, is_concrete, is_jax_array
from funcnn.losses import prepare_targets

__all__ = ["check_cache", "check_initialized", "check_x", "check_y"]


def _as_array(name: str, value: Any) -> Any:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be an array (or a nested list of numbers with equal row lengths); "
            f"got {type(value).__name__}"
        ) from err


def _check_finite(name: str, arr: Any) -> None:
    if not is_concrete(arr):
        return
    xp = array_namespace(arr)  # reduce on the device for jax arrays
    # A NaN or an infinity makes the sum non-finite, and a sum is ~4x cheaper than
    # isfinite().all(); only a non-finite sum (or an overflowing one) needs the full look.
    total = xp.sum(arr)
    if not is_concrete(total):  # inside a trace: values are not ours to look at
        return
    if math.isfinite(float(total)) or bool(xp.isfinite(arr).all()):
        return
    a = np.asarray(arr)
    bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
    count = int(np.sum(~np.isfinite(a)))
    raise ValueError(
        f"{name} holds NaN or infinite values: {count} of them, the first at index {bad} "
        f"({a[bad]}); clean or impute the data before training"
    )


def _looks_like_pixels(x: Any) -> bool:
    values = concrete_value(x)
    return values is not None and values.size > 0 and int(values.max()) > 1


def check_x(net: Any, x: Any, dtype: Any) -> Any:
    """Validate inputs ``x`` of shape ``(m, n_in)`` and cast them to ``dtype``.

    Float, integer and boolean inputs are accepted and cast to ``dtype`` (the params'
    dtype); complex, object and string arrays are refused. ``uint8`` inputs above 1
    (raw pixels, 0-255) are cast as they are, with a warning: scale them first.
    """
    x = _as_array("x", x)
    kind = np.dtype(x.dtype).kind
    if kind not in "fiub":
        raise TypeError(
            f"x must hold real numbers (float, int or bool); got dtype {x.dtype} "
            "(complex, object and string arrays are not converted)"
        )
    if x.ndim != 2:
        hint = " (for one sample use x[None, :])" if x.ndim == 1 else ""
        raise ValueError(
            f"x must have shape (batch, {net.sizes[0]}), rank 2; got rank {x.ndim} with shape "
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
    elif x.dtype == np.uint8 and _looks_like_pixels(x):
        warnings.warn(
            "x is uint8 with values above 1, which looks like raw pixel values in [0, 255]; "
            f"funcnn casts it to {np.dtype(dtype).name} as it is. Scale it first (x / 255, "
            "or funcnn.data.standardize) for a well-conditioned net",
            UserWarning, stacklevel=3,
        )
    if x.dtype != dtype:
        x = array_namespace(x).asarray(x, dtype=dtype)
    return x


def _check_labels(y: Any, k: int) -> None:
    yv = concrete_value(y)
    if yv is None:
        return  # traced labels: out-of-range ones make the loss NaN (funcnn.losses)
    bad = np.flatnonzero((yv < 0) | (yv >= k))
    if bad.size:
        raise ValueError(
            f"class labels must be in [0, {k}) for a net with {k} outputs; "
            f"y[{bad[0]}] = {yv[bad[0]]} ({bad.size} label(s) out of range)"
        )


def _check_range(y: Any, loss: str, low: int, high: int | None) -> None:
    yv = concrete_value(y)
    if yv is None or not yv.size:
        return
    lo, hi = yv.min(), yv.max()
    if lo < low or (high is not None and hi > high):
        want = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{loss} targets must be {want}; got values in [{lo}, {hi}]")


def check_y(net: Any, y: Any, m: int, dtype: Any) -> Any:
    """Validate targets for the net's loss; return them in the form the loss uses.

    Cross-entropy takes integer class labels ``(m,)`` in ``[0, k)`` or non-negative rows
    ``(m, k)`` (one-hot or probabilities); the other losses take ``(m, k)`` (or ``(m,)``
    when ``k == 1``). Integer and boolean targets are cast to ``dtype``, except labels.
    """
    y = _as_array("y", y)
    k = net.sizes[-1]
    kind = np.dtype(y.dtype).kind
    if kind not in "fiub":
        raise TypeError(f"y must hold real numbers (float, int or bool); got dtype {y.dtype}")
    if y.ndim == 0:
        raise ValueError(f"y must have one row per sample of x ({m}); got a scalar")
    if y.shape[0] != m:
        raise ValueError(
            f"y has length {y.shape[0]} but x has {m} rows; they must match "
            f"(y.shape = {tuple(y.shape)})"
        )
    if net.loss == "cross_entropy":
        if y.ndim == 1:
            if kind not in "iu":
                raise TypeError(
                    f"class labels of shape (m,) must be integers in [0, {k}); got dtype "
                    f"{y.dtype} (use y.astype(int), or pass one-hot rows of shape (m, {k}))"
                )
            _check_labels(y, k)
            return y
        if y.ndim != 2:
            raise ValueError(
                f"cross-entropy targets must be integer labels of shape (m,) or one-hot rows "
                f"of shape (m, {k}); got rank {y.ndim} with shape {tuple(y.shape)}"
            )
        if y.shape[1] != k:
            raise ValueError(
                f"one-hot rows have width {y.shape[1]} but the net has {k} outputs; "
                f"expected shape ({m}, {k}), got {tuple(y.shape)}"
            )
    else:
        want = (m, k)
        if not (tuple(y.shape) == want or (k == 1 and tuple(y.shape) == (m,))):
            alt = f" or ({m},)" if k == 1 else ""
            raise ValueError(
                f"{name_of(net.loss)} targets must have shape {want}{alt}, one column per output; "
                f"got {tuple(y.shape)}"
            )
    if kind == "f":
        _check_finite("y", y)
    if net.loss == "cross_entropy":  # rows are weights of the classes: never negative
        _check_range(y, "cross-entropy row", 0, None)
    elif net.loss == "binary_cross_entropy":
        _check_range(y, "binary cross-entropy", 0, 1)
    return prepare_targets(net.loss, y, k, dtype)


def check_cache(net: Any, cache: Any, dtype: Any) -> None:
    """Raise unless a forward ``Cache`` has the layer shapes of ``net`` and the params' dtype."""
    n = net.n_layers
    lengths = tuple(len(part) for part in (cache.inputs, cache.zs, cache.hidden, cache.masks))
    if lengths != (n, n, n - 1, n - 1):
        raise ValueError(
            f"cache comes from a net with {lengths[0]} layers, not from this net with {n} "
            f"layers ({net.sizes}); pass the cache that funcnn.forward returned for this net"
        )
    m = cache.inputs[0].shape[0] if cache.inputs[0].ndim == 2 else None
    for l, (n_in, n_out) in enumerate(zip(net.sizes[:-1], net.sizes[1:], strict=True)):
        for what, arr, width in (("inputs", cache.inputs[l], n_in), ("zs", cache.zs[l], n_out)):
            if tuple(arr.shape) != (m, width):
                raise ValueError(
                    f"cache.{what}[{l}] has shape {tuple(arr.shape)}; a net with sizes "
                    f"{net.sizes} on a batch of {m} expects ({m}, {width}); pass the cache "
                    "that funcnn.forward returned for these params"
                )
    if cache.out.dtype != dtype:
        raise TypeError(
            f"cache holds {cache.out.dtype} arrays but the params are {np.dtype(dtype)}; "
            "run funcnn.forward with these params"
        )


def check_initialized(net: Any, params: Any, dtype: Any, init: Any) -> None:
    """Raise unless an initializer gave each layer a weight of the right shape, dtype, backend."""
    backend = "jax" if is_jax_array(params[0].b) else "numpy"
    for l, (layer, n_in, n_out) in enumerate(
        zip(params, net.sizes[:-1], net.sizes[1:], strict=True)
    ):
        W = layer.W
        got = (tuple(getattr(W, "shape", ())), getattr(W, "dtype", None))
        if got != ((n_in, n_out), dtype) or is_jax_array(W) != (backend == "jax"):
            kind = "jax" if is_jax_array(W) else type(W).__name__
            raise ValueError(
                f"the initializer {init!r} returned a {kind} of shape {got[0]} and dtype "
                f"{got[1]} for params[{l}].W; expected a {backend} array of shape "
                f"({n_in}, {n_out}) and dtype {np.dtype(dtype)}"
            )
