"""The dense layer, ``y = x @ W + b`` (then an optional activation and dropout), beside
its backward pass; the MLP is a stack of these.

Per example (``dy``'s row ``i`` the gradient of example ``i``'s own loss, ``dz`` as in
the backward pass), ``dW`` is a sum of outer products, one per example::

    dW[i] = outer(x[i], dz[i])    (m, n_in, n_out)     sum_i dW[i] = x.T @ dz
    db[i] = dz[i]                 (m, n_out)
    ||dW[i]||^2 + ||db[i]||^2 = (||x[i]||^2 + 1) ||dz[i]||^2    (||outer(a, d)|| = ||a|| ||d||)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from funcnn import _fused, activations, random
from funcnn.backend import array_namespace, is_jax_array, namespace
from funcnn.initializers import default_initializer, get_initializer, initialize
from funcnn.layers._base import (
    InitializerError,
    Layer,
    ShapeError,
    _is_int,
    check_dtype,
    check_in_shape,
    check_probability,
    he_normal,
    init_context,
)

__all__ = ["Dense", "DenseCache", "DenseParams"]


class DenseParams(NamedTuple):
    """A dense layer's parameters: ``W`` of shape ``(n_in, n_out)`` and ``b`` of shape
    ``(n_out,)`` (``None`` for ``Dense(n_out, bias=False)``). ``funcnn.Dense`` is this
    class: an MLP's params are a tuple of them."""

    W: Any
    b: Any


class DenseCache(NamedTuple):
    """What the backward pass needs: the input ``x``, the pre-activation ``z``, the
    activation ``a = g(z)`` (``None`` without one) and the scaled dropout mask (``None``
    without dropout)."""

    x: Any
    z: Any
    a: Any
    mask: Any


