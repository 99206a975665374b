"""The multilayer perceptron: the short way to write a stack of dense layers.

``MLP(sizes, hidden, output, loss, dropout)`` is a net (:mod:`funcnn.network`) whose
layers are ``Dense(n, activation=hidden, dropout=dropout)`` for each hidden width and a
plain ``Dense(n_out)`` for the logits; it runs the one forward and backward pass every
net runs. Its params are a tuple of ``Dense(W, b)``, one per layer. In the notation of
``docs/backprop.md`` (0-based, for layer ``l = 0 .. L-1`` on a batch of ``m`` rows)::

    inputs[0]   = x                          (m, n_0)
    zs[l]       = inputs[l] @ W[l] + b[l]    (m, n_{l+1});  W[l]: (n_l, n_{l+1}), b[l]: (n_{l+1},)
    hidden[l]   = g(zs[l])                   hidden layers, l < L-1
    inputs[l+1] = hidden[l] * masks[l]       inverted dropout: 0 or 1/(1-p) (no mask: as is)
    out         = f(zs[L-1])                 output activation (softmax, sigmoid, ...)

and the backward pass, the exact gradient of the mean loss::

    dz    = dL/dzs[L-1]                  fused with the loss, e.g. (p - Y) / m
    dW[l] = inputs[l].T @ dz             (n_l, n_{l+1})
    db[l] = dz.sum(axis=0)               (n_{l+1},)
    da    = dz @ W[l].T * masks[l-1]     (m, n_l): into the layer below
    dz    = da * g'(zs[l-1])             and on to layer l-1

(each step is a line of ``funcnn.layers.Dense``'s backward pass).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from funcnn.activations import ACTIVATIONS, Activation
from funcnn.initializers import default_initializer
from funcnn.layers import Dense as DenseLayer
from funcnn.layers import DenseParams
from funcnn.layers._base import check_probability
from funcnn.losses import Loss
from funcnn.network import Network, builtin_or_custom, check_head

__all__ = ["MLP", "Dense"]

Dense = DenseParams
"""One layer's parameters: ``W`` of shape ``(n_in, n_out)`` and ``b`` of shape ``(n_out,)``
(``funcnn.layers.DenseParams``)."""


@dataclass(frozen=True)
class MLP(Network):
    """A frozen, hashable network spec (usable as a static argument of ``jax.jit``).

    Args:
      sizes: layer widths ``(n_in, n_hidden..., n_out)``, at least two.
      hidden: activation of the hidden layers: a name from
        ``funcnn.activations.ACTIVATIONS`` or an ``Activation(name, fn, grad)`` of your own.
      output: output activation: ``softmax``, or any hidden one (by name or object).
      loss: ``cross_entropy``, ``binary_cross_entropy``, ``mse`` or a ``Loss`` of your own;
        by default softmax -> cross-entropy, sigmoid -> binary cross-entropy, else MSE.
      dropout: probability of dropping a hidden unit while training, in ``[0, 1)``.

    Built-in pieces are stored by name (``MLP(hidden=ACTIVATIONS["tanh"]).hidden`` is
    ``"tanh"``); custom ones as the objects, so equal specs hash equal. ``net.layers``
    is the same net written with :mod:`funcnn.layers`.
    """

    sizes: tuple[int, ...]
    hidden: str | Activation = "relu"
    output: str | Activation = "softmax"
    loss: str | Loss | None = None
    dropout: float = 0.0

    def __post_init__(self):
        sizes = self.sizes
        if isinstance(sizes, str) or not hasattr(sizes, "__iter__"):
            raise TypeError(f"sizes must be a sequence of layer widths; got {sizes!r}")
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least an input and an output width; got {sizes}")
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, int | np.integer) or s <= 0:
                raise ValueError(f"layer widths must be positive integers; got {sizes}")
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))
        object.__setattr__(self, "hidden", builtin_or_custom(self.hidden, ACTIVATIONS))
        output, loss = check_head(self.output, self.loss, self.sizes[-1])
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "dropout", check_probability("dropout", self.dropout))

    @property
    def n_layers(self) -> int:
        """The number of weight layers, ``len(sizes) - 1``."""
        return len(self.sizes) - 1

    @property
    def in_shape(self) -> tuple[int]:
        return (self.sizes[0],)

    @property
    def n_out(self) -> int:
        return self.sizes[-1]

    @property
    def layers(self) -> tuple:
        """The dense layers of this net (``funcnn.layers.Dense``), one per weight layer."""
        return _layers(self, None)

    def stack(self, init: Any = None) -> tuple:
        return _layers(self, init)


@functools.cache
def _layers(net: MLP, init: Any) -> tuple:
    init = default_initializer(net.hidden) if init is None else init
    last = net.n_layers - 1
    return tuple(
        DenseLayer(n, activation=None if l == last else net.hidden,
                   dropout=0.0 if l == last else net.dropout, kernel_init=init)
        for l, n in enumerate(net.sizes[1:])
    )
