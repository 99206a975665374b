"""Layers that act element by element: an activation and inverted dropout.

Each output element depends on the input element at the same place only, so the
backward pass is an elementwise product::

    Activation:  y = g(x)              dx = dy * g'(x)      (g' from the activation's pair)
    Dropout:     y = x * mask          dx = dy * mask       mask: 0 or 1/(1-p), from the key
"""

from __future__ import annotations

from dataclasses import dataclass

from funcnn import activations, random
from funcnn.backend import is_jax_array
from funcnn.layers._base import Layer, check_probability

__all__ = ["Activation", "Dropout"]


@dataclass(frozen=True)
class Activation(Layer):
    """An elementwise activation on inputs of any shape.

    ``activation`` is a name from ``funcnn.activations.ACTIVATIONS`` or a
    ``funcnn.activations.Activation(name, fn, grad)`` of your own; built-in ones are
    stored by name, so equal layers hash equal. Softmax is not elementwise: it belongs
    with the loss, as in ``MLP(output="softmax")``.
    """

    activation: str | activations.Activation = "relu"

    def __post_init__(self):
        act = activations.get_activation(self.activation)
        object.__setattr__(self, "activation",
                           act.name if act.name in activations.ACTIVATIONS else act)

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def forward(self, params, state, x, *, train, key=None):
        a = activations.get_activation(self.activation).fn(x)
        return a, (x, a), state

    def backward(self, params, cache, dy):
        x, a = cache
        return (), dy * activations.get_activation(self.activation).grad(x, a)


@dataclass(frozen=True)
class Dropout(Layer):
    """Inverted dropout: while training, each element is dropped with probability ``p``
    and the kept ones are scaled by ``1 / (1 - p)``; in evaluation it is the identity.

    The mask is ``funcnn.random.bernoulli(key, 1 - p, x.shape)`` (as the MLP draws its
    masks), the same on NumPy and jax for one key. ``forward`` needs a ``key`` when
    ``train=True`` and ``p > 0``.
    """

    p: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "p", check_probability("Dropout p", self.p, "an element"))

    @property
    def draws(self) -> bool:
        return self.p > 0

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def draw_mask(self, key, m, dtype, backend, shape):
        """The scaled mask ``(m, *shape)`` (``shape``: one example's): 0 or ``1 / (1 - p)``."""
        keep = 1.0 - self.p
        key = random.as_key(key, backend)
        return random.bernoulli(key, keep, (m, *shape)).astype(dtype) * (1.0 / keep)

    def forward(self, params, state, x, *, train, key=None, mask=None):
        """``mask``: a mask drawn already (``draw_mask``), used instead of ``key`` (also
        with ``train=False``: a gradient check replays a training pass's masks)."""
        if mask is not None:
            return x * mask, mask, state
        if not train or self.p == 0.0:
            return x, None, state
        if key is None:
            raise ValueError(f"{self!r} with train=True needs a key (an int seed or a "
                             "funcnn.random key)")
        mask = self.draw_mask(key, x.shape[0], x.dtype, "jax" if is_jax_array(x) else "numpy",
                              x.shape[1:])
        return x * mask, mask, state

    def backward(self, params, cache, dy):
        mask = cache
        return (), dy if mask is None else dy * mask