@dataclass(frozen=True)
class Dense(Layer):
    """A fully connected layer on flat inputs ``(m, n_in)``, optionally followed by an
    activation and inverted dropout, as Keras's ``Dense(n, activation=...)``::

        z = x @ W + b          (m, n_out);  W: (n_in, n_out), b: (n_out,)
        a = g(z)               the activation, if any
        y = a * mask           while training with dropout: mask 0 or 1/(1-p)

    and its backward pass, from ``dy = dL/dy``::

        dz = dy * mask * g'(z, a)      (m, n_out)
        dW = x.T @ dz                  (n_in, n_out)
        db = dz.sum(axis=0)            (n_out,)
        dx = dz @ W.T                  (m, n_in)

    The activation and dropout live in the layer so that ``funcnn.MLP``, a stack of these,
    keeps its params (one ``DenseParams`` per layer) and its speed (the bias added in
    place on NumPy). ``Dense(n) , Activation(g), Dropout(p)`` computes the same.

    Initialised with ``kernel_init`` (``funcnn.initializers``: a name or a callable ``(key,
    shape, dtype)``; by default He-normal, standard deviation ``sqrt(2 / n_in)``, and
    Glorot for a tanh, sigmoid or identity activation, as the MLP chooses), ``b`` zero.
    Elsewhere: PyTorch's ``nn.Linear`` draws ``W`` and ``b`` from ``U(-1/sqrt(n_in),
    1/sqrt(n_in))``, flax's ``Dense`` uses LeCun-normal, Keras's Glorot-uniform (both with
    zero biases).

    Args:
      n_out: the number of output features.
      bias: whether to add the bias ``b``.
      activation: ``None``, a name from ``funcnn.activations.ACTIVATIONS`` or an
        ``Activation`` of your own (softmax belongs with the loss: ``Net(output=...)``).
      dropout: the probability of dropping an output while training, in ``[0, 1)``.
      kernel_init: the initializer of ``W`` (``None``: the default above; flax's name).
    """

    n_out: int
    bias: bool = True
    activation: Any = None
    dropout: float = 0.0
    kernel_init: Any = None

    def __post_init__(self):
        if not _is_int(self.n_out) or self.n_out <= 0:
            raise ValueError(f"Dense n_out must be a positive int; got {self.n_out!r}")
        if not isinstance(self.bias, bool):
            raise TypeError(f"Dense bias must be True or False; got {self.bias!r}")
        object.__setattr__(self, "n_out", int(self.n_out))
        if self.activation is not None:
            act = activations.get_activation(self.activation)
            object.__setattr__(self, "activation",
                               act.name if act.name in activations.ACTIVATIONS else act)
        object.__setattr__(self, "dropout", check_probability("Dense dropout", self.dropout))
        init = self.kernel_init
        if init is None:
            init = "he_normal" if self.activation is None \
                else default_initializer(activations.name_of(self.activation))
        elif not callable(init):
            get_initializer(init)
        object.__setattr__(self, "kernel_init", init)

    @property
    def draws(self) -> bool:
        return self.dropout > 0

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            hint = "; put a Flatten() before it" if len(in_shape) > 1 else ""
            raise ShapeError(self, in_shape, f"expects flat inputs of shape (m, n_in){hint}")
        return (self.n_out,)

    def init_weights(self, key, n_in, dtype, backend):
        """``W`` of shape ``(n_in, n_out)`` from ``self.kernel_init``, checked."""
        if self.kernel_init == "he_normal":
            W = he_normal(key, (n_in, self.n_out), dtype, backend)
        else:
            W = initialize(self.kernel_init, key, (n_in, self.n_out), dtype)
        got = (tuple(getattr(W, "shape", ())), getattr(W, "dtype", None))
        if got != ((n_in, self.n_out), dtype) or is_jax_array(W) != (backend == "jax"):
            kind = "jax" if is_jax_array(W) else type(W).__name__
            raise InitializerError("W",
                f"the initializer {self.kernel_init!r} returned a {kind} of shape {got[0]} and "
                f"dtype {got[1]}; expected a {backend} array of shape ({n_in}, {self.n_out}) and "
                f"dtype {np.dtype(dtype)}")
        return W

    def init(self, key, in_shape, dtype="float32", *, backend=None):
        in_shape = check_in_shape(in_shape)
        out_shape = self.output_shape(in_shape)
        key, dtype, backend = init_context(key, dtype, backend)
        W = self.init_weights(key, in_shape[0], dtype, backend)
        b = namespace(backend).zeros((self.n_out,), dtype) if self.bias else None
        return DenseParams(W, b), (), out_shape

    def draw_mask(self, key, m, dtype, backend, shape=None):
        """The scaled dropout mask ``(m, n_out)``: 0 or ``1 / (1 - p)``, from ``key``."""
        keep = 1.0 - self.dropout
        key = random.as_key(key, backend)
        return random.bernoulli(key, keep, (m, self.n_out)).astype(dtype) * (1.0 / keep)

    def forward(self, params, state, x, *, train, key=None, mask=None):
        """``mask``: a dropout mask drawn already (``draw_mask``), used instead of ``key``
        (also with ``train=False``: a gradient check replays a training pass's masks)."""
        self.output_shape(x.shape[1:])
        if x.shape[1] != params.W.shape[0]:
            raise ShapeError(self, x.shape[1:], f"expects {params.W.shape[0]} input features "
                             f"(params.W has shape {params.W.shape}); got {x.shape[1]}")
        check_dtype(self, x, params.W, "W")
        z = x @ params.W                               # (m, n_out)
        if params.b is not None and _fused.forward_applies(z, self.activation):
            a = _fused.bias_activation(z, params.b, self.activation)  # fused: z += b; g(z)
        else:
            if params.b is not None:
                z += params.b[None, :]  # in place on NumPy's fresh product (jax rebinds)
            a = None if self.activation is None \
                else activations.get_activation(self.activation).fn(z)
        y = z if a is None else a
        if train and self.dropout > 0 and mask is None:
            if key is None:
                raise ValueError(f"{self!r} with train=True needs a key (an int seed or a "
                                 "funcnn.random key) for its dropout")
            mask = self.draw_mask(key, x.shape[0], x.dtype,
                                  "jax" if is_jax_array(x) else "numpy")
        return (y if mask is None else y * mask), DenseCache(x, z, a, mask), state

    def _dz(self, cache, dy):
        if self.activation is not None and _fused.backward_applies(dy, self.activation):
            # fused: dy * mask * g'(z, a) in one pass, into a new array
            return _fused.activation_grad_product(dy, cache.mask, cache.z, cache.a,
                                                  self.activation)
        if cache.mask is not None:
            dy = dy * cache.mask                       # dropout passes gradient where it kept
        if self.activation is None:
            return dy
        return dy * activations.get_activation(self.activation).grad(cache.z, cache.a)

    def backward(self, params, cache, dy):
        dz = self._dz(cache, dy)                       # (m, n_out)
        dx = dz @ params.W.T                           # (m, n_in)
        return self._grads(params, cache, dz), dx

    def backward_params(self, params, cache, dy):
        return self._grads(params, cache, self._dz(cache, dy))

    @staticmethod
    def _grads(params, cache, dz):
        dW = cache.x.T @ dz                            # (n_in, n_out)
        db = None if params.b is None else dz.sum(axis=0)  # (n_out,)
        return DenseParams(dW, db)

    def backward_per_example(self, params, cache, dy):
        dz = self._dz(cache, dy)                                 # (m, n_out), per example
        dW = array_namespace(dz).einsum("mi,mo->mio", cache.x, dz)  # (m, n_in, n_out)
        db = None if params.b is None else dz                    # (m, n_out)
        return DenseParams(dW, db), dz @ params.W.T              # dx: (m, n_in)

    def backward_sq_norms(self, params, cache, dy):
        dz = self._dz(cache, dy)
        dz2 = (dz * dz).sum(axis=1)                              # (m,): ||dz[i]||^2
        sq = (cache.x * cache.x).sum(axis=1) * dz2               # (m,): ||outer(x[i], dz[i])||^2
        if params.b is not None:
            sq = sq + dz2
        return sq, dz @ params.W.T                               # dx: (m, n_in)
