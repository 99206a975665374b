"""The multilayer perceptron: spec, initialisation, forward pass, loss and backward pass.

Notation, 0-based as in the code, for layer ``l = 0 .. L-1`` on a batch of ``m`` rows
(batch first); the names are the fields of :class:`Cache`::

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

Parameters are a tuple of :class:`Dense` NamedTuples, one per layer. :func:`apply` and
:func:`backward` are the bare forward and backward passes, with no checks: what a jitted
loop calls once its inputs are known to be right (``forward``, ``loss``, ``backprop``
and ``value_and_grad`` check their arguments first, then call them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from funcnn import _fused, random
from funcnn._checks import check_params_like
from funcnn._mlp_checks import check_cache, check_initialized, check_x, check_y
from funcnn.activations import ACTIVATIONS, OUTPUTS, Activation, get_activation, name_of, softmax
from funcnn.backend import (
    check_same_backend,
    concrete_value,
    float_dtype,
    get_backend,
    is_jax_array,
    namespace,
    to_backend,
)
from funcnn.initializers import default_initializer, get_initializer, initialize
from funcnn.losses import LOSSES, Loss, default_loss, get_loss
from funcnn.tree import tree_paths
from funcnn.types import Array, Grads, Key, Params

__all__ = [
    "MLP",
    "Cache",
    "Dense",
    "apply",
    "backprop",
    "backward",
    "expected_params",
    "forward",
    "init_params",
    "loss",
    "predict",
    "value_and_grad",
]


class Dense(NamedTuple):
    """One layer's parameters: ``W`` of shape ``(n_in, n_out)`` and ``b`` of shape ``(n_out,)``."""

    W: Any
    b: Any


class Cache(NamedTuple):
    """What the backward pass needs from the forward pass, 0-based by layer.

    For a net of ``L`` layers: ``inputs[l]`` (``L`` entries) is the input of layer ``l``
    (``x`` for ``l = 0``, after dropout for the others), ``zs[l]`` (``L`` entries) its
    pre-activation; ``hidden[l]`` (``L - 1`` entries) is the hidden activation
    ``g(zs[l])`` before dropout and ``masks[l]`` (``L - 1`` entries) its scaled dropout
    mask (``None`` without dropout); ``out`` is the output activation ``f(zs[L-1])``.
    """

    inputs: tuple
    zs: tuple
    hidden: tuple
    masks: tuple
    out: Any


@dataclass(frozen=True)
class MLP:
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
    ``"tanh"``); custom ones as the objects, so equal specs hash equal.
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
        object.__setattr__(self, "hidden", _builtin_or_custom(self.hidden, ACTIVATIONS))
        output = self.output
        if output != "softmax":
            if not isinstance(output, Activation) and output not in OUTPUTS:
                raise ValueError(
                    f"unknown output activation {output!r}; expected one of {', '.join(OUTPUTS)}"
                    " or a funcnn.activations.Activation of your own"
                )
            output = _builtin_or_custom(output, ACTIVATIONS)
        object.__setattr__(self, "output", output)
        loss = default_loss(output) if self.loss is None else self.loss
        spec = get_loss(loss)
        if spec.outputs is not None and name_of(output) not in spec.outputs:
            raise ValueError(
                f"loss {spec.name!r} needs output {' or '.join(spec.outputs)}; got output "
                f"{name_of(output)!r} (use loss='mse' or change the output)"
            )
        if output == "softmax" and self.sizes[-1] < 2:
            raise ValueError("a softmax output needs at least 2 units; use output='sigmoid'")
        object.__setattr__(self, "loss", _builtin_or_custom(loss, LOSSES))
        p = self.dropout
        real = isinstance(p, int | float | np.integer | np.floating)
        if isinstance(p, bool | np.bool_) or not real or not 0 <= p < 1:
            raise ValueError(f"dropout is the probability of dropping a unit, in [0, 1); got {p!r}")
        object.__setattr__(self, "dropout", float(p))

    @property
    def n_layers(self) -> int:
        """The number of weight layers, ``len(sizes) - 1``."""
        return len(self.sizes) - 1


def _builtin_or_custom(piece: Any, builtins: dict) -> Any:
    """A built-in piece by its name (also when given as the object); a custom one as itself."""
    checked = get_activation(piece) if builtins is ACTIVATIONS else get_loss(piece)
    return checked.name if checked.name in builtins else checked


# ---------------------------------------------------------------------------- init


