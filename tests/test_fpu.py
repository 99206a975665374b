"""Subnormal floats flushed to zero: the scope itself, and fit's NumPy epochs inside it."""

from __future__ import annotations

import platform
import sys

import numpy as np
import pytest

import funcnn
from funcnn._fpu import flush_denormals

TINY = np.finfo(np.float32).tiny  # the smallest normal float32, 1.18e-38
SUB = np.float32(1e-40)  # a subnormal float32
SUPPORTED = sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64")


def _is_subnormal(a) -> np.ndarray:
    a = np.asarray(a)
    return (a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)


def test_scope_flushes_inputs_and_results_and_restores():
    assert SUB * np.float32(1) == SUB  # outside: subnormals are kept
    with flush_denormals() as active:
        if not SUPPORTED:  # no MXCSR to set: the scope says so and changes nothing
            assert active is False
            assert SUB * np.float32(1) == SUB
            return
        assert active
        assert SUB * np.float32(1) == 0  # DAZ: a subnormal input reads as zero
        assert np.float32(1e-30) * np.float32(1e-10) == 0  # FTZ: a subnormal result is zero
        assert np.float64(1e-310) * 1.0 == 0  # float64 too
        with flush_denormals():
            pass
        assert SUB * np.float32(1) == 0  # an inner scope gives back the outer one's state
    assert SUB * np.float32(1) == SUB
    with pytest.raises(RuntimeError), flush_denormals():
        raise RuntimeError("boom")
    assert SUB * np.float32(1) == SUB  # restored after an exception too


def _decaying_moment_case():
    """A net whose W[0] gets a gradient only at step 0: with b1 = 0.5, Adam's first moment
    of those weights halves every step and is subnormal after ~125 steps, zero after ~150."""
    net = funcnn.MLP((2, 2), output="softmax")
    x = np.zeros((130, 2), np.float32)
    x[:, 1] = 1.0
    x[0, 0] = 1.0  # feature 0 is seen once
    y = (np.arange(130) % 2).astype(np.int64)
    opt = funcnn.optim.adam(1e-3, b1=0.5)
    return net, x, y, opt


def test_fit_numpy_flushes_a_decaying_moment_where_a_plain_loop_keeps_subnormals():
    net, x, y, opt = _decaying_moment_case()
    params = funcnn.init_params(net, 0)
    # the control: the same 130 steps in a plain loop outside any scope keep subnormals
    step, p, s = funcnn.make_train_step(net, opt), params, opt.init(params)
    for i in range(x.shape[0]):
        p, s, _ = step(p, s, x[i:i + 1], y[i:i + 1])
    if SUPPORTED:
        assert _is_subnormal(s.mu[0].W[0]).all()
    _, fitted, _ = funcnn.fit(net, params, opt, x, y, epochs=1, batch_size=1, key=0,
                              shuffle=False, progress=False)
    if SUPPORTED:
        assert not _is_subnormal(fitted.mu[0].W).any()
        np.testing.assert_array_equal(fitted.mu[0].W[0], 0.0)
    # everything else is the same update, to rounding
    np.testing.assert_allclose(fitted.mu[0].W[1], s.mu[0].W[1], rtol=1e-6)


def test_fit_numpy_flushes_as_xla_does():
    pytest.importorskip("jax")
    net, x, y, opt = _decaying_moment_case()
    params = funcnn.init_params(net, 0)
    fitted = {}
    for backend in ("numpy", "jax"):
        p = funcnn.to_backend(params, backend)
        xb, yb = (x, y) if backend == "numpy" else funcnn.to_backend((x, y), "jax")
        _, state, _ = funcnn.fit(net, p, opt, xb, yb, epochs=1, batch_size=1, key=0,
                                 shuffle=False, progress=False)
        fitted[backend] = np.asarray(state.mu[0].W)
    assert not _is_subnormal(fitted["jax"]).any()  # XLA on CPU flushes
    if SUPPORTED:
        np.testing.assert_array_equal(fitted["numpy"][0], fitted["jax"][0])
    np.testing.assert_allclose(fitted["numpy"], fitted["jax"], rtol=1e-5, atol=1e-30)
