"""Max- and average-pooling of channels-last images over ``kh x kw`` windows ("valid":
full windows only), each channel on its own. With ``win = windows(x)`` of shape
``(m, Ho, Wo, k, C)``, ``k = kh * kw`` (``funcnn.layers._windows``)::

    max:  first = argmax(win, axis=3)            the FIRST maximum, row-major in the window
          mask  = one_hot(first)                 (m, Ho, Wo, k, C)
          y     = sum(where(mask, win, 0), axis=3)
          dx    = fold(where(mask, dy, 0))        all of a window's gradient to one element
    avg:  y     = win.mean(axis=3)
          dx    = fold(broadcast(dy / k))         each element of the window gets dy / k

**Ties.** When a window holds its maximum more than once, max-pooling sends the whole
gradient to the first of them in row-major order (top row first, left to right). That is
what ``jax.grad`` of ``lax.reduce_window(..., lax.max, ...)`` and PyTorch's
``max_pool2d`` do; ``jax.grad`` of ``jnp.max`` over the window would split it equally.
The forward pass is written as the masked sum above, not ``max``, so that ``jax.grad``
of funcnn's own forward routes ties exactly as its backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from funcnn.backend import array_namespace
from funcnn.layers._base import Layer, ShapeError, check_input, positive_pair
from funcnn.layers._windows import fold, out_size, windows

__all__ = ["AvgPool2D", "MaxPool2D"]


@dataclass(frozen=True)
class _Pool2D(Layer):
    window: int | tuple[int, int] = 2
    stride: int | tuple[int, int] | None = None
    drop_remainder: bool = False

    def __post_init__(self):
        name = type(self).__name__
        window = positive_pair(name, "window", self.window)
        stride = window if self.stride is None else positive_pair(name, "stride", self.stride)
        if not isinstance(self.drop_remainder, bool):
            raise TypeError(f"{name} drop_remainder must be True or False; "
                            f"got {self.drop_remainder!r}")
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "stride", stride)

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ShapeError(self, in_shape, "expects images of shape (m, H, W, C), channels "
                             f"last; got {len(in_shape) + 1}-D inputs")
        out = []
        for axis, size, k, s in zip(("rows", "columns"), in_shape[:2], self.window, self.stride,
                                    strict=True):
            if k > size:
                raise ShapeError(self, in_shape, f"the {self.window[0]}x{self.window[1]} "
                                 f"window is larger than the {in_shape[0]}x{in_shape[1]} input")
            left = (size - k) % s
            if left and not self.drop_remainder:
                raise ShapeError(self, in_shape, f"windows of {k} with stride {s} do not tile "
                                 f"{size} {axis}: the last {left} would be in no window; pad "
                                 "or crop the input (padding='same' in the convolution before), "
                                 "or pass drop_remainder=True to drop them as PyTorch and "
                                 "Keras do")
            out.append(out_size(size, k, s))
        return (*out, in_shape[2])

    def _windows(self, x):
        check_input(self, x, 4, "(m, H, W, C)")
        self.output_shape(x.shape[1:])
        return windows(x, self.window, self.stride)  # (m, Ho, Wo, kh * kw, C)


@dataclass(frozen=True)
class MaxPool2D(_Pool2D):
    """The maximum of each ``window`` (``k`` or ``(kh, kw)``), moved by ``stride``
    (default: the window). On ties the gradient goes to the first maximum in row-major
    order within the window (see the module's docstring).

    Windows that do not tile the input (``(H - kh) % sh != 0``: rows in no window) are
    refused unless ``drop_remainder=True``, which drops those rows and columns as PyTorch,
    Keras and flax do without asking.
    """

    def forward(self, params, state, x, *, train, key=None):
        xp = array_namespace(x)
        win = self._windows(x)                                   # (m, Ho, Wo, k, C)
        first = xp.argmax(win, axis=3)[:, :, :, None, :]         # (m, Ho, Wo, 1, C)
        taps = xp.arange(win.shape[3], dtype=first.dtype).reshape(1, 1, 1, -1, 1)
        mask = first == taps                                     # one-hot over the window
        y = xp.where(mask, win, 0).sum(axis=3)                   # (m, Ho, Wo, C)
        return y, (x, mask), state

    def backward(self, params, cache, dy):
        x, mask = cache
        dwin = array_namespace(dy).where(mask, dy[:, :, :, None, :], 0)  # (m, Ho, Wo, k, C)
        return (), fold(dwin, x.shape[1:3], self.window, self.stride)  # (m, H, W, C)


@dataclass(frozen=True)
class AvgPool2D(_Pool2D):
    """The mean of each ``window`` (``k`` or ``(kh, kw)``), moved by ``stride`` (default:
    the window); non-tiling windows as for :class:`MaxPool2D`."""

    def forward(self, params, state, x, *, train, key=None):
        return self._windows(x).mean(axis=3), x, state

    def backward(self, params, cache, dy):
        x = cache
        k = self.window[0] * self.window[1]
        shape = (*dy.shape[:3], k, dy.shape[3])
        dwin = array_namespace(dy).broadcast_to(dy[:, :, :, None, :] / k, shape)
        return (), fold(dwin, x.shape[1:3], self.window, self.stride)  # (m, H, W, C)

