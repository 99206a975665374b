"""Type aliases shared across funcnn (documentation only; nothing is checked by them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

__all__ = ["Array", "Grads", "Key", "OptState", "Params", "Schedule"]

Array: TypeAlias = Any
"""A NumPy array, a jax array or a jax tracer."""

Params: TypeAlias = Any
"""A pytree of arrays; for an MLP a tuple of ``Dense(W, b)``, one per layer."""

Grads: TypeAlias = Any
"""A pytree with the structure of ``Params``."""

OptState: TypeAlias = Any
"""An optimizer's state: a NamedTuple with the step ``count`` inside."""

Key: TypeAlias = Any
"""A ``funcnn.random`` key (uint32 array of shape (2,)) or an int seed where accepted."""

Schedule: TypeAlias = Callable[[Any], Any]
"""A learning rate as a pure function of the step count."""
