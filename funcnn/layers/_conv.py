"""The 2-D convolution on channels-last images, as patches and one matrix product.

With the kernel ``W`` of shape ``(kh, kw, C, F)`` (HWIO, as ``lax.conv_general_dilated``
and flax) seen as a matrix ``Wm = W.reshape(kh * kw * C, F)``, and the padded image's
windows as rows of patches ``P`` (``funcnn.layers._windows``)::

    P  = windows(pad(x)).reshape(m * Ho * Wo, kh * kw * C)
    y  = (P @ Wm + b).reshape(m, Ho, Wo, F)
    dZ = dy.reshape(m * Ho * Wo, F)
    dW = (P.T @ dZ).reshape(kh, kw, C, F)
    db = dZ.sum(axis=0)                                        (F,)
    dx = crop(fold((dZ @ Wm.T).reshape(m, Ho, Wo, kh * kw, C)))  (m, H, W, C)

``dx`` is the "full convolution of dy with the flipped kernel" of the textbooks: each
patch's gradient ``dZ @ Wm.T`` goes back to the pixels the patch was read from.

The patch form is the fast one on both backends: XLA's CPU convolutions run far below
its matrix-product rate (``benchmarks/conv_layers.py``).

Per example (``dy``'s row ``i`` the gradient of example ``i``'s own loss), ``dW`` splits
into one product per image, of its ``Ho * Wo`` patches and their deltas::

    Pe = P.reshape(m, Ho * Wo, kh * kw * C);   dZe = dy.reshape(m, Ho * Wo, F)
    dW[i] = (Pe[i].T @ dZe[i]).reshape(kh, kw, C, F)          (m, kh, kw, C, F)
    db[i] = dZe[i].sum(axis=0)                                 (m, F)

(``sum_i dW[i] = P.T @ dZ``); ``dx`` is the same as for the batch. Each example's squared
norm ``||dW[i]||^2`` needs no ``dW[i]`` when an image has few patches ``p = Ho * Wo``
(the Gram form, ``m p^2 (K + F)`` multiplications against ``m p K F``, ``K = kh kw C``)::

    ||Pe[i].T @ dZe[i]||^2 = sum((Pe[i] @ Pe[i].T) * (dZe[i] @ dZe[i].T))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from funcnn.backend import array_namespace, namespace
from funcnn.layers._base import (
    Layer,
    ShapeError,
    _is_int,
    check_dtype,
    check_in_shape,
    check_input,
    he_normal,
    init_context,
    positive_pair,
)
from funcnn.layers._windows import fold, out_size, windows

__all__ = ["Conv2D", "Conv2DParams", "same_padding"]

PADDINGS = ("valid", "same")


class Conv2DParams(NamedTuple):
    """A convolution's parameters: the kernel ``W`` of shape ``(kh, kw, C, F)`` and the
    bias ``b`` of shape ``(F,)`` (``None`` for ``Conv2D(..., bias=False)``)."""

    W: Any
    b: Any


class Conv2DCache(NamedTuple):
    x: Any        # (m, H, W, C): the input, for its shape
    patches: Any  # (m * Ho * Wo, kh * kw * C)


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """``(before, after)`` padding of one axis for ``"same"``, as TF, Keras, flax and
    ``lax`` pad: ``ceil(size / stride)`` outputs, the odd pixel at the bottom/right."""
    total = max((math.ceil(size / stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class Conv2D(Layer):
    """A 2-D convolution (cross-correlation, as in every deep-learning library) of
    channels-last images ``(m, H, W, C)`` to ``(m, Ho, Wo, filters)``.

    ``padding="valid"`` uses only full windows: ``Ho = (H - kh) // stride + 1``;
    ``"same"`` pads with zeros to ``Ho = ceil(H / stride)``, the extra pixel of an odd
    total at the bottom and right, as TF, Keras, flax and ``lax`` do (PyTorch's
    ``padding="same"`` allows stride 1 only).

    The kernel is He-normal with ``fan_in = kh * kw * C`` (as the MLP's ReLU default), the
    bias zero. PyTorch's ``nn.Conv2d`` draws both from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    (a variance 6 times smaller for the kernel); flax uses LeCun-normal, Keras
    Glorot-uniform.

    Args:
      filters: ``F``, the number of output channels.
      kernel_size: ``k`` or ``(kh, kw)``.
      stride: ``s`` or ``(sh, sw)``.
      padding: ``"valid"`` or ``"same"``.
      bias: whether to add a bias per output channel.
    """

    filters: int
    kernel_size: int | tuple[int, int] = 3
    stride: int | tuple[int, int] = 1
    padding: str = "valid"
    bias: bool = True

    def __post_init__(self):
        if not _is_int(self.filters) or self.filters <= 0:
            raise ValueError(f"Conv2D filters must be a positive int; got {self.filters!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"Conv2D padding must be 'valid' or 'same'; got {self.padding!r}")
        if not isinstance(self.bias, bool):
            raise TypeError(f"Conv2D bias must be True or False; got {self.bias!r}")
        object.__setattr__(self, "filters", int(self.filters))
        object.__setattr__(self, "kernel_size",
                           positive_pair("Conv2D", "kernel_size", self.kernel_size))
        object.__setattr__(self, "stride", positive_pair("Conv2D", "stride", self.stride))

    def pads(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((top, bottom), (left, right))`` zero padding for an ``h x w`` image."""
        if self.padding == "valid":
            return (0, 0), (0, 0)
        return tuple(same_padding(n, k, s)
                     for n, k, s in zip((h, w), self.kernel_size, self.stride, strict=True))

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ShapeError(self, in_shape, "expects images of shape (m, H, W, C), channels "
                             f"last; got {len(in_shape) + 1}-D inputs")
        h, w, _ = in_shape
        (top, bottom), (left, right) = self.pads(h, w)
        hp, wp = h + top + bottom, w + left + right
        kh, kw = self.kernel_size
        if kh > hp or kw > wp:
            raise ShapeError(self, in_shape, f"the {kh}x{kw} kernel is larger than the "
                             f"{hp}x{wp} padded input (padding={self.padding!r})")
        return (out_size(hp, kh, self.stride[0]), out_size(wp, kw, self.stride[1]),
                self.filters)

    def init(self, key, in_shape, dtype="float32", *, backend=None):
        in_shape = check_in_shape(in_shape)
        out_shape = self.output_shape(in_shape)
        key, dtype, backend = init_context(key, dtype, backend)
        kh, kw = self.kernel_size
        c, f = in_shape[-1], self.filters
        W = he_normal(key, (kh * kw * c, f), dtype, backend).reshape(kh, kw, c, f)
        b = namespace(backend).zeros((f,), dtype) if self.bias else None
        return Conv2DParams(W, b), (), out_shape

    def forward(self, params, state, x, *, train, key=None):
        check_input(self, x, 4, "(m, H, W, C)")
        self.output_shape(x.shape[1:])
        kh, kw, c, f = params.W.shape
        if x.shape[3] != c:
            raise ShapeError(self, x.shape[1:], f"expects {c} input channels (params.W has "
                             f"shape {params.W.shape}); got {x.shape[3]}")
        check_dtype(self, x, params.W, "W")
        (top, bottom), (left, right) = self.pads(*x.shape[1:3])
        padded = x
        if top or bottom or left or right:
            padded = array_namespace(x).pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        win = windows(padded, self.kernel_size, self.stride)  # (m, Ho, Wo, kh * kw, C)
        m, ho, wo = win.shape[:3]
        patches = win.reshape(m * ho * wo, kh * kw * c)
        z = patches @ params.W.reshape(kh * kw * c, f)          # (m * Ho * Wo, F)
        if params.b is not None:
            z = z + params.b[None, :]
        return z.reshape(m, ho, wo, f), Conv2DCache(x, patches), state

    def backward_params(self, params, cache, dy):
        kh, kw, c, f = params.W.shape
        dz = dy.reshape(-1, f)                                  # (m * Ho * Wo, F)
        dW = (cache.patches.T @ dz).reshape(kh, kw, c, f)       # (kh, kw, C, F)
        db = None if params.b is None else dz.sum(axis=0)       # (F,)
        return Conv2DParams(dW, db)

    def backward(self, params, cache, dy):
        return self.backward_params(params, cache, dy), self._input_grad(params, cache, dy)

    def backward_per_example(self, params, cache, dy):
        patches = cache.patches
        m = dy.shape[0]
        kh, kw, c, f = params.W.shape
        pe = patches.reshape(m, -1, kh * kw * c)                # (m, Ho * Wo, kh * kw * C)
        dze = dy.reshape(m, -1, f)                              # (m, Ho * Wo, F)
        dW = (pe.transpose(0, 2, 1) @ dze).reshape(m, kh, kw, c, f)  # (m, kh, kw, C, F)
        db = None if params.b is None else dze.sum(axis=1)      # (m, F)
        return Conv2DParams(dW, db), self._input_grad(params, cache, dy)

    def backward_sq_norms(self, params, cache, dy):
        m = dy.shape[0]
        kh, kw, c, f = params.W.shape
        k = kh * kw * c
        pe = cache.patches.reshape(m, -1, k)                    # (m, p, K), p = Ho * Wo
        dze = dy.reshape(m, -1, f)                              # (m, p, F)
        p = pe.shape[1]
        if p * (k + f) < k * f:                                 # the Gram form is cheaper
            gram = pe @ pe.transpose(0, 2, 1)                   # (m, p, p)
            sq = (gram * (dze @ dze.transpose(0, 2, 1))).sum(axis=(1, 2))  # (m,)
        else:
            dW = pe.transpose(0, 2, 1) @ dze                    # (m, K, F)
            sq = (dW * dW).sum(axis=(1, 2))                     # (m,)
        if params.b is not None:
            db = dze.sum(axis=1)                                # (m, F)
            sq = sq + (db * db).sum(axis=1)
        return sq, self._input_grad(params, cache, dy)

    def _input_grad(self, params, cache, dy):
        """``dx``, ``(m, H, W, C)``: each patch's gradient folded back onto the image."""
        _, h, w, _ = cache.x.shape
        kh, kw, c, f = params.W.shape
        (top, bottom), (left, right) = self.pads(h, w)
        dz = dy.reshape(-1, f)                                  # (m * Ho * Wo, F)
        dpatches = dz @ params.W.reshape(kh * kw * c, f).T      # (m * Ho * Wo, kh * kw * C)
        dwin = dpatches.reshape(*dy.shape[:3], kh * kw, c)      # (m, Ho, Wo, kh * kw, C)
        dpadded = fold(dwin, (h + top + bottom, w + left + right), self.kernel_size,
                       self.stride)                             # (m, Hp, Wp, C)
        return dpadded[:, top:top + h, left:left + w, :]        # (m, H, W, C)
