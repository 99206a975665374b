"""Learning-rate schedules: pure functions of the step count.

A schedule is a callable ``schedule(step) -> lr``; ``step`` is the optimizer's
``count`` before the update (0 on the first step), a Python int, a NumPy
scalar or a jax tracer. Every optimizer accepts a schedule wherever it accepts
a number for ``lr``. Schedules are frozen dataclasses, so two equal schedules
compare and hash equal (a jitted training loop is not compiled twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from funcnn._checks import check_count, check_positive
from funcnn.backend import array_namespace

__all__ = [
    "constant",
    "cosine_decay",
    "exponential_decay",
    "step_decay",
    "warmup_cosine_decay",
]


def _float(step):
    xp = array_namespace(step)
    # float64 on NumPy; on jax the default float (float64 only with jax_enable_x64)
    dtype = float if xp.__name__ == "numpy" else xp.result_type(float)
    return xp.asarray(step, dtype=dtype)


def _set_count(schedule, field: str, minimum: int = 1) -> None:
    """Check a step count of a frozen schedule and keep it as a Python int."""
    count = check_count(field, getattr(schedule, field), minimum=minimum)
    object.__setattr__(schedule, field, count)


@dataclass(frozen=True)
class constant:  # noqa: N801 - used like a function
    """``lr(step) = value``."""

    value: float

    def __post_init__(self):
        check_positive("value", self.value)

    def __call__(self, step):
        return self.value + 0.0 * _float(step)


@dataclass(frozen=True)
class exponential_decay:  # noqa: N801
    """``lr(step) = init_value * decay_rate ** (step / transition_steps)``.

    With ``staircase=True`` the exponent is rounded down (a step decay).
    """

    init_value: float
    decay_rate: float
    transition_steps: int
    staircase: bool = False

    def __post_init__(self):
        check_positive("init_value", self.init_value)
        _set_count(self, "transition_steps")
        check_positive("decay_rate", self.decay_rate)

    def __call__(self, step):
        xp = array_namespace(step)
        p = _float(step) / self.transition_steps
        if self.staircase:
            p = xp.floor(p)
        return self.init_value * self.decay_rate**p


def step_decay(init_value: float, factor: float, every: int) -> exponential_decay:
    """``lr(step) = init_value * factor ** floor(step / every)``."""
    return exponential_decay(init_value, factor, check_count("every", every), staircase=True)


@dataclass(frozen=True)
class cosine_decay:  # noqa: N801
    """Cosine from ``init_value`` down to ``alpha * init_value`` over ``decay_steps``, then flat."""

    init_value: float
    decay_steps: int
    alpha: float = 0.0

    def __post_init__(self):
        check_positive("init_value", self.init_value)
        _set_count(self, "decay_steps")
        check_positive("alpha", self.alpha, allow_zero=True)

    def __call__(self, step):
        xp = array_namespace(step)
        t = xp.minimum(_float(step), self.decay_steps) / self.decay_steps
        cos = 0.5 * (1 + xp.cos(math.pi * t))
        return self.init_value * ((1 - self.alpha) * cos + self.alpha)


@dataclass(frozen=True)
class warmup_cosine_decay:  # noqa: N801
    """Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    cosine decay to ``end_value`` at step ``decay_steps`` (counted from 0, warm-up included).
    """

    peak_value: float
    warmup_steps: int
    decay_steps: int
    init_value: float = 0.0
    end_value: float = 0.0

    def __post_init__(self):
        check_positive("peak_value", self.peak_value)
        check_positive("init_value", self.init_value, allow_zero=True)
        check_positive("end_value", self.end_value, allow_zero=True)
        _set_count(self, "decay_steps")
        _set_count(self, "warmup_steps", minimum=0)
        if not 0 <= self.warmup_steps < self.decay_steps:
            raise ValueError(
                f"warmup_steps must be in [0, decay_steps={self.decay_steps}); "
                f"got {self.warmup_steps}"
            )

    def __call__(self, step):
        xp = array_namespace(step)
        s = _float(step)
        warm = self.init_value + (self.peak_value - self.init_value) * s / max(
            self.warmup_steps, 1
        )
        span = self.decay_steps - self.warmup_steps
        t = xp.clip((s - self.warmup_steps) / span, 0.0, 1.0)
        cos = self.end_value + (self.peak_value - self.end_value) * 0.5 * (1 + xp.cos(math.pi * t))
        return xp.where(s < self.warmup_steps, warm, cos)
