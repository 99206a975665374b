"""Defects found by composing funcnn with jax transformations, each pinned by a test.

Every test here failed before its fix (see the commit that added it): value checks that
asked ``bool()`` of a traced value, autodiff derivatives that were wrong at exact zeros,
validation holes, and conveniences that surprised a new user.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnn
from funcnn.activations import ACTIVATIONS, OUTPUTS
from funcnn.optax_adapter import from_optax
from funcnn.testing import GradientMismatch, check_grads, check_optimizer
from funcnn.tree import tree_map

PAIRS = [(out, loss) for out in OUTPUTS for loss in ("cross_entropy", "binary_cross_entropy",
                                                      "mse")
         if (out, loss) in {("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy")}
         or loss == "mse"]


def _targets(net, m, rng):
    k = net.sizes[-1]
    if net.loss == "cross_entropy":
        return rng.integers(0, k, size=m)
    if net.loss == "binary_cross_entropy":
        return (rng.uniform(size=(m, k)) > 0.5).astype(np.float64)
    return rng.normal(size=(m, k))


# ---------------------------------------------------------------------------- 1. traced values


@pytest.mark.slow
@pytest.mark.parametrize("closed_over", ["jax", "numpy"])
def test_every_entry_point_runs_under_jit_with_closed_over_data(closed_over):
    net = funcnn.MLP((4, 8, 3))
    p = funcnn.init_params(net, 0, backend="jax", dtype="float64")
    xp = jnp if closed_over == "jax" else np
    X = xp.asarray(np.linspace(-1, 1, 24).reshape(6, 4))
    Y = xp.asarray(np.array([0, 1, 2, 0, 1, 2]))
    want_loss, want_grads = funcnn.value_and_grad(net, p, X, Y)

    g = jax.jit(jax.grad(lambda q: funcnn.loss(net, q, X, Y)))(p)
    vg = jax.jit(lambda q: funcnn.value_and_grad(net, q, X, Y))(p)
    out = jax.jit(lambda q: funcnn.forward(net, q, X)[0])(p)
    pred = jax.jit(lambda q: funcnn.predict(net, q, X))(p)
    bp = jax.jit(lambda q: funcnn.backprop(net, q, funcnn.forward(net, q, X)[1], Y))(p)
    for got in (g, vg[1], bp):
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want_grads),
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(vg[0], want_loss, rtol=1e-12)
    np.testing.assert_allclose(out, pred, rtol=1e-12)

    opt = funcnn.optim.adam(1e-2)
    step = funcnn.make_train_step(net, opt)
    jitted = jax.jit(lambda q, s: step(q, s, X, Y))
    q, s, loss = jitted(p, opt.init(p))
    assert np.isfinite(float(loss))

    def body(carry, _):
        q, s = carry
        q, s, loss = step(q, s, X, Y)
        return (q, s), loss

    (_, _), losses = jax.jit(lambda q, s: jax.lax.scan(body, (q, s), None, length=5))(
        p, opt.init(p))
    assert losses.shape == (5,) and np.all(np.diff(np.asarray(losses)) < 0)


def test_nan_in_closed_over_data_is_still_reported_outside_jit():
    net = funcnn.MLP((2, 3, 2))
    p = funcnn.init_params(net, 0, backend="jax")
    x = jnp.array([[0.0, jnp.nan]], dtype=jnp.float32)
    with pytest.raises(ValueError, match="NaN"):
        funcnn.loss(net, p, x, jnp.array([1]))


def test_labels_out_of_range_under_jit_give_nan_not_a_silently_wrong_gradient():
    net = funcnn.MLP((3, 4, 3))
    p = funcnn.init_params(net, 0, backend="jax", dtype="float64")
    x = jnp.ones((4, 3))

    @jax.jit
    def grads(q, y):
        return funcnn.backward(net, q, funcnn.apply(net, q, x), y)

    ok = grads(p, jnp.array([0, 1, 2, 1]))
    bad = grads(p, jnp.array([0, 1, 7, 1]))
    assert np.isfinite(np.asarray(ok[0].W)).all()
    assert np.isnan(np.asarray(bad[-1].W)).all()  # the bad row reaches every weight
    with pytest.raises(ValueError, match=r"y\[2\] = 7"):  # outside jit: a clear error
        funcnn.value_and_grad(net, p, x, jnp.array([0, 1, 7, 1]))


# ---------------------------------------------------------------------------- 2. kinks


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_autodiff_of_each_activation_is_its_derivative_at_zero(name):
    act = ACTIVATIONS[name]
    z = jnp.zeros((3,), dtype=jnp.float64)
    auto = jax.vmap(jax.grad(act.fn))(z)
    np.testing.assert_allclose(auto, act.grad(z, act.fn(z)), rtol=1e-15, atol=0)
    if name not in funcnn.testing.KINKED:  # smooth at 0: central differences agree too
        h = 1e-6
        fd = (np.asarray(act.fn(np.full(1, h))) - np.asarray(act.fn(np.full(1, -h)))) / (2 * h)
        np.testing.assert_allclose(auto[0], fd[0], rtol=1e-6)


def test_binary_cross_entropy_at_logit_zero():
    net = funcnn.MLP((1, 1), output="sigmoid")
    p = (funcnn.Dense(np.zeros((1, 1)), np.zeros(1)),)
    x, y = np.ones((1, 1)), np.ones((1, 1))
    g = funcnn.value_and_grad(net, p, x, y)[1]
    auto = jax.grad(lambda q: funcnn.loss(net, q, x, y))(funcnn.to_backend(p, "jax"))
    assert float(g[0].b[0]) == pytest.approx(-0.5, abs=1e-15)
    assert float(auto[0].b[0]) == pytest.approx(-0.5, abs=1e-15)


@pytest.mark.slow
@pytest.mark.parametrize("hidden", sorted(ACTIVATIONS))
@pytest.mark.parametrize(("output", "loss"), PAIRS)
def test_gradients_at_exact_zeros_against_jax_and_finite_differences(hidden, output, loss):
    """Zero biases and an all-zero input row put every first-layer pre-activation of that
    row exactly on 0; the checks must agree there (and skip only true kinks)."""
    net = funcnn.MLP((3, 4, 3), hidden=hidden, output=output, loss=loss)
    params = funcnn.init_params(net, 1, dtype="float64")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 3))
    x[0] = 0.0
    y = _targets(net, 5, rng)
    check_grads(net, params, x, y)  # jax.grad as referee, rtol 1e-7
    reports = check_grads(net, params, x, y, reference="finite_differences", max_per_leaf=None)
    if hidden not in funcnn.testing.KINKED and output not in funcnn.testing.KINKED:
        assert all(r.skipped == 0 for r in reports), reports


def test_finite_differences_skip_and_report_a_relu_kink_instead_of_failing():
    net = funcnn.MLP((2, 2, 2), hidden="relu")
    W = np.array([[1.0, -1.0], [0.5, 2.0]])
    params = (funcnn.Dense(W, np.zeros(2)),
              funcnn.Dense(np.array([[1.0, 2.0], [-1.0, 0.5]]), np.zeros(2)))
    x = np.array([[0.0, 0.0], [1.0, 1.0]])  # row 0 sits on the kink of both hidden units
    y = np.array([0, 1])
    reports = check_grads(net, params, x, y, reference="finite_differences", max_per_leaf=None)
    by_path = {r.path: r for r in reports}
    assert by_path["params[0].b"].skipped == 2  # both biases move row 0 across 0
    assert by_path["params[1].W"].skipped == 0


def test_an_all_zero_reference_leaf_gives_a_meaningful_relative_error():
    p = funcnn.Dense(np.ones((2, 2)), np.ones(2))
    f = lambda q: (q.W**2).sum()  # noqa: E731  d/db = 0
    with pytest.raises(GradientMismatch) as err:
        funcnn.testing.check_gradient(f, funcnn.Dense(2 * p.W, np.full(2, 1e-3)), p)
    assert "params.b: relative error 1 " in str(err.value), str(err.value)
    reports = funcnn.testing.check_gradient(f, funcnn.Dense(2 * p.W, np.zeros(2)), p)
    assert reports[1].rel_error == 0.0


# ---------------------------------------------------------------------------- 6. validation holes


def test_dropout_accepts_every_real_scalar_type():
    for p in (np.float32(0.5), np.float64(0.5), 0.5, np.float16(0.25)):
        assert funcnn.MLP((2, 3, 2), dropout=p).dropout == pytest.approx(float(p))
    with pytest.raises(ValueError, match="dropout"):
        funcnn.MLP((2, 3, 2), dropout=np.bool_(True))


def test_cross_entropy_rows_must_not_be_negative(backend):
    net = funcnn.MLP((2, 3))
    p = funcnn.init_params(net, 0, backend=backend)
    y = np.array([[0.5, 0.7, -0.2]], dtype=np.float32)
    with pytest.raises(ValueError, match=r"cross-entropy row targets must be >= 0"):
        funcnn.loss(net, p, np.ones((1, 2), np.float32), funcnn.to_backend(y, backend))


# One rule for 64-bit values on jax without jax_enable_x64 (funcnn.backend.check_jax_dtype):
# every way funcnn moves them to jax refuses, with the same sentence, naming the leaf.
X64_NET = funcnn.MLP((3, 4, 2))


def _x64_movers(tmp_path):
    """``{what: (call, the leaf named)}``: calls that must refuse without jax_enable_x64."""
    p64 = funcnn.init_params(X64_NET, 0, backend="numpy", dtype="float64")
    funcnn.save(tmp_path / "p64.npz", p64)
    opt = from_optax(optax.sgd(0.1))
    state = opt.init(p64)  # the session has x64 on: built before it is turned off
    x = np.ones((4, 3))
    return {
        "to_backend": (lambda: funcnn.to_backend(p64, "jax"), "tree[0].W"),
        "to_backend of labels past int32": (
            lambda: funcnn.to_backend((x.astype(np.float32), np.array([0, 2**31])), "jax"),
            "tree[1] is int64"),
        "to_backend's dtype": (lambda: funcnn.to_backend(x, "jax", "float64"), "dtype"),
        "init_params": (lambda: funcnn.init_params(X64_NET, 0, backend="jax", dtype="float64"),
                        "dtype"),
        "load": (lambda: funcnn.load(tmp_path / "p64.npz", backend="jax"), "params[0].W"),
        "checkpoint.convert": (lambda: funcnn.checkpoint.convert(p64, "jax", "params"),
                               "params[0].W"),
        "from_optax init": (lambda: opt.init(p64), "params[0].W"),
        "from_optax update": (lambda: opt.update(p64, p64, state), "params[0].W"),
        "fit with from_optax": (lambda: funcnn.fit(X64_NET, p64, opt, x, np.arange(4) % 2,
                                                   epochs=1, batch_size=2, key=0),
                                "params[0].W"),
    }


@pytest.mark.parametrize("what", ["to_backend", "to_backend of labels past int32",
                                  "to_backend's dtype",
                                  "init_params", "load", "checkpoint.convert", "from_optax init",
                                  "from_optax update", "fit with from_optax"])
def test_every_move_of_64_bit_values_to_jax_without_x64_is_refused(tmp_path, what):
    call, leaf = _x64_movers(tmp_path)[what]
    with jax.enable_x64(False), pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "which jax would silently turn into" in message and "jax_enable_x64" in message
    assert leaf in message, message


def test_32_bit_values_move_to_jax_without_x64_and_64_bit_ones_with_it():
    p32 = funcnn.init_params(X64_NET, 0, backend="numpy")
    p64 = funcnn.to_backend(p32, "numpy", "float64")
    grads32 = tree_map(np.ones_like, p32)
    with jax.enable_x64(False):
        assert funcnn.to_backend(np.ones(3), "jax", "float32").dtype == np.float32
        assert funcnn.to_backend((p32, 1.5, np.arange(3, dtype=np.int32)), "jax")[2].dtype \
            == np.int32
        labels = funcnn.to_backend(np.array([0, -3, 2**31 - 1]), "jax")  # int64 that fits
        assert labels.dtype == np.int32 and labels.tolist() == [0, -3, 2**31 - 1]
        opt = from_optax(optax.sgd(0.5))
        new, _ = opt.update(p32, grads32, opt.init(p32))
        assert type(new[0].W) is np.ndarray and new[0].W.dtype == np.float32
        np.testing.assert_allclose(new[0].W, p32[0].W - 0.5, rtol=1e-6)
    new, _ = opt.update(p64, funcnn.to_backend(grads32, "numpy", "float64"), opt.init(p64))
    assert type(new[0].W) is np.ndarray and new[0].W.dtype == np.float64  # x64 on: kept
    np.testing.assert_allclose(new[0].W, p64[0].W - 0.5, rtol=1e-15)


@pytest.mark.slow
def test_a_process_without_x64_refuses_float64_for_optax_and_to_backend():
    code = textwrap.dedent("""
        import jax, numpy as np, optax, funcnn
        assert not jax.config.jax_enable_x64
        p64 = funcnn.init_params(funcnn.MLP((2, 3)), 0, dtype="float64")
        for call in (lambda: funcnn.to_backend(p64, "jax"),
                     lambda: funcnn.optax_adapter.from_optax(optax.adam(1e-3)).init(p64)):
            try:
                call()
            except ValueError as err:
                assert "jax_enable_x64" in str(err), err
            else:
                raise AssertionError("float64 went to jax without x64")
        print("ok")
    """)
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------------------- 8. surprises


def test_raw_pixels_warn_and_scaled_ones_do_not():
    net = funcnn.MLP((4, 2))
    p = funcnn.init_params(net, 0)
    with pytest.warns(UserWarning, match="raw pixel"):
        funcnn.predict(net, p, np.array([[0, 128, 255, 3]], dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        funcnn.predict(net, p, np.array([[0, 1, 1, 0]], dtype=np.uint8))  # a 0/1 mask
        funcnn.predict(net, p, np.array([[0, 128, 255, 3]], dtype=np.float32) / 255)


def test_check_optimizer_takes_an_optimizer_as_its_subject():
    reports = check_optimizer(funcnn.optim.adam(1e-3), reference=funcnn.optim.adam(1e-3), steps=2)
    assert len(reports) == 2 and max(r.rel_error for r in reports[-1]) == 0.0
    with pytest.raises(GradientMismatch, match="step 1"):
        check_optimizer(funcnn.optim.adam(2e-3), reference=funcnn.optim.adam(1e-3), steps=2)


def test_an_int_dropout_key_passed_into_jit_draws_what_the_int_draws():
    net = funcnn.MLP((4, 8, 8, 3), dropout=0.5)
    p = funcnn.init_params(net, 0, backend="jax")
    x = jnp.ones((6, 4), dtype=jnp.float32)
    jitted = jax.jit(lambda q, k: funcnn.forward(net, q, x, key=k, train=True)[0])
    for seed in (0, 3, 2**31 - 1):
        want = funcnn.forward(net, p, x, key=seed, train=True)[0]
        np.testing.assert_array_equal(np.asarray(jitted(p, seed)), np.asarray(want))
    np.testing.assert_array_equal(funcnn.random.as_key(np.int64(2**40 + 5)),
                                  funcnn.random.key(2**40 + 5))


def test_finite_difference_reports_index_the_leaf_itself():
    p = funcnn.Dense(np.arange(1.0, 13.0).reshape(3, 4), np.ones(4))
    wrong = funcnn.Dense(3 * p.W**2, 2 * p.b)
    wrong.W[2, 1] += 1.0
    with pytest.raises(GradientMismatch, match=r"params\.W: .* at \(2, 1\)"):
        funcnn.testing.check_gradient(lambda q: (q.W**3).sum() + (q.b**2).sum(), wrong, p,
                                      reference="finite_differences", max_per_leaf=None)


# ---------------------------------------------------------------------------- 9. names in messages

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("JAX_ENABLE_X64", None)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _resolve(dotted: str):
    """``funcnn.a.b`` by attribute access from the imported package only, never an import."""
    obj = funcnn
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def test_the_names_in_the_optax_refusal_resolve_after_import_funcnn():
    with pytest.raises(TypeError) as info:
        funcnn.make_train_step(X64_NET, optax.sgd(1e-2))
    names = re.findall(r"funcnn(?:\.\w+)+", str(info.value))
    assert "funcnn.optax_adapter.from_optax" in names
    for name in names:
        assert callable(_resolve(name)), name
    assert _resolve("funcnn.optax_adapter.from_optax") is from_optax


@pytest.mark.slow
def test_funcnn_optax_adapter_is_an_attribute_of_a_fresh_import_that_needs_numpy_alone():
    out = _python(textwrap.dedent("""
        import sys, funcnn
        assert callable(funcnn.optax_adapter.from_optax)
        assert not {"jax", "optax"} & set(sys.modules), "import funcnn imported jax or optax"
        print("ok")
    """))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64, np.uint8])
def test_fit_and_evaluate_on_jax_take_labels_of_any_integer_width(label_dtype):
    """Accuracy compares argmax (int64 with x64 on) with the labels in their own dtype,
    under jax's strict promotion too: int32 labels (what to_backend gives without x64)
    and int64 ones count the same rows right."""
    x = np.linspace(-1.0, 1.0, 40, dtype=np.float32).reshape(20, 2)
    y = jnp.asarray((x[:, 0] > x[:, 1]).astype(label_dtype))
    net = funcnn.MLP((2, 4, 2))
    params = funcnn.init_params(net, 0, backend="jax")
    _, _, history = funcnn.fit(net, params, funcnn.optim.sgd(0.1), jnp.asarray(x), y,
                               epochs=1, batch_size=8, key=0, progress=False)
    want = funcnn.evaluate(net, params, x, np.asarray(y, np.int64))["accuracy"]
    assert funcnn.evaluate(net, params, jnp.asarray(x), y)["accuracy"] == want
    assert np.isfinite(history["loss"]).all()
