"""What every layer shares: the protocol of three pure functions, and shape errors that
name the layer, where it sits in its stack and the shapes.

A layer is a frozen, hashable dataclass (a static argument of ``jax.jit``) with::

    init(key, in_shape, dtype="float32", *, backend=None) -> (params, state, out_shape)
    forward(params, state, x, *, train, key=None)         -> (y, cache, new_state)
    backward(params, cache, dy)                           -> (grads, dx)
    backward_params(params, cache, dy)                    -> grads   (dx not needed)
    backward_per_example(params, cache, dy)               -> (grads, dx)
    backward_sq_norms(params, cache, dy)                  -> (sq_norms, dx)

``in_shape`` and ``out_shape`` leave out the batch axis; ``x`` is ``(m, *in_shape)``.
``params`` is a NamedTuple of arrays (``()`` without parameters), ``state`` a NamedTuple
(``()`` for every layer but ``BatchNorm``), ``grads`` has the structure of ``params`` and
``dx`` the shape of ``x``. Nothing is kept between calls: what the backward pass needs
travels in ``cache``, the running statistics in ``state``.

``backward_per_example`` takes ``dy`` whose row ``i`` is the gradient of example ``i``'s
own loss and returns each example's parameter gradients: every leaf of ``grads`` gains a
leading axis ``m`` (``grads.W[i]`` is example ``i``'s), ``dx`` is ``backward``'s. It exists
when each output row depends on its own input row alone; ``BatchNorm`` in training
(batch statistics) raises ``PerExampleError``. ``backward_sq_norms`` gives each example's
squared gradient norm over the layer's parameters, ``(m,)``, without forming a
per-example weight gradient where a cheaper form exists (Dense, Conv2D).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from funcnn import random
from funcnn.backend import (
    array_namespace,
    concrete_value,
    float_dtype,
    get_backend,
    is_jax_array,
    to_backend,
)
from funcnn.initializers import initialize
from funcnn.tree import tree_leaves

__all__ = ["InitializerError", "Layer", "PerExampleError", "ShapeError"]


class ShapeError(ValueError):
    """A layer cannot take its input's shape (or channels, or dtype).

    The message names the layer, its place in the stack (``layers[2].layers[0]``: the
    first layer of the block at index 2), the input shape ``(m, ...)`` and what was
    expected. ``path`` is that place, ``""`` for a layer used on its own.
    """

    def __init__(self, layer: Any, in_shape: tuple, problem: str, path: str = ""):
        super().__init__(layer, tuple(in_shape), problem, path)
        self.layer, self.in_shape, self.problem, self.path = layer, tuple(in_shape), problem, path

    def __str__(self) -> str:
        where = f"layers{self.path}: " if self.path else ""
        dims = ", ".join(str(d) for d in ("m", *self.in_shape))
        return f"{where}{self.layer!r} on inputs of shape ({dims}): {self.problem}"

    def inside(self, index: int) -> ShapeError:
        """The same error seen from the stack that holds this layer at ``index``."""
        return ShapeError(self.layer, self.in_shape, self.problem, _nested(index, self.path))


class PerExampleError(ValueError):
    """A layer has no per-example gradients: an example's gradient depends on the other
    examples of the batch (``BatchNorm`` in training, normalising by the batch's own
    statistics). The message names the layer, its place in the stack (as
    :class:`ShapeError`'s), why, and what to use instead. ``path`` is that place."""

    def __init__(self, layer: Any, problem: str, path: str = ""):
        super().__init__(layer, problem, path)
        self.layer, self.problem, self.path = layer, problem, path

    def __str__(self) -> str:
        where = f"layers{self.path}: " if self.path else ""
        return f"{where}{self.layer!r} has no per-example gradients: {self.problem}"

    def inside(self, index: int) -> PerExampleError:
        """The same error seen from the stack that holds this layer at ``index``."""
        return PerExampleError(self.layer, self.problem, _nested(index, self.path))


def _nested(index: int, path: str) -> str:
    """The place ``path`` (``""``: the layer itself) inside the stack's layer ``index``."""
    return f"[{index}]" if not path else f"[{index}].layers{path}"


class InitializerError(ValueError):
    """An initializer returned a weight of the wrong shape, dtype or backend; ``leaf`` is
    the parameter's field (``"W"``), and the message says what was expected."""

    def __init__(self, leaf: str, problem: str, where: str = ""):
        super().__init__(leaf, problem, where)
        self.leaf, self.problem, self.where = leaf, problem, where

    def __str__(self) -> str:
        return f"{self.where or 'params'}.{self.leaf}: {self.problem}"


class Layer:
    """The base of every layer: the protocol above; no parameters and no state by default.

    Two class attributes tell a network what a layer does besides its maths: ``draws``,
    whether ``forward(train=True)`` draws randomness (dropout: it then needs a key), and
    ``couples_rows``, whether in training one example's output depends on the other rows
    of the batch (``BatchNorm``: a padded batch would change its statistics, and its
    gradients are not per-example), and ``keeps_state``, whether it has model state.
    """

    draws = False
    couples_rows = False
    keeps_state = False

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for ``in_shape`` (batch axis excluded); ``ShapeError`` if unfit."""
        raise NotImplementedError

    def init(self, key: Any, in_shape: tuple[int, ...], dtype: Any = "float32", *,
             backend: str | None = None) -> tuple[Any, Any, tuple[int, ...]]:
        """``(params, state, out_shape)``: here ``((), (), out_shape)``."""
        return (), (), self.output_shape(check_in_shape(in_shape))

    def forward(self, params: Any, state: Any, x: Any, *, train: bool, key: Any = None):
        """``(y, cache, new_state)`` for ``x`` of shape ``(m, *in_shape)``."""
        raise NotImplementedError

    def backward(self, params: Any, cache: Any, dy: Any):
        """``(grads, dx)`` from the cache of :meth:`forward` and ``dy = dL/dy``."""
        raise NotImplementedError

    def backward_params(self, params: Any, cache: Any, dy: Any):
        """``grads`` alone: for the first layer of a net, whose ``dx`` nobody needs (a
        layer with a costly ``dx``, such as ``Dense`` and ``Conv2D``, skips it)."""
        return self.backward(params, cache, dy)[0]

    def backward_per_example(self, params: Any, cache: Any, dy: Any):
        """``(grads, dx)`` with each leaf of ``grads`` per example, ``(m, *leaf.shape)``:
        ``dy``'s row ``i`` is the gradient of example ``i``'s own loss, and ``grads``'s
        row ``i`` that example's parameter gradient. ``dx`` is :meth:`backward`'s.

        Here, for a layer without parameters: ``((), dx)`` of :meth:`backward`. A layer
        with parameters defines its own.
        """
        if params != ():
            raise NotImplementedError(f"{self!r} has parameters but no backward_per_example")
        return self.backward(params, cache, dy)

    def backward_sq_norms(self, params: Any, cache: Any, dy: Any):
        """``(sq_norms, dx)``: ``sq_norms[i]`` the squared norm of example ``i``'s gradient
        over all of this layer's parameters, ``(m,)`` in ``dy``'s dtype (``dy`` as for
        :meth:`backward_per_example`); ``dx`` is :meth:`backward`'s.

        Here the sum of the squares of :meth:`backward_per_example`'s grads (zeros without
        parameters). The squares are not scaled: in float32 a norm beyond about ``1e19``
        overflows to ``inf``.
        """
        grads, dx = self.backward_per_example(params, cache, dy)
        xp = array_namespace(dy)
        sq = xp.zeros(dy.shape[:1], dy.dtype)
        for g in tree_leaves(grads):
            sq = sq + (g * g).reshape(g.shape[0], -1).sum(axis=1)
        return sq, dx


def check_layers(owner: str, layers: Any) -> tuple:
    """``layers`` as a tuple, after checking it is a non-empty list or tuple of layers."""
    if not isinstance(layers, tuple | list) or not layers:
        raise TypeError(f"{owner} takes a non-empty list or tuple of layers; got {layers!r}")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{owner} layers[{i}] is a {type(layer).__name__}, not a layer "
                            "of funcnn.layers")
    return tuple(layers)


def check_in_shape(in_shape: Any) -> tuple[int, ...]:
    """``in_shape`` as a tuple of positive ints (the batch axis excluded)."""
    dims = tuple(in_shape) if isinstance(in_shape, tuple | list) else None
    if not dims or not all(_is_int(d) and d > 0 for d in dims):
        raise ValueError(
            "in_shape must be a non-empty tuple of positive ints, the shape of one example "
            f"without the batch axis, e.g. (28, 28, 1); got {in_shape!r}"
        )
    return tuple(int(d) for d in dims)


def init_context(key: Any, dtype: Any, backend: str | None):
    """``(key, dtype, backend)`` for an ``init``: the backend is ``backend``, else a jax
    key's, else the default; the key on that backend; ``dtype`` float32 or float64."""
    if backend is None and is_jax_array(key):
        backend = "jax"
    backend = get_backend(backend)
    return random.as_key(key, backend), float_dtype(dtype, backend), backend


