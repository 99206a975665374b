"""Learning-rate schedules against their closed forms, on Python, NumPy and jax steps."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import schedules

STEPS = (0, 1, 7, 10, 25, 99, 100, 101, 250)


def closed_constant(step, value):
    return value


def closed_exponential(step, init, rate, every, staircase=False):
    exponent = step // every if staircase else step / every
    return init * rate**exponent


def closed_cosine(step, init, decay_steps, alpha=0.0):
    t = min(step, decay_steps) / decay_steps
    return init * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)) + alpha)


def closed_warmup_cosine(step, peak, warmup, decay_steps, init=0.0, end=0.0):
    if step < warmup:
        return init + (peak - init) * step / warmup
    t = min(max((step - warmup) / (decay_steps - warmup), 0.0), 1.0)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))


CASES = {
    "constant": (schedules.constant(0.3), lambda s: closed_constant(s, 0.3)),
    "exponential": (schedules.exponential_decay(0.1, 0.5, 10),
                    lambda s: closed_exponential(s, 0.1, 0.5, 10)),
    "exponential_staircase": (schedules.exponential_decay(0.1, 0.5, 10, staircase=True),
                              lambda s: closed_exponential(s, 0.1, 0.5, 10, True)),
    "step_decay": (schedules.step_decay(1.0, 0.1, 25),
                   lambda s: closed_exponential(s, 1.0, 0.1, 25, True)),
    "cosine": (schedules.cosine_decay(0.2, 100), lambda s: closed_cosine(s, 0.2, 100)),
    "cosine_alpha": (schedules.cosine_decay(0.2, 100, alpha=0.1),
                     lambda s: closed_cosine(s, 0.2, 100, 0.1)),
    "warmup_cosine": (schedules.warmup_cosine_decay(1.0, 10, 100, init_value=0.1,
                                                    end_value=0.01),
                      lambda s: closed_warmup_cosine(s, 1.0, 10, 100, 0.1, 0.01)),
    "warmup_zero": (schedules.warmup_cosine_decay(0.5, 0, 100),
                    lambda s: closed_warmup_cosine(s, 0.5, 0, 100)),
}

STEP_KINDS = {
    "int": (lambda s: s, 1e-12),
    "numpy_int64": (np.int64, 1e-12),
    "numpy_int32_0d": (lambda s: np.array(s, np.int32), 1e-12),
    # jax schedules compute in float32: near the end of a cosine 1 + cos(pi t) cancels,
    # so the error is float32 rounding of the peak value, not of the small result
    "jax_int32": (lambda s: jnp.asarray(s, jnp.int32), 1e-6),
}


@pytest.mark.parametrize("kind", sorted(STEP_KINDS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_matches_closed_form(name, kind):
    schedule, closed = CASES[name]
    make_step, rtol = STEP_KINDS[kind]
    for step in STEPS:
        got = schedule(make_step(step))
        assert np.shape(got) == ()
        np.testing.assert_allclose(float(got), closed(step), rtol=rtol,
                                   atol=1e-12 if rtol < 1e-9 else 1e-7, err_msg=f"step {step}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_under_jit(name):
    schedule, closed = CASES[name]
    steps = jnp.asarray(STEPS, jnp.int32)
    got = jax.jit(jax.vmap(schedule))(steps)
    # jax's default float: float64 here, since the test session enables jax_enable_x64,
    # so that float64 params get a float64 learning rate
    assert got.dtype == jnp.result_type(float)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), [closed(s) for s in STEPS], rtol=1e-6,
                               atol=1e-7)


def test_warmup_then_cosine_endpoints():
    sched = schedules.warmup_cosine_decay(peak_value=2.0, warmup_steps=20, decay_steps=120,
                                          init_value=0.5, end_value=0.1)
    assert float(sched(0)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(0.5 + 1.5 * 10 / 20)
    assert float(sched(20)) == pytest.approx(2.0)  # the peak, at the end of warm-up
    assert float(sched(70)) == pytest.approx(0.1 + 1.9 * 0.5)  # half-way down
    assert float(sched(120)) == pytest.approx(0.1)
    assert float(sched(10_000)) == pytest.approx(0.1)  # flat after the decay
    values = [float(sched(s)) for s in range(121)]
    assert all(a < b for a, b in zip(values[:20], values[1:21], strict=True))
    assert all(a >= b for a, b in zip(values[20:-1], values[21:], strict=True))


def test_cosine_is_flat_after_decay_steps():
    sched = schedules.cosine_decay(1.0, 50, alpha=0.2)
    assert float(sched(50)) == pytest.approx(0.2)
    assert float(sched(5_000)) == pytest.approx(0.2)


def test_schedules_are_frozen_and_compare_by_value():
    assert schedules.constant(0.1) == schedules.constant(0.1)
    assert hash(schedules.cosine_decay(0.1, 10)) == hash(schedules.cosine_decay(0.1, 10))
    assert schedules.cosine_decay(0.1, 10) != schedules.cosine_decay(0.1, 11)
    assert schedules.step_decay(1.0, 0.5, 3) == schedules.exponential_decay(1.0, 0.5, 3, True)
    with pytest.raises(AttributeError):
        schedules.constant(0.1).value = 0.2


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: schedules.exponential_decay(0.1, 0.5, 0), ValueError, "transition_steps"),
        (lambda: schedules.exponential_decay(0.1, 0.5, 2.5), TypeError, "transition_steps"),
        (lambda: schedules.exponential_decay(0.1, 0.0, 10), ValueError, "decay_rate"),
        (lambda: schedules.exponential_decay(0.1, -0.5, 10), ValueError, "decay_rate"),
        (lambda: schedules.step_decay(0.1, 0.5, 0), ValueError, "every must be positive"),
        (lambda: schedules.cosine_decay(0.1, 0), ValueError, "decay_steps"),
        (lambda: schedules.cosine_decay(0.1, -5), ValueError, "decay_steps"),
        (lambda: schedules.warmup_cosine_decay(1.0, 100, 100), ValueError, "warmup_steps"),
        (lambda: schedules.warmup_cosine_decay(1.0, -1, 100), ValueError, "warmup_steps"),
        (lambda: schedules.warmup_cosine_decay(1.0, 10, 0), ValueError, "decay_steps"),
    ],
)
def test_schedule_validation(make, error, match):
    with pytest.raises(error, match=match):
        make()
