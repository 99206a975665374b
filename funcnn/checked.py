"""The checked entry points of every net: ``forward``, ``predict``, ``loss``, ``backprop``
and ``value_and_grad``, and :func:`prepare`, the one sequence of checks they, the training
step, ``fit``, ``evaluate`` and ``funcnn.per_example`` share: the net, its params (and model
state), the inputs ``x``, the targets ``y`` and the key.

Shapes and dtypes are checked always (also while ``jax.jit`` traces); values (NaN,
label ranges, target ranges) only where they are concrete. A value computed inside
a trace is never asked for, whatever the origin of its inputs: a concrete jax array
closed over by a jitted function still gives traced reductions, so every value check
looks at the *result* of its reduction before using it.

**Model state** (``BatchNorm``'s running statistics): a net that keeps state takes it as
``state=`` (from ``funcnn.init_state(net)``), and a call given ``state=`` hands the new
state back as its last value: ``out, cache, state = forward(net, params, x, state=state,
train=True, key=k)``. A net without state needs none, and returns what it always did.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np

from funcnn._checks import check_params_like
from funcnn.activations import name_of
from funcnn.backend import (
    array_namespace,
    check_same_backend,
    concrete_value,
    is_concrete,
    is_jax_array,
    namespace,
)
from funcnn.layers import DenseCache
from funcnn.losses import prepare_targets
from funcnn.network import (
    Cache,
    Network,
    apply,
    backward,
    check_net,
    draw_noise,
    expected_params,
    expected_state,
    layer_shapes,
    loss_from_cache,
)
from funcnn.tree import same_structure, tree_paths
from funcnn.types import Array, Grads, Key, Params

__all__ = [
    "Batch",
    "backprop",
    "check_params",
    "check_x",
    "check_y",
    "forward",
    "loss",
    "predict",
    "prepare",
    "value_and_grad",
]


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


def _describe(net: Any) -> str:
    return f"net.sizes = {net.sizes}" if hasattr(net, "sizes") else f"net.in_shape = {net.in_shape}"


def check_x(net: Any, x: Any, dtype: Any) -> Any:
    """Validate inputs ``x`` of shape ``(m, *net.in_shape)`` and cast them to ``dtype``.

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
    shape = net.in_shape
    if x.ndim != len(shape) + 1:
        one = "x[None, :]" if len(shape) == 1 else "x[None]"
        hint = f" (for one sample use {one})" if x.ndim == len(shape) else ""
        dims = ", ".join(str(d) for d in ("batch", *shape))
        raise ValueError(
            f"x must have shape ({dims}), rank {len(shape) + 1}; got rank {x.ndim} with shape "
            f"{tuple(x.shape)}{hint}"
        )
    if tuple(x.shape[1:]) != shape:
        got = x.shape[1] if len(shape) == 1 else tuple(x.shape[1:])
        want = shape[0] if len(shape) == 1 else shape
        what = "features" if len(shape) == 1 else "as one example's shape"
        raise ValueError(
            f"x has {got} {what} but the net expects {want} "
            f"(x.shape = {tuple(x.shape)}, {_describe(net)})"
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
    k = net.n_out
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


# ---------------------------------------------------------------------------- params, state


def _same_layout(tree: Any, reference: Any) -> bool:
    """A fast look: the same tree of the same shapes (the usual case, every step)."""
    return same_structure(tree, reference, lambda a, b: getattr(a, "shape", None) == b.shape)


def check_params(net: Network, params: Any) -> Any:
    """The dtype of valid params for ``net``; raises with a structure diff otherwise."""
    template = expected_params(net)
    if not _same_layout(params, template):
        what = f"the params of {net.sizes}" if hasattr(net, "sizes") else "the params of the net"
        check_params_like("params", params, template, what)
    paths = tree_paths(params)
    first, dtype = paths[0][0], paths[0][1].dtype
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"params must be float32 or float64; params{first} is {dtype}")
    for path, leaf in paths:
        if leaf.dtype != dtype:
            raise TypeError(
                f"params must all be float32 or all float64; params{path} is {leaf.dtype} "
                f"and params{first} is {dtype}"
            )
    return dtype


def check_state(net: Network, state: Any, dtype: Any) -> Any:
    """The model state for a call: ``()`` for a net without one; the given state, checked
    against the net's, for a net with one (which must be given)."""
    if not net.keeps_state:
        if state not in (None, ()):
            raise ValueError("this net keeps no model state (no BatchNorm): pass state=() "
                             f"or nothing; got a {type(state).__name__}")
        return ()
    if state is None:
        raise ValueError("this net keeps model state (BatchNorm's running statistics): pass "
                         "state=funcnn.init_state(net) (or the state a training call "
                         "returned); the call then returns the new state last")
    template = expected_state(net, dtype)
    if not _same_layout(state, template):
        check_params_like("state", state, template, "the state of the net")
    for path, leaf in tree_paths(state):
        if leaf.dtype != dtype:
            raise TypeError(f"state{path} is {leaf.dtype}; the params are {np.dtype(dtype)}")
    return state


