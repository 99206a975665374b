"""Generic validation: numbers, trees and their dtypes (the MLP's own checks of ``x``,
``y``, caches and params live beside it, in ``funcnn._mlp_checks``).

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
from typing import Any

import numpy as np

from funcnn.backend import _jax_flags, check_same_backend, is_concrete, is_jax_array
from funcnn.tree import (
    describe,
    first_difference,
    same_structure,
    tree_leaves,
    tree_paths,
    tree_structure,
)

__all__ = [
    "check_count",
    "check_float_leaves",
    "check_leaf_dtypes",
    "check_lr",
    "check_params_like",
    "check_positive",
    "check_update",
    "same_numpy_layout",
]


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


def check_count(name: str, value: Any, *, minimum: int = 1, below: int | None = None) -> int:
    """``value`` as a Python ``int``, after checking it is a count of at least ``minimum``
    (and, with ``below``, less than ``below``).

    Every count funcnn takes (epochs, batch sizes, rows, steps, ...) goes through here, so
    a Python int, a NumPy integer (``np.int64(10)``) and a 0-d integer array are the same
    count, and what funcnn keeps (loop bounds, checkpoint metadata, hashed settings) is a
    plain ``int``. ``bool`` is refused (``True`` is not a count), and so is a float, even
    ``2.0``: ``TypeError``; an integer outside ``[minimum, below)``: ``ValueError``.
    """
    want = {0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer of at least {minimum}")
    if below is not None:
        want = f"an integer in [{minimum}, {below})"
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iu":
        value = value[()]
    elif is_jax_array(value) and value.shape == () and np.dtype(value.dtype).kind in "iu":
        if not is_concrete(value):
            raise TypeError(f"{name} must be {want}, known before tracing; got a traced value "
                            "(make it a static argument of jax.jit)")
        value = value.item()
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        what = f"{type(value).__name__} {value!r}"
        if isinstance(value, np.ndarray) or is_jax_array(value):
            what = f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
        raise TypeError(f"{name} must be {want}; got {what}")
    if below is not None and not minimum <= value < below:
        raise ValueError(f"{name} must be in [{minimum}, {below}); got {value}")
    if value < minimum:
        sign = {0: "non-negative", 1: "positive"}.get(minimum, f"at least {minimum}")
        raise ValueError(f"{name} must be {sign}; got {value}")
    return int(value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a positive (or, with ``allow_zero``, non-negative) finite
    real number: a Python or NumPy scalar or a 0-d array. A jax tracer is not checked.
    Counts are checked by :func:`check_count`.
    """
    if not is_concrete(value):
        return
    sign = "non-negative" if allow_zero else "positive"
    want = f"a {sign} number"
    value = _scalar_value(name, value, want)
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )
    if not ok:
        raise TypeError(f"{name} must be {want}; got {type(value).__name__} {value!r}")
    if not (value >= 0 if allow_zero else value > 0) or not math.isfinite(value):
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
