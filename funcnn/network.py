"""Networks: a spec built from layers, its parameters and model state, and the one forward
and one backward pass every net runs. ``funcnn.MLP`` is the short form of a stack of
dense layers (:mod:`funcnn.mlp`) and runs these same passes.

For the layers ``f_0 .. f_{L-1}`` of a net (:mod:`funcnn.layers`) on a batch of ``m``
examples, with the output activation and the loss at the end::

    a_0 = x                                      (m, *in_shape)
    a_{l+1}, cache_l, state_l = f_l(a_l)         params_l, state_l; dropout noise_l
    z   = a_L                                    the logits (m, k)
    out = output(z)                              softmax, sigmoid, identity, ...

and the backward pass, the exact gradient of the mean loss::

    da_L            = dz = dL/dz                 fused with the loss, e.g. (p - Y) / m
    grads_l, da_l   = f_l.backward(cache_l, da_{l+1})        for l = L-1 .. 1
    grads_0         = f_0.backward_params(cache_0, da_1)     (nobody needs dL/dx)

:func:`apply` and :func:`backward` are these passes without checks: what a jitted loop
calls once its inputs are known to be right (:mod:`funcnn.checked` checks them first).
Params and state are tuples with one entry per layer; the state is ``()`` for a net
whose layers keep none (only ``BatchNorm`` does: its running statistics).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from funcnn import _fused, random
from funcnn.activations import ACTIVATIONS, OUTPUTS, Activation, get_activation, name_of, softmax
from funcnn.backend import concrete_value, float_dtype, get_backend, is_jax_array, to_backend
from funcnn.layers import Serial, ShapeError
from funcnn.layers._base import InitializerError, check_in_shape, check_layers
from funcnn.losses import LOSSES, default_loss, get_loss
from funcnn.tree import tree_map
from funcnn.types import Array, Grads, Key, Params

__all__ = [
    "Cache",
    "Net",
    "Network",
    "apply",
    "backward",
    "check_head",
    "check_net",
    "draw_noise",
    "expected_params",
    "expected_state",
    "init_params",
    "init_state",
    "layer_shapes",
    "loss_from_cache",
]


class Network:
    """What every net spec (``Net``, ``MLP``) gives the passes: ``layers`` (a tuple of
    layers), ``in_shape`` (one example's shape), ``output``, ``loss`` and ``n_out``."""

    layers: tuple
    in_shape: tuple

    def stack(self, init: Any = None) -> tuple:
        """The layers, with the weight initializer ``init`` where the spec takes one."""
        if init is not None:
            raise TypeError(f"init= is for funcnn.MLP; a {type(self).__name__}'s layers carry "
                            "their own initializers (e.g. Dense(10, kernel_init='glorot'))")
        return self.layers

    @property
    def n_out(self) -> int:
        """The number of outputs ``k`` (the logits are ``(m, k)``)."""
        return _out_shape(self)[0]

    @property
    def draws(self) -> bool:
        """Whether training draws randomness (dropout somewhere): then it needs a key."""
        return _stack(self).draws

    @property
    def couples_rows(self) -> bool:
        """Whether in training an example's output depends on the batch (BatchNorm)."""
        return _stack(self).couples_rows

    @property
    def keeps_state(self) -> bool:
        """Whether the net has model state (BatchNorm's running statistics)."""
        return _stack(self).keeps_state


@functools.cache
def _stack(net: Network) -> Serial:
    """The net's layers as one ``Serial`` (what it says of its layers, asked once)."""
    return Serial(net.layers)


@functools.cache
def _out_shape(net: Network) -> tuple:
    return _stack(net).output_shape(net.in_shape)


def check_head(output: Any, loss: Any, k: int) -> tuple[Any, Any]:
    """``(output, loss)`` as a spec stores them (built-in pieces by name, custom ones as
    objects) after checking that they go together and with ``k`` outputs."""
    if output != "softmax":
        if not isinstance(output, Activation) and output not in OUTPUTS:
            raise ValueError(
                f"unknown output activation {output!r}; expected one of {', '.join(OUTPUTS)}"
                " or a funcnn.activations.Activation of your own"
            )
        output = builtin_or_custom(output, ACTIVATIONS)
    loss = default_loss(output) if loss is None else loss
    spec = get_loss(loss)
    if spec.outputs is not None and name_of(output) not in spec.outputs:
        raise ValueError(
            f"loss {spec.name!r} needs output {' or '.join(spec.outputs)}; got output "
            f"{name_of(output)!r} (use loss='mse' or change the output)"
        )
    if output == "softmax" and k < 2:
        raise ValueError("a softmax output needs at least 2 units; use output='sigmoid'")
    return output, builtin_or_custom(loss, LOSSES)


def builtin_or_custom(piece: Any, builtins: dict) -> Any:
    """A built-in piece by its name (also when given as the object); a custom one as itself."""
    checked = get_activation(piece) if builtins is ACTIVATIONS else get_loss(piece)
    return checked.name if checked.name in builtins else checked


@dataclass(frozen=True)
class Net(Network):
    """A frozen, hashable net built from layers (a static argument of ``jax.jit``).

    Args:
      layers: the layers in order (a list or tuple of :mod:`funcnn.layers`); the last
        one gives the logits, flat ``(m, k)``.
      in_shape: one example's shape without the batch axis, e.g. ``(28, 28, 1)``.
      output: the output activation: ``softmax`` (default), ``sigmoid``, ``identity`` or
        an ``Activation`` of your own, as ``MLP`` takes it.
      loss: as ``MLP``: by default softmax -> cross-entropy, sigmoid -> binary
        cross-entropy, else MSE.

    Every shape is checked here, before any parameter exists: a ``ShapeError`` names the
    layer that does not fit, its index and the shapes.
    """

    layers: tuple
    in_shape: tuple
    output: str | Activation = "softmax"
    loss: Any = None

    def __post_init__(self):
        layers = check_layers("Net", self.layers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "in_shape", check_in_shape(self.in_shape))
        out = _out_shape(self)
        if len(out) != 1:
            raise ShapeError(layers[-1], out, "a net's last layer gives its logits, flat "
                             "(m, k); end with Flatten() and Dense(k)", f"[{len(layers) - 1}]")
        output, loss = check_head(self.output, self.loss, out[0])
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "loss", loss)


