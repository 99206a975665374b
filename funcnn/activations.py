"""Activation functions, each written beside its derivative.

Every activation is a pair ``(fn, grad)``: ``a = fn(z)`` and
``grad(z, a) = da/dz`` elementwise. The derivative may use ``z`` or the
already computed ``a``, whichever is cheaper (``sigmoid' = a (1 - a)``).
All are written against the array's own namespace, so they work on NumPy
arrays, jax arrays and under ``jax.jit``, and keep the input dtype.

Each ``fn`` is also written so that ``jax.grad`` of it is the true derivative
everywhere, at ``z = 0`` too (stable forms through ``logaddexp`` and ``where``
arrangements whose untaken branch is never differentiated): autodiff of
``funcnn.loss`` is a fair referee for the hand-written ``grad``. ReLU and leaky
ReLU have a true kink at 0, where both take the right-hand derivative's
neighbour convention of ``jax.nn.relu`` (0, and 0.01).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from funcnn.backend import array_namespace

__all__ = [
    "ACTIVATIONS",
    "OUTPUTS",
    "Activation",
    "elu",
    "gelu",
    "get_activation",
    "name_of",
    "identity",
    "leaky_relu",
    "relu",
    "sigmoid",
    "softmax",
    "softplus",
    "tanh",
]

LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715


class Activation(NamedTuple):
    """An elementwise activation: ``fn(z) -> a`` and ``grad(z, a) -> da/dz``.

    Write your own and pass it to ``funcnn.MLP(hidden=..., output=...)``::

        def swish(z):
            return z * funcnn.activations.sigmoid(z)

        def swish_grad(z, a):
            s = funcnn.activations.sigmoid(z)
            return s + a * (1 - s)                 # d/dz z s(z) = s + z s (1 - s)

        act = funcnn.activations.Activation("swish", swish, swish_grad)
        funcnn.testing.check_activation(act)       # the derivative against jax.grad

    Both functions take and return arrays of ``z``'s shape and dtype, on NumPy and jax
    alike (use ``funcnn.backend.array_namespace(z)`` for the namespace). Two activations
    made of the same name and functions are equal and hash equal, so a jitted loop is
    compiled once for them.
    """

    name: str
    fn: Callable[[Any], Any]
    grad: Callable[[Any, Any], Any]


# relu: a = max(z, 0);  a' = 1[z > 0]  (0 at z = 0, as jax.nn.relu). Written as
# max(z, 0) * 1[z > 0]: the same values (also for -inf and NaN), and jax.grad of it is 0
# at z = 0, where that of max alone is 1/2. Not `where(z > 0, z, 0)`: NumPy's where
# costs ~4.5 ns an element on mixed signs (branch misses), 6x this form.
def relu(z):
    """ReLU, ``max(z, 0)``, elementwise (derivative: ``relu_grad``)."""
    return array_namespace(z).maximum(z, 0) * (z > 0).astype(z.dtype)


def relu_grad(z, a):
    return (z > 0).astype(z.dtype)


# leaky_relu: a = z if z > 0 else 0.01 z;  a' = 1 or 0.01
def leaky_relu(z):
    """Leaky ReLU: ``z`` where ``z > 0``, else ``0.01 z``, elementwise."""
    return array_namespace(z).where(z > 0, z, LEAKY_SLOPE * z)


def leaky_relu_grad(z, a):
    xp = array_namespace(z)
    return xp.where(z > 0, xp.ones_like(z), xp.full_like(z, LEAKY_SLOPE))


# elu: a = z if z > 0 else alpha (e^z - 1);  a' = 1 or a + alpha
# (expm1 sees where(z > 0, 0, z), not minimum(z, 0): jax.grad of minimum halves at 0)
def elu(z):
    """ELU: ``z`` where ``z > 0``, else ``exp(z) - 1`` (alpha 1), elementwise."""
    xp = array_namespace(z)
    return xp.where(z > 0, z, ELU_ALPHA * xp.expm1(xp.where(z > 0, 0, z)))


def elu_grad(z, a):
    xp = array_namespace(z)
    return xp.where(z > 0, xp.ones_like(z), a + ELU_ALPHA)


# gelu (tanh form): a = z/2 (1 + tanh(u)),  u = c (z + k z^3)
#                   a' = (1 + t)/2 + z/2 (1 - t^2) c (1 + 3 k z^2),  t = tanh(u)
def gelu(z):
    """GELU, tanh form: ``z/2 (1 + tanh(sqrt(2/pi) (z + 0.044715 z**3)))``."""
    xp = array_namespace(z)
    return 0.5 * z * (1 + xp.tanh(_GELU_C * (z + _GELU_K * z**3)))


def gelu_grad(z, a):
    xp = array_namespace(z)
    t = xp.tanh(_GELU_C * (z + _GELU_K * z**3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_K * z * z)


# tanh: a = tanh(z);  a' = 1 - a^2
def tanh(z):
    """``tanh(z)``, elementwise."""
    return array_namespace(z).tanh(z)


def tanh_grad(z, a):
    return 1 - a * a


# sigmoid: a = 1 / (1 + e^-z) = (1 + tanh(z/2)) / 2 (no overflow);  a' = a (1 - a)
def sigmoid(z):
    """The logistic function ``1 / (1 + exp(-z))``, elementwise, without overflow."""
    return 0.5 * (array_namespace(z).tanh(0.5 * z) + 1)


def sigmoid_grad(z, a):
    return a * (1 - a)


# softplus: a = log(1 + e^z) = logaddexp(0, z) (stable, and its jax.grad is right at 0,
# where max(z, 0) + log1p(e^-|z|) differentiates to 0);  a' = sigmoid(z)
def softplus(z):
    """Softplus ``log(1 + exp(z))``, elementwise, without overflow."""
    return array_namespace(z).logaddexp(z, 0)


def softplus_grad(z, a):
    return sigmoid(z)


# identity: a = z;  a' = 1
def identity(z):
    """``z`` itself."""
    return z


def identity_grad(z, a):
    return array_namespace(z).ones_like(z)


# softmax over the last axis (an output only, not elementwise: its Jacobian-vector
# product lives in funcnn.losses).
def softmax(z):
    """Softmax over the last axis: each row of ``z`` becomes probabilities that sum to 1."""
    xp = array_namespace(z)
    e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("relu", relu, relu_grad),
        Activation("leaky_relu", leaky_relu, leaky_relu_grad),
        Activation("elu", elu, elu_grad),
        Activation("gelu", gelu, gelu_grad),
        Activation("tanh", tanh, tanh_grad),
        Activation("sigmoid", sigmoid, sigmoid_grad),
        Activation("softplus", softplus, softplus_grad),
        Activation("identity", identity, identity_grad),
    )
}


OUTPUTS: tuple[str, ...] = ("softmax", *ACTIVATIONS)
"""Output activations: softmax, or any elementwise activation."""


def name_of(piece: Any) -> str:
    """The name of an activation or loss given by name or as an object."""
    return piece if isinstance(piece, str) else piece.name


def get_activation(piece: str | Activation) -> Activation:
    """An elementwise activation, from its name or an :class:`Activation` of your own."""
    if isinstance(piece, Activation):
        if piece.name == "softmax":  # the losses fused with softmax would trust the name
            raise ValueError("a custom activation may not be named 'softmax', the built-in "
                             "output; give it another name")
        return check_piece(piece, "activation", ACTIVATIONS, ("fn", "grad"))
    try:
        return ACTIVATIONS[piece]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {piece!r}; expected one of {', '.join(ACTIVATIONS)} or a "
            "funcnn.activations.Activation(name, fn, grad) of your own"
        ) from None


def check_piece(piece: Any, kind: str, builtins: dict, functions: tuple[str, ...]) -> Any:
    """Raise unless a user-written activation or loss has a name and callable parts, and
    its name is not taken by a different built-in piece."""
    name = piece.name
    if not isinstance(name, str) or not name:
        raise TypeError(f"a custom {kind} needs a non-empty str name; got {name!r}")
    for field in functions:
        if not callable(getattr(piece, field)):
            raise TypeError(
                f"the custom {kind} {name!r} needs a callable {field}; got "
                f"{type(getattr(piece, field)).__name__}"
            )
    if name in builtins and builtins[name] != piece:
        raise ValueError(
            f"the custom {kind} is named {name!r}, the name of a built-in {kind}; give it "
            "another name (checkpoints and reports know pieces by name)"
        )
    return piece
