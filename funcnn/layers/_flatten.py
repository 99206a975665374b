"""Flatten: ``(m, d1, d2, ...)`` to ``(m, d1 * d2 * ...)`` in row-major order; its
backward pass puts ``dy`` back into the input's shape."""

from __future__ import annotations

import math
from dataclasses import dataclass

from funcnn.layers._base import Layer

__all__ = ["Flatten"]


@dataclass(frozen=True)
class Flatten(Layer):
    """Each example as one row of features, row-major (the last axis varies fastest, as
    ``numpy.reshape`` and Keras's ``Flatten`` on channels-last images)."""

    def output_shape(self, in_shape):
        return (math.prod(in_shape),)

    def forward(self, params, state, x, *, train, key=None):
        return x.reshape(x.shape[0], -1), x, state  # the cache is the input, for its shape

    def backward(self, params, cache, dy):
        return (), dy.reshape(cache.shape)
