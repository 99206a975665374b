"""Layer and batch normalisation, with a learned scale and shift per feature (the last
axis). Both normalise over a set of axes and share one backward pass; with ``N`` the
number of elements averaged, ``mean_`` the mean over those axes::

    mu   = mean_(x);   var = mean_((x - mu)**2);   inv = 1 / sqrt(var + eps)
    xhat = (x - mu) * inv
    y    = scale * xhat + shift
    dscale = sum over all but the last axis of dy * xhat
    dshift = sum over all but the last axis of dy
    dxhat  = dy * scale
    dx     = inv * (dxhat - mean_(dxhat) - xhat * mean_(dxhat * xhat))

the three terms of ``dx``: the direct path, the path through ``mu`` and the path through
``var``. LayerNorm averages over the last axis (each example's features, as PyTorch's
``LayerNorm(n)`` and flax's default); BatchNorm over all axes but the last (the batch and,
for images, the pixels of each channel). In evaluation BatchNorm uses its running
statistics, constants: then ``dx = dxhat * inv``.

Per example (``dy``'s row ``i`` the gradient of example ``i``'s own loss), the sums over
all but the last axis stop short of the batch axis::

    dscale[i] = sum over the axes of one example but the last of dy[i] * xhat[i]   (m, n)
    dshift[i] = sum over the axes of one example but the last of dy[i]             (m, n)

and ``dx`` is the batch's. That holds for LayerNorm and for BatchNorm in evaluation,
where each example is normalised on its own (by its own statistics, or by constants).
BatchNorm in training normalises by the batch's mean and variance: example ``i``'s loss
depends on every example's input, so the gradient of ``sum_i loss_i`` does not split into
per-example gradients, and ``backward_per_example`` raises ``PerExampleError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from funcnn.backend import array_namespace, namespace
from funcnn.layers._base import (
    Layer,
    PerExampleError,
    ShapeError,
    broadcast_last,
    check_dtype,
    check_in_shape,
    init_context,
)

__all__ = ["BatchNorm", "BatchNormState", "LayerNorm", "NormParams"]


class NormParams(NamedTuple):
    """A normalisation's learned ``scale`` (ones at first) and ``shift`` (zeros), shape
    ``(n,)`` for ``n`` features (channels)."""

    scale: Any
    shift: Any


class BatchNormState(NamedTuple):
    """BatchNorm's running ``mean`` (zeros at first) and ``var`` (ones), shape ``(n,)``."""

    mean: Any
    var: Any


class _BatchStats(NamedTuple):   # normalised by the batch's own statistics
    xhat: Any
    inv: Any


class _RunningStats(NamedTuple):  # normalised by constants: the running statistics
    xhat: Any
    inv: Any


def _check_eps(name: str, eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, int | float | np.floating) or not eps > 0:
        raise ValueError(f"{name} eps must be a positive number; got {eps!r}")
    return float(eps)


def _normalize(x: Any, axes: tuple[int, ...], eps: float):
    """``(xhat, inv, mu, var)`` of ``x`` over ``axes`` (kept as axes of size 1)."""
    xp = array_namespace(x)
    mu = x.mean(axis=axes, keepdims=True)
    centred = x - mu
    var = (centred * centred).mean(axis=axes, keepdims=True)
    inv = 1 / xp.sqrt(var + eps)
    return centred * inv, inv, mu, var


def _normalize_backward(dxhat: Any, xhat: Any, inv: Any, axes: tuple[int, ...]) -> Any:
    """``dx`` from ``dxhat``: the three-term formula of the module's docstring."""
    return inv * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                  - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))


def _affine(params: NormParams, xhat: Any) -> Any:
    return xhat * broadcast_last(params.scale, xhat.ndim) + broadcast_last(params.shift,
                                                                            xhat.ndim)


def _affine_backward(params: NormParams, xhat: Any, dy: Any, *,
                     per_example: bool = False) -> tuple[NormParams, Any]:
    """``(dscale, dshift)`` and ``dxhat``: ``dscale`` and ``dshift`` of shape ``(n,)``, or
    ``(m, n)`` with ``per_example`` (summed over each example's axes but the last)."""
    outer = tuple(range(1 if per_example else 0, dy.ndim - 1))
    dscale = (dy * xhat).sum(axis=outer)                       # (n,) or (m, n)
    dshift = dy.sum(axis=outer)                                # (n,) or (m, n)
    return NormParams(dscale, dshift), dy * broadcast_last(params.scale, dy.ndim)


def _check_features(layer: Layer, params: NormParams, x: Any) -> None:
    n = params.scale.shape[0]
    if x.ndim < 2 or x.shape[-1] != n:
        raise ShapeError(layer, x.shape[1:], f"expects {n} features on the last axis "
                         f"(params.scale has shape {params.scale.shape}); got {x.shape[1:]}")
    check_dtype(layer, x, params.scale, "scale")


def _init_params(in_shape: Any, dtype: Any, backend: Any) -> NormParams:
    xp, n = namespace(backend), in_shape[-1]
    return NormParams(xp.ones((n,), dtype), xp.zeros((n,), dtype))


@dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalises each example over its last axis (its features; the channels of each
    pixel of an image), then scales and shifts them: ``y = scale * xhat + shift``.

    ``eps=1e-5`` as PyTorch (flax: 1e-6, Keras: 1e-3). No state; the same in training
    and evaluation.
    """

    eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "eps", _check_eps("LayerNorm", self.eps))

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def init(self, key, in_shape, dtype="float32", *, backend=None):
        in_shape = check_in_shape(in_shape)
        _, dtype, backend = init_context(key, dtype, backend)
        return _init_params(in_shape, dtype, backend), (), in_shape

    def forward(self, params, state, x, *, train, key=None):
        _check_features(self, params, x)
        xhat, inv, _, _ = _normalize(x, (-1,), self.eps)
        return _affine(params, xhat), (xhat, inv), state

    def backward(self, params, cache, dy):
        xhat, inv = cache
        grads, dxhat = _affine_backward(params, xhat, dy)
        return grads, _normalize_backward(dxhat, xhat, inv, (-1,))

    def backward_per_example(self, params, cache, dy):
        xhat, inv = cache
        grads, dxhat = _affine_backward(params, xhat, dy, per_example=True)  # (m, n) each
        return grads, _normalize_backward(dxhat, xhat, inv, (-1,))


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Normalises each feature (the last axis: a channel of an image) over the batch (and
    the pixels), then scales and shifts: ``y = scale * xhat + shift``.

    ``train=True`` normalises by the batch's mean and (biased) variance and returns the
    state with the running statistics moved towards them::

        running = momentum * running + (1 - momentum) * batch

    as flax and Keras write it; PyTorch's ``momentum`` is the complement (its default 0.1
    is this 0.9). The running variance takes the biased batch variance, as flax and
    Keras (PyTorch stores the unbiased ``N / (N - 1)`` times it). ``train=False`` uses the
    running statistics, and the state comes back unchanged. ``eps=1e-5`` as PyTorch and
    flax (Keras: 1e-3). Batch statistics make an example's output depend on the whole
    batch: its gradients are not per-example.
    """

    momentum: float = 0.9
    eps: float = 1e-5
    couples_rows = True  # class attributes, not fields: batch statistics in training,
    keeps_state = True   # and the running ones in the state

    def __post_init__(self):
        mom = self.momentum
        if isinstance(mom, bool) or not isinstance(mom, int | float | np.floating) \
                or not 0 <= mom <= 1:
            raise ValueError(f"BatchNorm momentum must be in [0, 1] (the weight of the old "
                             f"running statistics); got {mom!r}")
        object.__setattr__(self, "momentum", float(mom))
        object.__setattr__(self, "eps", _check_eps("BatchNorm", self.eps))

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def init(self, key, in_shape, dtype="float32", *, backend=None):
        in_shape = check_in_shape(in_shape)
        _, dtype, backend = init_context(key, dtype, backend)
        xp, n = namespace(backend), in_shape[-1]
        state = BatchNormState(xp.zeros((n,), dtype), xp.ones((n,), dtype))
        return _init_params(in_shape, dtype, backend), state, in_shape

    def forward(self, params, state, x, *, train, key=None):
        _check_features(self, params, x)
        if not train:
            inv = 1 / array_namespace(x).sqrt(state.var + self.eps)       # (n,)
            xhat = (x - broadcast_last(state.mean, x.ndim)) * broadcast_last(inv, x.ndim)
            return _affine(params, xhat), _RunningStats(xhat, inv), state
        axes = tuple(range(x.ndim - 1))
        xhat, inv, mu, var = _normalize(x, axes, self.eps)
        a = self.momentum
        new_state = BatchNormState(a * state.mean + (1 - a) * mu.reshape(-1),
                                   a * state.var + (1 - a) * var.reshape(-1))
        return _affine(params, xhat), _BatchStats(xhat, inv), new_state

    def backward(self, params, cache, dy):
        grads, dxhat = _affine_backward(params, cache.xhat, dy)
        if isinstance(cache, _RunningStats):
            return grads, dxhat * broadcast_last(cache.inv, dy.ndim)
        return grads, _normalize_backward(dxhat, cache.xhat, cache.inv,
                                          tuple(range(dy.ndim - 1)))

    def backward_per_example(self, params, cache, dy):
        """Per-example ``(dscale, dshift)``, ``(m, n)`` each, and ``dx``, with the running
        statistics (a cache of ``train=False``); ``PerExampleError`` with batch ones."""
        if not isinstance(cache, _RunningStats):
            raise PerExampleError(self, "in training (train=True) it normalises by the "
                                  "batch's own mean and variance, so each example's gradient "
                                  "depends on the whole batch; use the running statistics "
                                  "(train=False), or LayerNorm (or no normalisation) for "
                                  "per-example gradients and DP-SGD")
        grads, dxhat = _affine_backward(params, cache.xhat, dy, per_example=True)
        return grads, dxhat * broadcast_last(cache.inv, dy.ndim)