def init_params(
    net: MLP, key: Key, *, backend: str | None = None, dtype: Any = "float32", init: Any = None
) -> tuple[Dense, ...]:
    """Initial parameters: weights from ``init`` (He or Glorot by default), zero biases.

    ``key`` is an int seed or a ``funcnn.random`` key; a jax key implies the jax
    backend. ``init`` is an initializer name or a callable ``(key, shape, dtype)``.
    On jax with a key known outside a trace and a named initializer, the weights are
    drawn on the host by :mod:`funcnn.random`'s NumPy threefry (jax's numbers; normal
    draws within 4 ulp) and moved to the device: 10 ms instead of the 1.1-1.4 s a new
    process spends compiling one sampler per layer shape.
    """
    check_net(net)
    if backend is None and is_jax_array(key):
        backend = "jax"
    backend = get_backend(backend)
    dtype = float_dtype(dtype, backend)
    init = default_initializer(net.hidden) if init is None else init
    if not callable(init):
        get_initializer(init)
        host_key = _host_key(key) if backend == "jax" else None
        if host_key is not None:
            params = init_params(net, host_key, backend="numpy", dtype=dtype, init=init)
            return to_backend(params, "jax")
    keys = random.split(random.as_key(key, backend), net.n_layers)
    xp = namespace(backend)
    params = tuple(
        Dense(initialize(init, k, (n_in, n_out), dtype), xp.zeros((n_out,), dtype=dtype))
        for k, n_in, n_out in zip(keys, net.sizes[:-1], net.sizes[1:], strict=True)
    )
    check_initialized(net, params, dtype, init)
    return params


def _host_key(key: Any) -> Any:
    """``key`` as a NumPy key when its value is known here, ``None`` inside a trace."""
    if not is_jax_array(key):
        return random.as_key(key, "numpy")
    words = concrete_value(random.as_key(key))
    return None if words is None else random.as_key(words, "numpy")


def check_net(net: Any) -> None:
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a funcnn.MLP; got {type(net).__name__}")


def expected_params(net: MLP, dtype: Any = "float32") -> tuple[Dense, ...]:
    """Zero-filled params with the shapes of ``net``: the template params are checked against."""
    return tuple(
        Dense(np.zeros((i, o), dtype), np.zeros((o,), dtype))
        for i, o in zip(net.sizes[:-1], net.sizes[1:], strict=True)
    )


def _params_fit(net: MLP, params: Any) -> bool:
    return (
        type(params) is tuple and len(params) == net.n_layers
        and all(type(d) is Dense for d in params)
        and all(getattr(d.W, "shape", None) == (i, o) and getattr(d.b, "shape", None) == (o,)
                for d, i, o in zip(params, net.sizes[:-1], net.sizes[1:], strict=True))
    )


def check_params(net: MLP, params: Any) -> Any:
    """The dtype of valid params for ``net``; raises with a structure diff otherwise."""
    if not _params_fit(net, params):
        check_params_like("params", params, expected_params(net), f"the params of {net.sizes}")
    dtype = params[0].W.dtype
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"params must be float32 or float64; params[0].W is {dtype}")
    for path, leaf in tree_paths(params):
        if leaf.dtype != dtype:
            raise TypeError(
                f"params must all be float32 or all float64; params{path} is {leaf.dtype} "
                f"and params[0].W is {dtype}"
            )
    return dtype


# ---------------------------------------------------------------------------- forward


def dropout_masks(net: MLP, key: Any, m: int, dtype: Any, backend: str) -> tuple:
    """Scaled inverted-dropout masks for each hidden layer: 0 or ``1 / (1 - p)``."""
    if net.dropout == 0.0:
        return (None,) * (net.n_layers - 1)
    keep = 1.0 - net.dropout
    keys = random.split(random.as_key(key, backend), max(net.n_layers - 1, 1))
    return tuple(
        random.bernoulli(k, keep, (m, n)).astype(dtype) * (1.0 / keep)
        for k, n in zip(keys, net.sizes[1:-1], strict=False)
    )


def apply(net: MLP, params: Params, x: Array, masks: tuple) -> Cache:
    """The forward pass with given dropout masks (no checks); returns the cache."""
    g = get_activation(net.hidden).fn
    inputs, zs, hidden = [], [], []
    a = x
    for layer, mask in zip(params[:-1], masks, strict=True):
        inputs.append(a)
        z = a @ layer.W
        if _fused.forward_applies(z, net.hidden):  # fused: z += b; h = g(z) in one pass
            h = _fused.bias_activation(z, layer.b, net.hidden)
        else:
            z += layer.b[None, :]  # in place on NumPy's fresh product (jax rebinds)
            h = g(z)
        zs.append(z)
        hidden.append(h)
        a = h if mask is None else h * mask
    inputs.append(a)
    z = a @ params[-1].W
    if _fused.forward_applies(z, net.output):  # fused: z += b; out = f(z) in one pass
        out = _fused.bias_activation(z, params[-1].b, net.output)
    else:
        z += params[-1].b[None, :]
        out = softmax(z) if net.output == "softmax" else get_activation(net.output).fn(z)
    zs.append(z)
    return Cache(tuple(inputs), tuple(zs), tuple(hidden), tuple(masks), out)