def check_cache(net: Network, cache: Any, dtype: Any) -> None:
    """Raise unless ``cache`` is a forward ``Cache`` of ``net`` (its dense layers' inputs
    and pre-activations, its logits) with the params' dtype."""
    if not isinstance(cache, Cache):
        raise TypeError(f"cache must be the Cache returned by funcnn.forward; got {type(cache)}")
    n = len(net.layers)
    if len(cache.layers) != n:
        sizes = f" ({net.sizes})" if hasattr(net, "sizes") else ""
        raise ValueError(
            f"cache comes from a net with {len(cache.layers)} layers, not from this net with "
            f"{n} layers{sizes}; pass the cache that funcnn.forward returned for this net"
        )
    m = cache.z.shape[0] if getattr(cache.z, "ndim", 0) == 2 else None
    shapes, mlp = layer_shapes(net), hasattr(net, "sizes")
    checks = []
    for i, c in enumerate(cache.layers):
        if isinstance(c, DenseCache):
            checks += [(f"inputs[{i}]" if mlp else f"layers[{i}].x", c.x, (m, *shapes[i])),
                       (f"zs[{i}]" if mlp else f"layers[{i}].z", c.z, (m, *shapes[i + 1]))]
    checks.append(("z", cache.z, (m, net.n_out)))
    for what, arr, want in checks:
        if tuple(arr.shape) != want:
            raise ValueError(
                f"cache.{what} has shape {tuple(arr.shape)}; this net on a batch of {m} "
                f"expects {want}; pass the cache that funcnn.forward returned for these params"
            )
    if cache.out.dtype != dtype:
        raise TypeError(
            f"cache holds {cache.out.dtype} arrays but the params are {np.dtype(dtype)}; "
            "run funcnn.forward with these params"
        )


# ---------------------------------------------------------------------------- the entry point


class Batch(NamedTuple):
    """A call's inputs after :func:`prepare`: ``x`` cast to the params' dtype and on their
    backend, ``y`` in the loss's form (``None`` when not given), ``state`` (``()`` for a
    net without one), ``noise`` (the dropout masks of a training pass, or ``None``)."""

    x: Any
    y: Any
    state: Any
    noise: Any
    dtype: Any
    backend: str


def prepare(net: Network, params: Any, x: Any, y: Any = None, *, state: Any = None,
            key: Any = None, train: bool = False, draw: bool = True) -> Batch:
    """Check a call's arguments and prepare them: the one sequence every entry point runs.

    ``draw=False`` leaves the dropout masks to the caller (the training step draws them
    for the rows of a full batch)."""
    check_net(net)
    dtype = check_params(net, params)
    backend = check_same_backend(params, x=x, y=y, state=state)
    x = check_x(net, x, dtype)
    if backend == "jax" and not is_jax_array(x):
        x = namespace("jax").asarray(x)
    if y is not None:
        y = check_y(net, y, x.shape[0], dtype)
    state = check_state(net, state, dtype)
    if train not in (True, False):
        raise TypeError(f"train must be True or False; got {train!r}")
    noise = None
    if train and net.draws:
        if key is None:
            raise ValueError("train=True with dropout needs a key (an int seed or a funcnn key)")
        if draw:
            noise = draw_noise(net, key, x.shape[0], dtype, backend)
    return Batch(x, y, state, noise, dtype, backend)


def _with_state(result: tuple, state: Any, given: Any) -> Any:
    """``result`` as it is for a call given no state, with the new state last otherwise."""
    return result if given is None else (*result, state)


def forward(net: Network, params: Params, x: Array, *, state: Any = None,
            key: Key | None = None, train: bool = False):
    """Run the net on ``x`` of shape ``(m, *in_shape)``; return ``(out, cache)``, and the
    new state last when ``state`` is given: ``(out, cache, state)``.

    ``out`` is the output activation (probabilities for softmax and sigmoid), shape
    ``(m, n_out)``. With ``train=True`` and dropout in the net, units are dropped with
    masks drawn from ``key`` (required then: ``ValueError`` without it), and BatchNorm
    normalises by the batch's statistics; otherwise nothing is dropped and BatchNorm uses
    its running statistics.
    """
    b = prepare(net, params, x, state=state, key=key, train=train)
    cache = apply(net, params, b.x, b.noise, state=b.state, train=train)
    return _with_state((cache.out, cache), cache.state, state)


def predict(net: Network, params: Params, x: Array, *, state: Any = None) -> Array:
    """The output activation on ``x`` (no dropout; BatchNorm's running statistics)."""
    b = prepare(net, params, x, state=state)
    return apply(net, params, b.x, state=b.state).out


def loss(net: Network, params: Params, x: Array, y: Array, *, state: Any = None,
         key: Key | None = None, train: bool = False):
    """The mean loss over the batch, computed from the logits in a stable fused form
    (and the new state last, as ``(loss, state)``, when ``state`` is given)."""
    b = prepare(net, params, x, y, state=state, key=key, train=train)
    cache = apply(net, params, b.x, b.noise, state=b.state, train=train)
    value = loss_from_cache(net, cache, b.y)
    return value if state is None else (value, cache.state)


def backprop(net: Network, params: Params, cache: Cache, y: Array) -> Grads:
    """Gradients of :func:`loss` w.r.t. ``params`` from a forward ``cache``; same tree as params."""
    check_net(net)
    dtype = check_params(net, params)
    check_cache(net, cache, dtype)
    check_same_backend(params, cache=cache, y=y)
    y = check_y(net, y, cache.z.shape[0], dtype)
    return backward(net, params, cache, y)


def value_and_grad(net: Network, params: Params, x: Array, y: Array, *, state: Any = None,
                   key: Key | None = None, train: bool = False):
    """``(loss, grads)`` from one forward and one backward pass (and the new state last,
    ``(loss, grads, state)``, when ``state`` is given)."""
    b = prepare(net, params, x, y, state=state, key=key, train=train)
    cache = apply(net, params, b.x, b.noise, state=b.state, train=train)
    result = (loss_from_cache(net, cache, b.y), backward(net, params, cache, b.y))
    return _with_state(result, cache.state, state)
