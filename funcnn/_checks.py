"""Validation at the public boundary: clear errors instead of deep NumPy/JAX ones.

Shapes and dtypes are static, so they are checked always (also while
``jax.jit`` traces); values (NaN, label ranges, the sign of a learning rate)
are checked only on concrete arrays and numbers, never on tracers.

Every check raises ``TypeError`` for a value of the wrong kind (dtype,
container, backend) and ``ValueError`` for a value of the right kind that is
out of range or of the wrong shape; each message says what was expected and
what was given. ``docs/reliability.md`` lists the guarantees and their tests.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from funcnn.backend import array_namespace, is_jax_array
from funcnn.tree import (
    describe,
    first_difference,
    same_structure,
    tree_leaves,
    tree_paths,
    tree_structure,
)

__all__ = [
    "check_cache",
    "check_float_leaves",
    "check_initialized",
    "check_leaf_dtypes",
    "check_lr",
    "check_params_like",
    "check_positive",
    "check_same_backend",
    "check_update",
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


# ---------------------------------------------------------------------------- numbers


def _scalar_value(name: str, value: Any, want: str) -> Any:
    """A 0-d real array (NumPy or concrete jax) as a Python number; other values unchanged."""
    if isinstance(value, np.ndarray | np.generic) or is_jax_array(value):
        kind = np.dtype(value.dtype).kind
        if value.shape != () or kind not in "fiu":
            raise TypeError(
                f"{name} must be {want}; got an array of shape {tuple(value.shape)} and "
                f"dtype {value.dtype}"
            )
        return value.item()
    return value


def check_positive(name: str, value: Any, *, integer: bool = False,
                   allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a positive (or, with ``allow_zero``, non-negative) number.

    With ``integer=True`` it must be an int (``bool`` is refused). Without it, a finite
    real number: a Python or NumPy scalar or a 0-d array. A jax tracer is not checked.
    """
    if not is_concrete(value):
        return
    sign = "non-negative" if allow_zero else "positive"
    want = f"a {sign} integer" if integer else f"a {sign} number"
    if integer:
        ok = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
    else:
        value = _scalar_value(name, value, want)
        ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool | np.bool_
        )
    if not ok:
        raise TypeError(f"{name} must be {want}; got {type(value).__name__} {value!r}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not low_ok or (not integer and not math.isfinite(value)):
        raise ValueError(f"{name} must be {sign} and finite; got {value!r}")


def check_lr(lr: Any, name: str = "lr") -> None:
    """A learning rate: a schedule (any callable) or a positive finite number.

    Numbers and concrete 0-d arrays are checked; a jax tracer (``lr`` passed as an
    argument of a jitted function) and the values a schedule returns are not.
    """
    if type(lr) is float and 0.0 < lr < math.inf:  # the common case, once per step
        return
    if callable(lr):
        return
    check_positive(name, lr)


# ---------------------------------------------------------------------------- data


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
    if bool(xp.isfinite(xp.sum(arr))) or bool(xp.isfinite(arr).all()):
        return
    a = np.asarray(arr)
    if not np.isfinite(a).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        count = int(np.sum(~np.isfinite(a)))
        raise ValueError(
            f"{name} holds NaN or infinite values: {count} of them, the first at index {bad} "
            f"({a[bad]}); clean or impute the data before training"
        )


def check_x(net: Any, x: Any, dtype: Any) -> Any:
    """Validate inputs ``x`` of shape ``(m, n_in)`` and cast them to ``dtype``.

    Float, integer and boolean inputs are accepted and cast to ``dtype`` (the params'
    dtype); complex, object and string arrays are refused.
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
    if x.dtype != dtype:
        x = array_namespace(x).asarray(x, dtype=dtype)
    return x


def check_y(net: Any, y: Any, m: int, dtype: Any) -> Any:
    """Validate targets for the net's loss; return them in the form the loss uses.

    Cross-entropy takes integer class labels ``(m,)`` in ``[0, k)`` or rows ``(m, k)``
    (one-hot or probabilities); the other losses take ``(m, k)`` (or ``(m,)`` when
    ``k == 1``). Integer and boolean targets are cast to ``dtype``, except labels.
    """
    from funcnn.losses import prepare_targets

    y = _as_array("y", y)
    k = net.sizes[-1]
    kind = np.dtype(y.dtype).kind
    if kind not in "fiub":
        raise TypeError(
            f"y must hold real numbers (float, int or bool); got dtype {y.dtype}"
        )
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
            if is_concrete(y):
                yv = np.asarray(y)
                bad = np.flatnonzero((yv < 0) | (yv >= k))
                if bad.size:
                    raise ValueError(
                        f"class labels must be in [0, {k}) for a net with {k} outputs; "
                        f"y[{bad[0]}] = {yv[bad[0]]} ({bad.size} label(s) out of range)"
                    )
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
                f"{net.loss} targets must have shape {want}{alt}, one column per output; "
                f"got {tuple(y.shape)}"
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


# ---------------------------------------------------------------------------- trees


def _same_shape(a: Any, b: Any) -> bool:
    return getattr(a, "shape", None) == getattr(b, "shape", None)


def _same_numpy_leaf(ref: Any, leaf: Any) -> bool:
    return (type(ref) is np.ndarray and type(leaf) is np.ndarray and ref.dtype.kind == "f"
            and leaf.shape == ref.shape and leaf.dtype == ref.dtype)


def check_params_like(name: str, tree: Any, reference: Any, ref_name: str = "params") -> None:
    """Raise unless ``tree`` has the structure and leaf shapes of ``reference``.

    The message prints both structures (with leaf dtypes and shapes) and the path of
    the first difference, e.g. ``[1].W (shape (4, 3) vs (4, 2))``.
    """
    if same_structure(tree, reference, _same_shape):
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


def _path_of(tree: Any, index: int) -> str:
    return tree_paths(tree)[index][0]


def check_float_leaves(name: str, tree: Any) -> None:
    """Raise ``TypeError`` unless every leaf of ``tree`` is a float array."""
    for i, leaf in enumerate(tree_leaves(tree)):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not hasattr(leaf, "shape") or np.dtype(dtype).kind != "f":
            what = f"dtype {dtype}" if dtype is not None else f"a {type(leaf).__name__}"
            raise TypeError(
                f"{name}{_path_of(tree, i)} is {what}; {name} leaves must be float32 or "
                f"float64 arrays (convert with funcnn.to_backend({name}, backend, 'float32'))"
            )


def check_leaf_dtypes(name: str, tree: Any, reference: Any, ref_name: str = "params") -> None:
    """Raise ``TypeError`` unless each leaf of ``tree`` has its ``reference`` leaf's dtype.

    The trees must already have the same structure. This is what keeps float32
    parameters float32 through every optimizer update.
    """
    for i, (leaf, ref) in enumerate(zip(tree_leaves(tree), tree_leaves(reference), strict=True)):
        if getattr(leaf, "dtype", None) != ref.dtype:
            path = _path_of(tree, i)
            got = getattr(leaf, "dtype", type(leaf).__name__)
            raise TypeError(
                f"{name}{path} is {got} but {ref_name}{path} is {ref.dtype}; they must have "
                f"the same dtype (funcnn keeps the parameter dtype through every update)"
            )


def _jax_flags(leaves: list) -> list[bool]:
    """Which leaves are jax arrays (or tracers). NumPy arrays are recognised by type
    first, because ``isinstance(leaf, jax.Array)`` costs about a microsecond each."""
    if "jax" not in sys.modules:
        return [False] * len(leaves)
    import jax

    return [type(leaf) is not np.ndarray and isinstance(leaf, jax.Array) for leaf in leaves]


def same_numpy_layout(ref: Any, *trees: Any) -> bool:
    """Fast path of the optimizer checks: True when ``ref`` is a tree of NumPy float arrays
    and every tree has its containers and, leaf by leaf, the same shape and dtype.

    False means "look closer" (jax arrays always take the detailed checks).
    """
    return all(same_structure(ref, tree, _same_numpy_leaf) for tree in trees)


def check_update(params: Any, grads: Any, state: Any, fields: tuple[str, ...]) -> None:
    """Dtypes and backends of an optimizer update, whose tree structures already match.

    Params must be float arrays of one backend, the grads and each per-leaf state field
    ``state.<field>`` must have the params' dtypes leaf by leaf, and nothing may be a jax
    array when the params are NumPy. A single pass over the leaves when all is well;
    the detailed message (with the leaf path) is built only on failure.
    """
    p = tree_leaves(params)
    for leaf in p:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or dtype.kind != "f":
            check_float_leaves("params", params)
    flags = _jax_flags(p)
    if (any(flags) and not all(flags)) or (
        not any(flags) and any(_jax_flags(tree_leaves((grads, state))))
    ):
        check_same_backend(params, grads=grads, state=state)
    for name, tree in (("grads", grads), *((f"state.{f}", getattr(state, f)) for f in fields)):
        for leaf, ref in zip(tree_leaves(tree), p, strict=True):
            if getattr(leaf, "dtype", None) != ref.dtype:
                check_leaf_dtypes(name, tree, params)


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


# ---------------------------------------------------------------------------- mlp pieces


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