def prepare_inputs(net: MLP, params: Any, x: Any, key: Any, train: bool):
    check_net(net)
    dtype = check_params(net, params)
    backend = check_same_backend(params, x=x)
    x = check_x(net, x, dtype)
    if backend == "jax" and not is_jax_array(x):
        x = namespace("jax").asarray(x)
    if train and net.dropout > 0:
        if key is None:
            raise ValueError("train=True with dropout needs a key (an int seed or a funcnn key)")
        masks = dropout_masks(net, key, x.shape[0], dtype, backend)
    else:
        masks = (None,) * (net.n_layers - 1)
    return x, masks, dtype


def forward(net: MLP, params: Params, x: Array, *, key: Key | None = None, train: bool = False):
    """Run the net on ``x`` of shape ``(m, n_in)``; return ``(out, cache)``.

    ``out`` is the output activation (probabilities for softmax and sigmoid), shape
    ``(m, n_out)``. With ``train=True`` and dropout in the net, units are dropped with
    masks drawn from ``key`` (required then: ``ValueError`` without it); otherwise
    nothing is dropped.
    """
    x, masks, _ = prepare_inputs(net, params, x, key, train)
    cache = apply(net, params, x, masks)
    return cache.out, cache


def predict(net: MLP, params: Params, x: Array) -> Array:
    """The output activation on ``x`` (no dropout)."""
    return forward(net, params, x)[0]


# ---------------------------------------------------------------------------- loss


def loss_from_cache(net: MLP, cache: Cache, y: Any) -> Any:
    """The mean loss from a forward cache and prepared targets."""
    return get_loss(net.loss).value(net.output, cache.zs[-1], cache.out, y)


def loss(
    net: MLP, params: Params, x: Array, y: Array, *, key: Key | None = None, train: bool = False
) -> Array:
    """The mean loss over the batch, computed from the logits in a stable fused form."""
    x, masks, dtype = prepare_inputs(net, params, x, key, train)
    check_same_backend(params, y=y)
    y = check_y(net, y, x.shape[0], dtype)
    return loss_from_cache(net, apply(net, params, x, masks), y)


# ---------------------------------------------------------------------------- backward


def backward(net: MLP, params: Params, cache: Cache, y: Array, *, dz: Array | None = None
             ) -> Grads:
    """The hand-written backward pass on prepared targets (no checks).

    ``dz``: the output layer's delta ``dL/dzs[L-1]`` to start from, when the caller has
    it already (``funcnn.step`` does for a padded short batch); by default the loss's.
    """
    g_grad = get_activation(net.hidden).grad
    if dz is None:
        dz = get_loss(net.loss).delta(net.output, cache.zs[-1], cache.out, y)
    grads = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        dW = cache.inputs[l].T @ dz                    # (n_in, n_out)
        db = dz.sum(axis=0)                            # (n_out,)
        grads[l] = Dense(dW, db)
        if l == 0:
            break                                      # nobody needs dL/dx
        da = dz @ params[l].W.T                        # (m, n_in): into the layer below
        if _fused.backward_applies(da, net.hidden):  # fused: da * mask * g'(z, h), one pass
            dz = _fused.activation_grad_product(da, cache.masks[l - 1], cache.zs[l - 1],
                                                cache.hidden[l - 1], net.hidden)
            continue
        if cache.masks[l - 1] is not None:
            da = da * cache.masks[l - 1]               # dropout passes gradient where it kept
        dz = da * g_grad(cache.zs[l - 1], cache.hidden[l - 1])
    return tuple(grads)


def backprop(net: MLP, params: Params, cache: Cache, y: Array) -> Grads:
    """Gradients of :func:`loss` w.r.t. ``params`` from a forward ``cache``; same tree as params."""
    check_net(net)
    dtype = check_params(net, params)
    if not isinstance(cache, Cache):
        raise TypeError(f"cache must be the Cache returned by funcnn.forward; got {type(cache)}")
    check_same_backend(params, cache=cache, y=y)
    check_cache(net, cache, dtype)
    y = check_y(net, y, cache.inputs[0].shape[0], dtype)
    return backward(net, params, cache, y)


def value_and_grad(
    net: MLP, params: Params, x: Array, y: Array, *, key: Key | None = None, train: bool = False
):
    """``(loss, grads)`` from one forward and one backward pass."""
    x, masks, dtype = prepare_inputs(net, params, x, key, train)
    check_same_backend(params, y=y)
    y = check_y(net, y, x.shape[0], dtype)
    cache = apply(net, params, x, masks)
    return loss_from_cache(net, cache, y), backward(net, params, cache, y)

