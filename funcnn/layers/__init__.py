"""Layers beyond the MLP's dense ones, each with its backward pass written by hand.

Every layer is a frozen, hashable spec (a static argument of ``jax.jit``) with three
pure functions, the same code on NumPy and jax.numpy::

    params, state, out_shape = layer.init(key, in_shape, dtype="float32")
    y, cache, new_state      = layer.forward(params, state, x, train=True, key=key)
    grads, dx                = layer.backward(params, cache, dy)
    grads, dx                = layer.backward_per_example(params, cache, dy)

``in_shape`` is one example's shape (no batch axis); images are channels-last
``(H, W, C)``. ``params`` and ``state`` are NamedTuples of arrays (``()`` when a layer
has none: only ``BatchNorm`` has state, its running statistics); ``grads`` has the
structure of ``params``; ``dx`` is the gradient with respect to ``x``.
``backward_per_example`` takes ``dy`` whose row ``i`` is the gradient of example ``i``'s
own loss and gives each example's gradients: every leaf of ``grads`` gains a leading
batch axis (``PerExampleError`` for BatchNorm in training, whose batch statistics tie
the examples together). For example::

    net = Serial([Conv2D(32, 3, padding="same"), Activation("relu"), MaxPool2D(2),
                  Flatten(), Dense(10)])
    params, state, out_shape = net.init(0, (28, 28, 1))      # out_shape == (10,)
    y, cache, state = net.forward(params, state, x, train=True, key=1)
    grads, dx = net.backward(params, cache, dy)

``funcnn.testing.check_layer`` checks a layer's backward pass against ``jax.grad``;
``docs/backprop.md`` derives each one.
"""

from funcnn.layers._base import InitializerError as InitializerError
from funcnn.layers._base import Layer as Layer
from funcnn.layers._base import PerExampleError as PerExampleError
from funcnn.layers._base import ShapeError as ShapeError
from funcnn.layers._conv import Conv2D as Conv2D
from funcnn.layers._conv import Conv2DParams as Conv2DParams
from funcnn.layers._dense import Dense as Dense
from funcnn.layers._dense import DenseCache as DenseCache
from funcnn.layers._dense import DenseParams as DenseParams
from funcnn.layers._flatten import Flatten as Flatten
from funcnn.layers._norm import BatchNorm as BatchNorm
from funcnn.layers._norm import BatchNormState as BatchNormState
from funcnn.layers._norm import LayerNorm as LayerNorm
from funcnn.layers._norm import NormParams as NormParams
from funcnn.layers._pointwise import Activation as Activation
from funcnn.layers._pointwise import Dropout as Dropout
from funcnn.layers._pool import AvgPool2D as AvgPool2D
from funcnn.layers._pool import MaxPool2D as MaxPool2D
from funcnn.layers._stack import Residual as Residual
from funcnn.layers._stack import Serial as Serial

__all__ = [
    "Activation",
    "AvgPool2D",
    "BatchNorm",
    "BatchNormState",
    "Conv2D",
    "Conv2DParams",
    "Dense",
    "DenseCache",
    "DenseParams",
    "Dropout",
    "Flatten",
    "InitializerError",
    "Layer",
    "LayerNorm",
    "MaxPool2D",
    "NormParams",
    "PerExampleError",
    "Residual",
    "Serial",
    "ShapeError",
]