def check_net(net: Any) -> None:
    """Raise ``TypeError`` unless ``net`` is a net spec (``MLP`` or ``Net``)."""
    if not isinstance(net, Network):
        raise TypeError(f"net must be a funcnn.MLP or a funcnn.Net; got {type(net).__name__}")


class Cache(NamedTuple):
    """What the backward pass needs from the forward pass: ``layers``, one cache per layer
    (a ``DenseCache(x, z, a, mask)`` for a dense layer); ``z`` the logits ``(m, k)``;
    ``out`` the output activation ``output(z)``; ``state`` the model state after the pass
    (``()`` for a net without one).

    For an MLP, ``inputs``, ``zs``, ``hidden`` and ``masks`` give its layers' inputs,
    pre-activations, hidden activations and dropout masks (``L``, ``L``, ``L - 1`` and
    ``L - 1`` entries), as ``docs/backprop.md`` names them.
    """

    layers: tuple
    z: Any
    out: Any
    state: Any = ()

    @property
    def inputs(self) -> tuple:
        return tuple(c.x for c in self.layers)

    @property
    def zs(self) -> tuple:
        return tuple(c.z for c in self.layers)

    @property
    def hidden(self) -> tuple:
        return tuple(c.a for c in self.layers[:-1])

    @property
    def masks(self) -> tuple:
        return tuple(c.mask for c in self.layers[:-1])


# ---------------------------------------------------------------------------- init


def _walk(layers: tuple):
    """Every layer, those inside stacks included."""
    for layer in layers:
        yield layer
        if isinstance(layer, Serial):
            yield from _walk(layer.layers)


def _init(layers: tuple, in_shape: tuple, key: Any, dtype: Any, backend: str):
    """``(params, states)`` with one entry per layer; one key per layer."""
    keys = random.split(random.as_key(key, backend), len(layers))
    params, states, shape = [], [], in_shape
    for i, (layer, k) in enumerate(zip(layers, keys, strict=True)):
        try:
            p, s, shape = layer.init(k, shape, dtype, backend=backend)
        except InitializerError as err:
            raise InitializerError(err.leaf, err.problem, f"params[{i}]") from None
        params.append(p)
        states.append(s)
    return tuple(params), tuple(states)


def init_params(
    net: Network, key: Key, *, backend: str | None = None, dtype: Any = "float32",
    init: Any = None,
) -> tuple:
    """Initial parameters, one entry per layer (a ``DenseParams(W, b)`` for a dense one).

    ``key`` is an int seed or a ``funcnn.random`` key; a jax key implies the jax
    backend. ``init`` (an ``MLP`` only) is an initializer name or a callable ``(key,
    shape, dtype)``: He or Glorot by default, as the hidden activation suits. On jax with
    a key known outside a trace and named initializers, the weights are drawn on the host
    by :mod:`funcnn.random`'s NumPy threefry (jax's numbers; normal draws within 4 ulp)
    and moved to the device: 10 ms instead of the 1.1-1.4 s a new process spends
    compiling one sampler per layer shape.
    """
    check_net(net)
    if backend is None and is_jax_array(key):
        backend = "jax"
    backend = get_backend(backend)
    dtype = float_dtype(dtype, backend)
    layers = net.stack(init)
    named = not any(callable(getattr(layer, "kernel_init", None)) for layer in _walk(layers))
    if backend == "jax" and named:
        host = _host_key(key)
        if host is not None:
            return to_backend(_init(layers, net.in_shape, host, dtype, "numpy")[0], "jax")
    return _init(layers, net.in_shape, key, dtype, backend)[0]