def he_normal(key: Any, shape: tuple[int, int], dtype: Any, backend: str) -> Any:
    """A He-normal ``(fan_in, fan_out)`` matrix on ``backend``. A jax key known outside a
    trace draws on the host (NumPy's threefry: jax's numbers, normal draws within 4 ulp)
    and moves the result, as ``funcnn.init_params`` does: no sampler compiled per shape."""
    if backend == "jax":
        words = concrete_value(key)
        if words is not None:
            host = initialize("he_normal", random.as_key(words, "numpy"), shape, dtype)
            return to_backend(host, "jax")
    return initialize("he_normal", key, shape, dtype)


def positive_pair(layer_name: str, field: str, value: Any) -> tuple[int, int]:
    """An int or a pair of ints, all positive, as a pair ``(rows, columns)``."""
    pair = (value, value) if _is_int(value) else value
    if not (isinstance(pair, tuple | list) and len(pair) == 2
            and all(_is_int(v) and v > 0 for v in pair)):
        raise ValueError(f"{layer_name} {field} must be a positive int or a pair of them; "
                         f"got {value!r}")
    return int(pair[0]), int(pair[1])


def check_input(layer: Layer, x: Any, rank: int, what: str) -> None:
    """``ShapeError`` unless ``x`` has ``rank`` axes (batch included)."""
    if getattr(x, "ndim", None) != rank:
        shape = tuple(getattr(x, "shape", ()))
        raise ShapeError(layer, shape[1:],
                         f"expects {rank}-D inputs of shape {what}; got {len(shape)}-D ones")


def check_dtype(layer: Layer, x: Any, leaf: Any, name: str) -> None:
    """``ShapeError`` unless ``x`` has the dtype of the parameter ``leaf``: a float32 input
    with float64 params would silently compute in float64 on NumPy."""
    if x.dtype != leaf.dtype:
        raise ShapeError(layer, x.shape[1:], f"x is {x.dtype} but params.{name} is "
                         f"{leaf.dtype}; cast one to the other (funcnn never promotes)")


def broadcast_last(v: Any, ndim: int) -> Any:
    """A per-feature vector ``(n,)`` as ``(1, ..., 1, n)`` of rank ``ndim`` (an explicit
    broadcast: jax's strict rank promotion refuses an implicit one)."""
    return v.reshape((1,) * (ndim - 1) + tuple(v.shape))


def check_probability(what: str, p: Any, unit: str = "a unit") -> float:
    """A dropout probability as a float in ``[0, 1)``."""
    real = isinstance(p, int | float | np.integer | np.floating)
    if isinstance(p, bool | np.bool_) or not real or not 0 <= p < 1:
        raise ValueError(f"{what} is the probability of dropping {unit}, in [0, 1); got {p!r}")
    return float(p)


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)
