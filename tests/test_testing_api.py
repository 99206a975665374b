"""funcnn.testing: gradient checks with labelled per-leaf reports, with and without jax."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import funcnn
from funcnn.mlp import Dense
from funcnn.testing import (
    GradientMismatch,
    LeafReport,
    check_gradient,
    check_grads,
    check_loss,
    finite_difference_grads,
)
from funcnn.tree import tree_map

ROOT = Path(__file__).resolve().parents[1]


def cubic(p):
    """f(p) = sum(W^3) + sum(b^2); works on NumPy and jax arrays alike."""
    return (p.W**3).sum() + (p.b**2).sum()


def cubic_params():
    rng = np.random.default_rng(0)
    return Dense(rng.normal(size=(3, 2)), rng.normal(size=2))


def cubic_grad(p):
    return Dense(3 * p.W**2, 2 * p.b)


def test_gradient_mismatch_is_an_assertion_error():
    assert issubclass(GradientMismatch, AssertionError)


@pytest.mark.parametrize("reference", ["jax", "finite_differences"])
def test_check_gradient_on_a_user_function(reference):
    p = cubic_params()
    reports = check_gradient(cubic, cubic_grad(p), p, reference=reference)
    assert [r.path for r in reports] == ["params.W", "params.b"]
    assert all(isinstance(r, LeafReport) for r in reports)
    assert max(r.rel_error for r in reports) < (1e-7 if reference == "jax" else 1e-5)

    wrong = Dense(2 * p.W**2, 2 * p.b)  # d/dW W^3 is not 2 W^2
    with pytest.raises(GradientMismatch) as info:
        check_gradient(cubic, wrong, p, reference=reference)
    message = str(info.value)
    assert "params.W" in message and "params.b" not in message
    assert "1 of 2 leaves" in message
    with pytest.raises(GradientMismatch, match=r"theta\.W"):
        check_gradient(cubic, wrong, p, reference=reference, name="theta")


def test_check_gradient_reports_the_worst_element():
    p = cubic_params()
    g = cubic_grad(p)
    off = Dense(g.W.copy(), g.b)
    off.W[2, 1] += 0.5
    with pytest.raises(GradientMismatch, match=r"at \(2, 1\)"):
        check_gradient(cubic, off, p)
    reports = check_gradient(cubic, off, p, rtol=1.0)  # a loose tolerance lets it pass
    w = reports[0]
    assert w.worst_index == (2, 1)
    np.testing.assert_allclose(w.max_abs_error, 0.5, rtol=1e-9)
    np.testing.assert_allclose(w.got - w.expected, 0.5, rtol=1e-9)
    np.testing.assert_allclose(w.rel_error, 0.5 / np.abs(3 * p.W**2).max(), rtol=1e-9)


def test_check_gradient_tolerances():
    p = cubic_params()
    slightly_off = tree_map(lambda g: g * (1 + 1e-6), cubic_grad(p))
    with pytest.raises(GradientMismatch):
        check_gradient(cubic, slightly_off, p)  # default rtol 1e-7 against jax
    check_gradient(cubic, slightly_off, p, rtol=1e-5)
    check_gradient(cubic, slightly_off, p, atol=1e-3)


def test_check_gradient_refuses_malformed_input():
    p = cubic_params()
    g = cubic_grad(p)
    with pytest.raises(ValueError, match="reference"):
        check_gradient(cubic, g, p, reference="autograd")
    with pytest.raises(GradientMismatch, match="leaves"):
        check_gradient(cubic, (g.W,), p)
    with pytest.raises(GradientMismatch, match="shape"):
        check_gradient(cubic, Dense(g.W.T, g.b), p)
    with pytest.raises(GradientMismatch, match=r"params\.b"):
        check_gradient(cubic, Dense(g.W, np.full(2, np.nan)), p)


def test_check_gradient_accepts_jax_and_float32_grads():
    p = cubic_params()
    g32 = funcnn.to_backend(cubic_grad(p), "jax", dtype="float32")
    assert g32.W.dtype == jnp.float32
    reports = check_gradient(cubic, g32, funcnn.to_backend(p, "jax", dtype="float32"),
                             rtol=1e-6)
    assert 0 < max(r.rel_error for r in reports) < 1e-6  # float32 rounding, checked in f64


def test_finite_difference_grads_direct():
    p = cubic_params()
    est, mask = finite_difference_grads(cubic, p)
    assert type(est) is Dense and mask.W.all() and mask.b.all()
    np.testing.assert_allclose(est.W, 3 * p.W**2, rtol=1e-7)
    np.testing.assert_allclose(est.b, 2 * p.b, rtol=1e-7)
    est, mask = finite_difference_grads(cubic, p, max_per_leaf=2, key=3)
    assert mask.W.sum() == 2 and mask.b.sum() == 2
    assert np.count_nonzero(est.W[~mask.W]) == 0
    np.testing.assert_allclose(est.W[mask.W], (3 * p.W**2)[mask.W], rtol=1e-7)


# ---------------------------------------------------------------------- check_grads


def test_check_grads_returns_labelled_reports(make_params, backend):
    net = funcnn.MLP((5, 5, 5), hidden="tanh")  # the shapes of test_grads (jax compiles)
    params = make_params(net, 1, backend=backend, dtype="float32")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    y = rng.integers(0, 5, size=6)
    reports = check_grads(net, params, x, y)
    assert [r.path for r in reports] == ["params[0].W", "params[0].b", "params[1].W",
                                         "params[1].b"]
    for r in reports:
        assert isinstance(r, LeafReport)
        assert isinstance(r.rel_error, float) and 0 <= r.rel_error < 1e-7
    fd = check_grads(net, params, x, y, reference="finite_differences", max_per_leaf=5)
    assert [r.path for r in fd] == [r.path for r in reports]
    assert max(r.rel_error for r in fd) < 1e-5


def test_check_grads_accepts_a_loss_and_grads_pair(make_params):
    net = funcnn.MLP((5, 5, 5), output="sigmoid")
    params = make_params(net, 2)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 2, size=(6, 5)).astype(float)
    check_grads(net, params, x, y, grad_fn=funcnn.value_and_grad)

    def halved(net_, p, x_, y_):
        return tree_map(lambda g: g / 2, funcnn.value_and_grad(net_, p, x_, y_)[1])

    with pytest.raises(GradientMismatch, match=r"4 of 4 leaves"):
        check_grads(net, params, x, y, grad_fn=halved)


NO_JAX = """
import sys