def _host_key(key: Any) -> Any:
    """``key`` as a NumPy key when its value is known here, ``None`` inside a trace."""
    if not is_jax_array(key):
        return random.as_key(key, "numpy")
    words = concrete_value(random.as_key(key))
    return None if words is None else random.as_key(words, "numpy")


def init_state(net: Network, *, backend: str | None = None, dtype: Any = "float32"):
    """The initial model state: one entry per layer (``BatchNorm``: running mean 0 and
    variance 1), or ``()`` for a net without any. It draws nothing: no key."""
    check_net(net)
    backend = get_backend(backend)
    if not net.keeps_state:
        return ()
    state = expected_state(net, float_dtype(dtype, backend))
    return to_backend(state, backend) if backend == "jax" else tree_map(np.copy, state)


@functools.lru_cache(maxsize=32)  # zero-filled params: bounded, nets can be large
def _templates(net: Network, dtype: str) -> tuple:
    params, states = _init(net.layers, net.in_shape, 0, np.dtype(dtype), "numpy")
    return tree_map(np.zeros_like, params), states if net.keeps_state else ()


def expected_params(net: Network, dtype: Any = "float32") -> tuple:
    """Zero-filled NumPy params with the shapes of ``net``: what params are checked against
    (cached: do not write into it)."""
    return _templates(net, np.dtype(dtype).name)[0]


def expected_state(net: Network, dtype: Any = "float32") -> Any:
    """The initial state of ``net`` on NumPy (cached: do not write into it)."""
    return _templates(net, np.dtype(dtype).name)[1]


# ---------------------------------------------------------------------------- the passes


def draw_noise(net: Network, key: Key, m: int, dtype: Any, backend: str) -> tuple | None:
    """The randomness of a training pass: one entry per layer, ``None`` where a layer
    draws nothing, a dropout mask ``(m, ...)`` for a ``Dense`` or ``Dropout`` layer, a key
    for a stack with dropout inside. ``key`` is split into one key per drawing layer."""
    layers = net.layers
    drawing = [i for i, layer in enumerate(layers) if layer.draws]
    if not drawing:
        return None
    keys = random.split(random.as_key(key, backend), len(drawing))
    noise: list[Any] = [None] * len(layers)
    shapes = layer_shapes(net)
    for k, i in zip(keys, drawing, strict=True):
        layer = layers[i]
        draw = getattr(layer, "draw_mask", None)
        noise[i] = k if draw is None else draw(k, m, dtype, backend, shapes[i + 1])
    return tuple(noise)


@functools.cache
def layer_shapes(net: Network) -> tuple:
    """The shape of each layer's input, then the logits'."""
    shapes = [net.in_shape]
    for layer in net.layers:
        shapes.append(layer.output_shape(shapes[-1]))
    return tuple(shapes)


def apply(net: Network, params: Params, x: Array, noise: tuple | None = None, *,
          state: Any = (), train: bool = False) -> Cache:
    """The forward pass (no checks): the :class:`Cache`, with the new state in it.

    ``noise`` is :func:`draw_noise`'s (``None``: nothing dropped; a shorter tuple: the
    layers after its end draw nothing, e.g. an MLP's ``L - 1`` masks); ``train`` selects the
    batch statistics of ``BatchNorm`` (and returns the state updated)."""
    layers = net.layers
    states = state if state else ((),) * len(layers)
    caches, new_states, a = [], [], x
    for i, layer in enumerate(layers):
        extra = {}
        if noise is not None and i < len(noise) and noise[i] is not None:
            extra = {"mask" if hasattr(layer, "draw_mask") else "key": noise[i]}
        try:
            a, cache, s = layer.forward(params[i], states[i], a, train=train, **extra)
        except ShapeError as err:
            raise err.inside(i) from None
        caches.append(cache)
        new_states.append(s)
    if _fused.forward_applies(a, net.output):
        out = _fused.activation(a, net.output)  # fused: softmax (or g) in one pass
    else:
        out = softmax(a) if net.output == "softmax" else get_activation(net.output).fn(a)
    return Cache(tuple(caches), a, out, tuple(new_states) if state else ())


def backward(net: Network, params: Params, cache: Cache, y: Array, *,
             dz: Array | None = None) -> Grads:
    """The hand-written backward pass on prepared targets (no checks).

    ``dz``: the logits' delta ``dL/dz`` to start from, when the caller has it already
    (``funcnn.step`` does for a padded short batch); by default the loss's.
    """
    if dz is None:
        dz = get_loss(net.loss).delta(net.output, cache.z, cache.out, y)
    layers, dy = net.layers, dz
    grads: list[Any] = [None] * len(layers)
    for i in range(len(layers) - 1, 0, -1):
        grads[i], dy = layers[i].backward(params[i], cache.layers[i], dy)  # dx: the next dy
    grads[0] = layers[0].backward_params(params[0], cache.layers[0], dy)
    return tuple(grads)


def loss_from_cache(net: Network, cache: Cache, y: Any) -> Any:
    """The mean loss from a forward cache and prepared targets."""
    return get_loss(net.loss).value(net.output, cache.z, cache.out, y)

