"""Sliding windows over channels-last images, and their transpose: what convolution and
pooling are built from, the same code on NumPy and jax.

``windows`` gathers every ``kh x kw`` window of a ``(m, H, W, C)`` image as ``kh * kw``
shifted strided slices, one per tap ``t = i * kw + j`` (row-major within the window)::

    win[:, a, b, t, :] = x[:, a * sh + i, b * sw + j, :]          (m, Ho, Wo, kh * kw, C)

``fold`` is its transpose (its backward pass): each tap's slice of ``dwin`` is added back
where it was taken from, so an element of ``x`` receives the sum over the windows it is
in. NumPy adds into a zero image in place; jax pads each tap to the image (with
``stride - 1`` zeros between rows) and sums, the transpose jax itself takes of a slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from funcnn.backend import array_namespace

__all__ = ["fold", "out_size", "windows"]


def out_size(size: int, window: int, stride: int) -> int:
    """How many windows fit along an axis of ``size``: ``(size - window) // stride + 1``."""
    return (size - window) // stride + 1


def _tap_slices(out_hw: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]):
    """``(t, rows, columns)``: the slices of the padded image that tap ``t`` reads."""
    (ho, wo), (kh, kw), (sh, sw) = out_hw, window, stride
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1,
                                                                           sw)


def windows(x: Any, window: tuple[int, int], stride: tuple[int, int]) -> Any:
    """``(m, H, W, C)`` -> ``(m, Ho, Wo, kh * kw, C)``, every window of ``x`` (see above)."""
    _, h, w, _ = x.shape
    out_hw = (out_size(h, window[0], stride[0]), out_size(w, window[1], stride[1]))
    taps = [x[:, rows, cols, :] for _, rows, cols in _tap_slices(out_hw, window, stride)]
    return array_namespace(x).stack(taps, axis=3)


def fold(dwin: Any, in_hw: tuple[int, int], window: tuple[int, int],
         stride: tuple[int, int]) -> Any:
    """The transpose of :func:`windows`: ``(m, Ho, Wo, kh * kw, C)`` -> ``(m, H, W, C)``
    with ``(H, W) = in_hw``, each window's values added back onto the image."""
    m, ho, wo, _, c = dwin.shape
    taps = _tap_slices((ho, wo), window, stride)
    if isinstance(dwin, np.ndarray):
        dx = np.zeros((m, *in_hw, c), dwin.dtype)
        for t, rows, cols in taps:
            dx[:, rows, cols, :] += dwin[:, :, :, t, :]  # one tap's slices never overlap
        return dx
    from jax import lax

    zero = np.zeros((), dwin.dtype)
    parts = []
    for t, rows, cols in taps:
        pad_h = (rows.start, in_hw[0] - rows.stop, stride[0] - 1)  # (before, after, between)
        pad_w = (cols.start, in_hw[1] - cols.stop, stride[1] - 1)
        parts.append(lax.pad(dwin[:, :, :, t, :], zero, ((0, 0, 0), pad_h, pad_w, (0, 0, 0))))
    return sum(parts[1:], parts[0])
