"""The dense layer, ``y = x @ W + b``, beside its backward pass::

    y  = x @ W + b          (m, n_out);  W: (n_in, n_out), b: (n_out,)
    dW = x.T @ dy           (n_in, n_out)
    db = dy.sum(axis=0)     (n_out,)
    dx = dy @ W.T           (m, n_in)

Per example (``dy``'s row ``i`` the gradient of example ``i``'s own loss), ``dW`` is a
sum of outer products, one per example::

    dW[i] = outer(x[i], dy[i])    (m, n_in, n_out)     sum_i dW[i] = x.T @ dy
    db[i] = dy[i]                 (m, n_out)
    ||dW[i]||^2 + ||db[i]||^2 = (||x[i]||^2 + 1) ||dy[i]||^2    (||outer(a, d)|| = ||a|| ||d||)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from funcnn.backend import array_namespace, namespace
from funcnn.layers._base import (
    Layer,
    ShapeError,
    _is_int,
    check_dtype,
    check_in_shape,
    he_normal,
    init_context,
)

__all__ = ["Dense", "DenseParams"]


class DenseParams(NamedTuple):
    """A dense layer's parameters: ``W`` of shape ``(n_in, n_out)`` and ``b`` of shape
    ``(n_out,)`` (``None`` for ``Dense(n_out, bias=False)``)."""

    W: Any
    b: Any


@dataclass(frozen=True)
class Dense(Layer):
    """A fully connected layer on flat inputs ``(m, n_in)``: ``y = x @ W + b``, ``(m, n_out)``.

    Initialised as funcnn's MLP initialises a ReLU net: ``W`` He-normal (standard deviation
    ``sqrt(2 / n_in)``), ``b`` zero. Elsewhere: PyTorch's ``nn.Linear`` draws ``W`` and
    ``b`` from ``U(-1/sqrt(n_in), 1/sqrt(n_in))``, flax's ``Dense`` uses LeCun-normal,
    Keras's Glorot-uniform (both with zero biases).

    Args:
      n_out: the number of output features.
      bias: whether to add the bias ``b``.
    """

    n_out: int
    bias: bool = True

    def __post_init__(self):
        if not _is_int(self.n_out) or self.n_out <= 0:
            raise ValueError(f"Dense n_out must be a positive int; got {self.n_out!r}")
        if not isinstance(self.bias, bool):
            raise TypeError(f"Dense bias must be True or False; got {self.bias!r}")
        object.__setattr__(self, "n_out", int(self.n_out))

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            hint = "; put a Flatten() before it" if len(in_shape) > 1 else ""
            raise ShapeError(self, in_shape, f"expects flat inputs of shape (m, n_in){hint}")
        return (self.n_out,)

    def init(self, key, in_shape, dtype="float32", *, backend=None):
        in_shape = check_in_shape(in_shape)
        out_shape = self.output_shape(in_shape)
        key, dtype, backend = init_context(key, dtype, backend)
        W = he_normal(key, (in_shape[0], self.n_out), dtype, backend)
        b = namespace(backend).zeros((self.n_out,), dtype) if self.bias else None
        return DenseParams(W, b), (), out_shape

    def forward(self, params, state, x, *, train, key=None):
        self.output_shape(x.shape[1:])
        if x.shape[1] != params.W.shape[0]:
            raise ShapeError(self, x.shape[1:], f"expects {params.W.shape[0]} input features "
                             f"(params.W has shape {params.W.shape}); got {x.shape[1]}")
        check_dtype(self, x, params.W, "W")
        y = x @ params.W                               # (m, n_out)
        if params.b is not None:
            y = y + params.b[None, :]
        return y, x, state

    def backward(self, params, cache, dy):
        x = cache
        dW = x.T @ dy                                  # (n_in, n_out)
        db = None if params.b is None else dy.sum(axis=0)  # (n_out,)
        dx = dy @ params.W.T                           # (m, n_in)
        return DenseParams(dW, db), dx

    def backward_per_example(self, params, cache, dy):
        x = cache
        dW = array_namespace(dy).einsum("mi,mo->mio", x, dy)  # (m, n_in, n_out)
        db = None if params.b is None else dy               # (m, n_out)
        dx = dy @ params.W.T                                # (m, n_in)
        return DenseParams(dW, db), dx

    def backward_sq_norms(self, params, cache, dy):
        x = cache
        dy2 = (dy * dy).sum(axis=1)                          # (m,): ||dy[i]||^2
        sq = (x * x).sum(axis=1) * dy2                       # (m,): ||outer(x[i], dy[i])||^2
        if params.b is not None:
            sq = sq + dy2
        return sq, dy @ params.W.T                           # dx: (m, n_in)