class _NoJax:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib"):
            raise ImportError(f"jax is blocked in this test ({name})")
        return None

sys.meta_path.insert(0, _NoJax())
"""


def assert_prints_ok_without_jax(code: str, timeout: float = 120) -> None:
    """Run ``code`` (which starts with NO_JAX) in a fresh Python; it must print just "ok"."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FUNCNN_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.strip() == "ok"


@pytest.mark.slow
def test_finite_differences_work_without_jax():
    code = NO_JAX + textwrap.dedent("""
        import numpy as np
        import funcnn
        from funcnn.testing import GradientMismatch, check_gradient, check_grads

        def numpy_backprop(net, params, x, y):  # a user's own backward pass, NumPy only
            a1 = np.tanh(x @ params[0].W + params[0].b)
            z = a1 @ params[1].W + params[1].b
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            dz = (p - np.eye(z.shape[1])[y]) / x.shape[0]
            dz1 = (dz @ params[1].W.T) * (1 - a1**2)
            return (funcnn.Dense(x.T @ dz1, dz1.sum(0)), funcnn.Dense(a1.T @ dz, dz.sum(0)))

        net = funcnn.MLP((3, 4, 2), hidden="tanh")
        params = funcnn.init_params(net, 0, dtype="float64")
        params = tuple(funcnn.Dense(l.W, l.b + 0.3) for l in params)
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(5, 3)), rng.integers(0, 2, size=5)
        reports = check_grads(net, params, x, y, reference="finite_differences",
                              grad_fn=numpy_backprop)
        assert len(reports) == 4 and max(r.rel_error for r in reports) < 1e-6
        check_grads(net, params, x, y, reference="finite_differences")

        def wrong(net, params, x, y):
            g = numpy_backprop(net, params, x, y)
            return (g[0], funcnn.Dense(g[1].W * 2, g[1].b))
        try:
            check_grads(net, params, x, y, reference="finite_differences", grad_fn=wrong)
        except GradientMismatch as err:
            assert "params[1].W" in str(err) and "params[0].W" not in str(err), str(err)
        else:
            raise SystemExit("a wrong gradient passed")

        p = funcnn.Dense(np.arange(1.0, 7.0).reshape(3, 2), np.ones(2))
        check_gradient(lambda q: (q.W**3).sum() + (q.b**2).sum(),
                       funcnn.Dense(3 * p.W**2, 2 * p.b), p, reference="finite_differences")
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # the default reference is jax: without it, finite differences referee, saying so
            reports = check_gradient(lambda q: (q.W**3).sum(), funcnn.Dense(3 * p.W**2, 0 * p.b),
                                     p)
            assert max(r.rel_error for r in reports) < 1e-6, reports
            try:
                check_gradient(lambda q: (q.W**3).sum(), funcnn.Dense(p.W, 0 * p.b), p)
            except GradientMismatch as err:
                assert "params.W" in str(err) and "finite differences" in str(err), str(err)
            else:
                raise SystemExit("a wrong gradient passed the fallback check")
        assert any("jax is not installed" in str(w.message) for w in caught), caught
        assert "jax" not in sys.modules
        print("ok")
    """)
    assert_prints_ok_without_jax(code)


# ---------------------------------------------------------------------------- check_loss


@pytest.mark.parametrize("reference", ["jax", "finite_differences"])
@pytest.mark.parametrize("loss", sorted(funcnn.losses.LOSSES))
def test_every_builtin_loss_passes_check_loss_with_its_defaults(loss, reference):
    """A correct built-in loss must pass on its own output (issue 17: binary cross-entropy
    was checked on softmax, a pairing MLP refuses, and reported an error of 0.5)."""
    reports = check_loss(loss, reference=reference)
    assert [r.dtype for r in reports] == ["float32", "float64"]
    assert all(r.error <= 1e-5 for r in reports), reports


@pytest.mark.parametrize("loss, output", [
    ("binary_cross_entropy", "softmax"), ("binary_cross_entropy", "tanh"),
    ("cross_entropy", "sigmoid"), ("cross_entropy", "identity"),
])
def test_check_loss_refuses_a_pairing_mlp_refuses(loss, output):
    with pytest.raises(ValueError) as by_mlp:
        funcnn.MLP((2, 3), output=output, loss=loss)
    with pytest.raises(ValueError) as by_check:
        check_loss(loss, output=output)
    assert str(by_check.value) == str(by_mlp.value)
    assert f"needs output {funcnn.losses.LOSSES[loss].outputs[0]}" in str(by_check.value)


def test_check_loss_checks_mse_on_any_output():
    # MSE takes any output: softmax (its Jacobian-vector product) by default, or one given
    assert check_loss("mse") == check_loss("mse", output="softmax")
    for output in ("sigmoid", "tanh", "identity"):
        assert all(r.error <= 1e-5 for r in check_loss("mse", output=output))
