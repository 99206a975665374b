"""Weight initializers: He, Glorot (Xavier) and LeCun, normal and uniform.

Each draws a ``(fan_in, fan_out)`` matrix with variance ``scale / fan``:

==============  =====  ===================  ==============================
name            scale  fan                  used by default for
==============  =====  ===================  ==============================
he_*            2      fan_in               relu, leaky_relu, elu, gelu, softplus
glorot_*        1      (fan_in + fan_out)/2 tanh, sigmoid, identity
lecun_*         1      fan_in               (on request)
==============  =====  ===================  ==============================

``*_normal`` samples N(0, scale/fan); ``*_uniform`` samples U(-l, l) with
``l = sqrt(3 scale / fan)``, which has the same variance. ``xavier_*`` are
aliases of ``glorot_*``; ``he``, ``glorot``/``xavier`` and ``lecun`` name the
normal forms except ``glorot``, which is uniform (the common default).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from funcnn import random

__all__ = ["INITIALIZERS", "default_initializer", "get_initializer", "initialize"]

_RULES = {  # name -> (scale, fan rule, distribution)
    "he_normal": (2.0, "in", "normal"),
    "he_uniform": (2.0, "in", "uniform"),
    "glorot_normal": (1.0, "avg2", "normal"),
    "glorot_uniform": (1.0, "avg2", "uniform"),
    "lecun_normal": (1.0, "in", "normal"),
    "lecun_uniform": (1.0, "in", "uniform"),
}
_ALIASES = {
    "he": "he_normal",
    "kaiming": "he_normal",
    "glorot": "glorot_uniform",
    "xavier": "glorot_uniform",
    "xavier_normal": "glorot_normal",
    "xavier_uniform": "glorot_uniform",
    "lecun": "lecun_normal",
}
INITIALIZERS = tuple(_RULES) + tuple(_ALIASES)

_RELU_FAMILY = ("relu", "leaky_relu", "elu", "gelu", "softplus")


def default_initializer(hidden: str) -> str:
    """He for the ReLU family, Glorot for tanh, sigmoid and identity."""
    return "he_normal" if hidden in _RELU_FAMILY else "glorot_uniform"


def get_initializer(name: str) -> str:
    """The canonical name of an initializer (aliases resolved)."""
    canonical = _ALIASES.get(name, name) if isinstance(name, str) else None
    if canonical not in _RULES:
        raise ValueError(
            f"unknown initializer {name!r}; expected one of {', '.join(INITIALIZERS)} "
            "or a callable (key, shape, dtype) -> array"
        )
    return canonical


def initialize(init: str | Callable[..., Any], key: Any, shape: tuple[int, int], dtype: Any):
    """Draw a weight matrix of ``shape = (fan_in, fan_out)``."""
    if callable(init):
        return init(key, shape, dtype)
    scale, fan_rule, dist = _RULES[get_initializer(init)]
    fan_in, fan_out = shape
    fan = fan_in if fan_rule == "in" else (fan_in + fan_out) / 2
    std = math.sqrt(scale / fan)
    if dist == "normal":
        return random.normal(key, shape, dtype) * std
    limit = math.sqrt(3.0) * std
    return random.uniform(key, shape, dtype, -limit, limit)
