"""Layers made of layers: a stack run one after the other, and a residual block.

``Serial(layers)`` runs its layers in order; its params, state and cache are tuples with
one entry per layer, and its backward pass runs them in reverse, each layer's ``dx``
the next one's ``dy``. ``Residual(layers)`` adds the block's input to its output::

    y  = x + f(x)          f: the layers in order; f(x) must keep the shape of x
    dx = dy + df(dy)       df: f's backward pass, its grads f's grads

Per example the same: ``backward_per_example`` runs each layer's per-example pass in
reverse (``backward_sq_norms`` too, adding the layers' squared norms); a layer without
per-example gradients (BatchNorm in training) raises ``PerExampleError`` naming its
place, as ``layers[2].layers[0]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from funcnn import random
from funcnn.layers._base import (
    Layer,
    PerExampleError,
    ShapeError,
    check_in_shape,
    check_layers,
    init_context,
)

__all__ = ["Residual", "Serial"]


@dataclass(frozen=True)
class Serial(Layer):
    """The layers one after the other (a list or tuple of layers, at least one).

    ``init`` splits its key into one per layer; ``forward`` splits its ``key`` (when
    given, for dropout) the same way. A shape that does not fit raises ``ShapeError``
    naming the layer and its place, e.g. ``layers[3]`` or ``layers[2].layers[0]``.
    """

    layers: tuple[Layer, ...]

    def __post_init__(self):
        object.__setattr__(self, "layers", check_layers(type(self).__name__, self.layers))

    @property
    def draws(self) -> bool:
        return any(layer.draws for layer in self.layers)

    @property
    def couples_rows(self) -> bool:
        return any(layer.couples_rows for layer in self.layers)

    @property
    def keeps_state(self) -> bool:
        return any(layer.keeps_state for layer in self.layers)

    def output_shape(self, in_shape):
        shape = tuple(in_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ShapeError as err:
                raise err.inside(i) from None
        return shape

    def init(self, key, in_shape, dtype="float32", *, backend=None):
        shape = check_in_shape(in_shape)
        self.output_shape(shape)  # every shape error before any random draw
        key, dtype, backend = init_context(key, dtype, backend)
        params, state = [], []
        for layer, k in zip(self.layers, random.split(key, len(self.layers)), strict=True):
            p, s, shape = layer.init(k, shape, dtype, backend=backend)
            params.append(p)
            state.append(s)
        return tuple(params), tuple(state), shape

    def forward(self, params, state, x, *, train, key=None):
        n = len(self.layers)
        state = state or ((),) * n  # a net without model state passes ()
        if len(params) != n or len(state) != n:
            raise ValueError(f"a {type(self).__name__} of {n} layers needs {n} params and "
                             f"{n} states; got {len(params)} and {len(state)}")
        keys = random.split(key, n) if train and key is not None else (None,) * n
        caches, states = [], []
        for i, layer in enumerate(self.layers):
            try:
                x, cache, s = layer.forward(params[i], state[i], x, train=train, key=keys[i])
            except ShapeError as err:
                raise err.inside(i) from None
            caches.append(cache)
            states.append(s)
        return x, tuple(caches), tuple(states)

    def backward(self, params, cache, dy):
        grads = [None] * len(self.layers)
        for i in range(len(self.layers) - 1, -1, -1):
            grads[i], dy = self.layers[i].backward(params[i], cache[i], dy)  # dx: the next dy
        return tuple(grads), dy

    def backward_params(self, params, cache, dy):
        grads = [None] * len(self.layers)
        for i in range(len(self.layers) - 1, 0, -1):
            grads[i], dy = self.layers[i].backward(params[i], cache[i], dy)
        grads[0] = self.layers[0].backward_params(params[0], cache[0], dy)
        return tuple(grads)

    def backward_per_example(self, params, cache, dy):
        grads, dx = self._reverse("backward_per_example", params, cache, dy)
        return tuple(grads), dx

    def backward_sq_norms(self, params, cache, dy):
        sq, dx = self._reverse("backward_sq_norms", params, cache, dy)
        return sum(sq[1:], sq[0]), dx                          # (m,): over every layer

    def _reverse(self, method, params, cache, dy):
        """``([out_0, out_1, ...], dx)``: each layer's ``method(params, cache, dy) ->
        (out, dx)`` from the last layer to the first, a layer's ``dx`` the next one's
        ``dy``; a ``PerExampleError`` names the layer's place."""
        outs = [None] * len(self.layers)
        for i in range(len(self.layers) - 1, -1, -1):
            try:
                outs[i], dy = getattr(self.layers[i], method)(params[i], cache[i], dy)
            except PerExampleError as err:
                raise err.inside(i) from None
        return outs, dy


@dataclass(frozen=True)
class Residual(Serial):
    """``y = x + f(x)``, ``f`` the ``layers`` in order (as :class:`Serial`); ``f`` must
    keep the shape of its input (a ``ShapeError`` says what it maps it to otherwise).
    Params, state and cache are those of the stack ``f``."""

    def output_shape(self, in_shape):
        out = super().output_shape(in_shape)
        if out != tuple(in_shape):
            raise ShapeError(self, in_shape, f"its layers map {tuple(in_shape)} to {out}; "
                             "x + f(x) needs f to keep the shape of x")
        return out

    def forward(self, params, state, x, *, train, key=None):
        fx, cache, state = super().forward(params, state, x, train=train, key=key)
        if fx.shape != x.shape:
            raise ShapeError(self, x.shape[1:], f"its layers map {x.shape[1:]} to "
                             f"{fx.shape[1:]}; x + f(x) needs f to keep the shape of x")
        return x + fx, cache, state

    def backward(self, params, cache, dy):
        grads, dfx = super().backward(params, cache, dy)
        return grads, dy + dfx                                  # the skip, plus through f

    def backward_params(self, params, cache, dy):
        return super().backward(params, cache, dy)[0]

    def backward_per_example(self, params, cache, dy):
        grads, dfx = super().backward_per_example(params, cache, dy)
        return grads, dy + dfx                                  # the skip, plus through f

    def backward_sq_norms(self, params, cache, dy):
        sq, dfx = super().backward_sq_norms(params, cache, dy)
        return sq, dy + dfx                                     # the skip, plus through f
