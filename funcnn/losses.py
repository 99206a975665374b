"""Losses, fused with the output activation, each beside its gradient ``dL/dz``.

Every loss is the **mean over the batch** and is computed from the output
layer's pre-activation ``z`` (the logits) of shape ``(m, k)``:

================  ===========  ====================================  =========================
loss              output       value                                 delta ``dL/dz``
================  ===========  ====================================  =========================
cross_entropy     softmax      mean_i [logsumexp(z_i) - z_i[y_i]]    ``(p sum(Y) - Y) / m``
binary_cross_...  sigmoid      mean_ij [softplus(z_ij) - y_ij z_ij]  ``(p - y) / (m k)``
mse               any          mean_ij (a_ij - y_ij)^2               ``2 (a - y) / (m k) * a'``
================  ===========  ====================================  =========================

``Y`` is the one-hot (or probability) target; for rows that sum to 1 the
cross-entropy delta is the familiar ``(p - Y) / m``. Cross-entropy uses log-sum-exp and
binary cross-entropy uses the log-sigmoid identity
``-[y log s(z) + (1 - y) log(1 - s(z))] = softplus(z) - y z``, so logits of
``+-1e4`` give finite values. For mean squared error the output may be any
activation; its derivative (or, for softmax, its Jacobian-vector product) is
applied to ``dL/da``.

Targets ``y`` are prepared by :func:`prepare_targets`: integer labels of shape
``(m,)`` for cross-entropy (or rows of shape ``(m, k)``), and for the others an
array broadcast-free to ``(m, k)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from funcnn import _fused
from funcnn.activations import check_piece, get_activation, softplus
from funcnn.backend import array_namespace

__all__ = [
    "LOSSES",
    "Loss",
    "binary_cross_entropy",
    "cross_entropy",
    "default_loss",
    "get_loss",
    "is_classification",
    "mse",
    "one_hot",
    "prepare_targets",
]

_DEFAULT_LOSS = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy"}


class Loss(NamedTuple):
    """A loss: ``value(output, z, a, y) -> scalar`` and ``delta(output, z, a, y) -> dL/dz``.

    ``z`` are the output layer's logits ``(m, k)``, ``a`` the output activation of them,
    ``output`` the net's output activation (a name or an ``Activation``) and ``y`` the
    targets ``(m, k)``. ``value`` is the mean over the batch and ``delta`` its exact
    gradient with respect to ``z`` (so it carries the ``1/m``). ``outputs`` lists the
    output activations it accepts by name (``None``: any). A loss of your own goes to
    ``funcnn.MLP(loss=...)`` and is checked with ``funcnn.testing.check_loss``.
    """

    name: str
    value: Callable[..., Any]
    delta: Callable[..., Any]
    outputs: tuple[str, ...] | None = None


def one_hot(y, k, dtype):
    """Rows ``(..., k)`` with a 1 at each label of ``y`` (shape ``(...)``), no checks.

    A label outside ``[0, k)`` gives a row of zeros (``funcnn.data.one_hot`` checks them).
    """
    xp = array_namespace(y)
    classes = xp.arange(k, dtype=y.dtype).reshape((1,) * y.ndim + (k,))
    return (y[..., None] == classes).astype(dtype)


def _logsumexp(z):
    xp = array_namespace(z)
    zmax = xp.max(z, axis=-1, keepdims=True)
    return zmax + xp.log(xp.sum(xp.exp(z - zmax), axis=-1, keepdims=True))


# cross-entropy on softmax: L = mean_i [logsumexp(z_i) - <Y_i, z_i>];  dL/dz = (p - Y) / m
def cross_entropy(output, z, a, y):
    """Mean cross-entropy of ``softmax(z)``, ``(m, k)``, against labels ``(m,)`` or rows.

    A label outside ``[0, k)`` makes the loss NaN, and its gradient too (by
    :func:`cross_entropy_delta` and by ``jax.grad`` of this function alike), never a
    wrapped class: ``-1`` is not the last class. The checked entry points
    (``funcnn.loss``, ``value_and_grad``, ``fit``, ...) refuse such a label with a
    ``ValueError`` before computing; only under ``jax.jit``, where values cannot be
    checked, does it reach here.
    """
    fused = _fused.cross_entropy(z, y)  # fused: one pass for NumPy labels, else None
    if fused is not None:
        return fused
    xp = array_namespace(z)
    m, k = z.shape
    logp = z - _logsumexp(z)
    if y.ndim == 1:
        valid = (y >= 0) & (y < k)
        picked = xp.take_along_axis(logp, xp.where(valid, y, 0)[:, None], axis=1)[:, 0]
        # times NaN, not where(valid, picked, nan): the NaN must reach the gradient too
        return -xp.sum(picked * xp.where(valid, 1.0, xp.nan).astype(z.dtype)) / m
    return -xp.sum(y * logp) / m


def cross_entropy_delta(output, z, a, y):
    fused = _fused.cross_entropy_delta(a, y)  # fused: one pass for NumPy labels, else None
    if fused is not None:
        return fused
    m, k = z.shape
    if y.ndim == 1:
        # A label outside [0, k) (possible only under jit, where it cannot be checked)
        # makes its row NaN, as it makes the loss NaN, instead of a silently wrong gradient.
        xp = array_namespace(z)
        valid = ((y >= 0) & (y < k))[:, None]
        return xp.where(valid, a - one_hot(y, k, z.dtype), xp.nan) * (1.0 / m)
    # rows that need not sum to 1 (unnormalised weights): dL/dz = (p * sum(Y) - Y) / m
    return (a * array_namespace(y).sum(y, axis=1, keepdims=True) - y) * (1.0 / m)


# binary cross-entropy on sigmoid: L = mean_ij [softplus(z) - y z];  dL/dz = (p - y) / (m k)
def binary_cross_entropy(output, z, a, y):
    """Mean binary cross-entropy of ``sigmoid(z)`` against targets in [0, 1], both ``(m, k)``."""
    return array_namespace(z).sum(softplus(z) - y * z) / z.size


def binary_cross_entropy_delta(output, z, a, y):
    return (a - y) * (1.0 / z.size)


# mean squared error: L = mean_ij (a - y)^2;  dL/da = 2 (a - y) / (m k), then through the output
def mse(output, z, a, y):
    """Mean squared error of the output ``a`` against ``y``, both ``(m, k)``."""
    diff = a - y
    return array_namespace(z).sum(diff * diff) / z.size


def mse_delta(output, z, a, y):
    da = (a - y) * (2.0 / z.size)
    if output == "softmax":  # Jacobian-vector product: p * (da - <da, p>)
        return a * (da - array_namespace(z).sum(da * a, axis=-1, keepdims=True))
    return da * get_activation(output).grad(z, a)


LOSSES: dict[str, Loss] = {
    "cross_entropy": Loss("cross_entropy", cross_entropy, cross_entropy_delta, ("softmax",)),
    "binary_cross_entropy": Loss(
        "binary_cross_entropy", binary_cross_entropy, binary_cross_entropy_delta, ("sigmoid",)
    ),
    "mse": Loss("mse", mse, mse_delta, None),
}


def get_loss(piece: str | Loss) -> Loss:
    """A loss, from its name or a :class:`Loss` of your own."""
    if isinstance(piece, Loss):
        return check_piece(piece, "loss", LOSSES, ("value", "delta"))
    try:
        return LOSSES[piece]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown loss {piece!r}; expected one of {', '.join(LOSSES)} or a "
            "funcnn.losses.Loss(name, value, delta) of your own"
        ) from None


def is_classification(loss: Any) -> bool:
    """True for the losses whose targets are classes (accuracy means something for them)."""
    return isinstance(loss, str) and loss in ("cross_entropy", "binary_cross_entropy")


def default_loss(output: Any) -> str:
    """The loss that goes with an output: softmax -> cross-entropy, sigmoid -> BCE, else MSE."""
    return _DEFAULT_LOSS.get(output, "mse") if isinstance(output, str) else "mse"


def prepare_targets(loss: str, y: Any, k: int, dtype: Any) -> Any:
    """Bring ``y`` into the form the loss computes with (no value checks here).

    cross_entropy: integer labels ``(m,)`` stay as they are, rows ``(m, k)`` are cast to
    ``dtype``; the others: ``(m,)`` becomes ``(m, 1)`` when ``k == 1`` and all are cast.
    """
    xp = array_namespace(y)
    y = xp.asarray(y)
    if loss == "cross_entropy" and y.ndim == 1:
        return y
    if y.ndim == 1:
        y = y[:, None]
    return y.astype(dtype)
