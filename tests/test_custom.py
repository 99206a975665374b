"""Activations and losses written by the user: they run everywhere funcnn's own do, and
the checks of funcnn.testing name a wrong derivative."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn
from funcnn.activations import ACTIVATIONS, Activation, sigmoid
from funcnn.backend import array_namespace
from funcnn.losses import Loss
from funcnn.testing import GradientMismatch, check_activation, check_grads, check_loss

ROOT = Path(__file__).resolve().parents[1]


def swish(z):
    return z * sigmoid(z)


def swish_grad(z, a):
    s = sigmoid(z)
    return s + a * (1 - s)


def swish_grad_wrong(z, a):
    return sigmoid(z) + a * (1 - a)  # a planted bug: (1 - a) where (1 - s) belongs


def log_cosh(output, z, a, y):
    xp = array_namespace(z)
    d = a - y
    return xp.sum(xp.logaddexp(d, -d) - np.log(2.0)) / z.size


def log_cosh_delta(output, z, a, y):
    act = funcnn.activations.get_activation(output)
    return array_namespace(z).tanh(a - y) * (1.0 / z.size) * act.grad(z, a)


def log_cosh_delta_wrong(output, z, a, y):
    return array_namespace(z).tanh(a - y) * (1.0 / z.shape[0])  # summed over k: off by k


SWISH = Activation("swish", swish, swish_grad)
LOG_COSH = Loss("log_cosh", log_cosh, log_cosh_delta)


def test_the_checks_pass_on_right_derivatives_and_name_wrong_ones():
    for reference in ("jax", "finite_differences"):
        assert all(r.error < 1e-5 for r in check_activation(SWISH, reference=reference))
        assert all(r.error < 1e-5 for r in check_loss(LOG_COSH, output="identity",
                                                      reference=reference))
        with pytest.raises(GradientMismatch, match=r"activation 'swish'.*off at z = "):
            check_activation(Activation("swish", swish, swish_grad_wrong), reference=reference)
        with pytest.raises(GradientMismatch, match=r"loss 'log_cosh' with output 'tanh'.*row"):
            check_loss(Loss("log_cosh", log_cosh, log_cosh_delta_wrong), output="tanh",
                       reference=reference)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_built_in_activation_passes_its_own_check(name):
    for reference in ("jax", "finite_differences"):
        reports = check_activation(name, reference=reference)
        assert [r.dtype for r in reports] == ["float32", "float64"]


def test_check_grads_on_a_net_with_custom_pieces():
    net = funcnn.MLP((3, 5, 2), hidden=SWISH, output="tanh", loss=LOG_COSH)
    params = funcnn.init_params(net, 0, dtype="float64")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 3)), rng.uniform(-1, 1, size=(6, 2))
    check_grads(net, params, x, y)
    check_grads(net, params, x, y, reference="finite_differences")
    wrong = funcnn.MLP((3, 5, 2), hidden=Activation("swish", swish, swish_grad_wrong),
                       output="tanh", loss=LOG_COSH)
    with pytest.raises(GradientMismatch, match=r"params\[0\]"):
        check_grads(wrong, params, x, y)


def test_spec_rules_for_custom_pieces():
    assert funcnn.MLP((2, 2), hidden=ACTIVATIONS["tanh"]).hidden == "tanh"  # built-in: by name
    a = funcnn.MLP((2, 3, 2), hidden=SWISH, loss=LOG_COSH, output="identity")
    b = funcnn.MLP((2, 3, 2), hidden=Activation("swish", swish, swish_grad),
                   loss=Loss("log_cosh", log_cosh, log_cosh_delta), output="identity")
    assert a == b and hash(a) == hash(b)  # equal pieces: equal specs, one compilation
    assert a != funcnn.MLP((2, 3, 2), hidden=Activation("swish", swish, swish_grad_wrong),
                           loss=LOG_COSH, output="identity")
    assert funcnn.MLP((2, 3, 2), output=SWISH).loss == "mse"
    with pytest.raises(ValueError, match="name of a built-in activation"):
        funcnn.MLP((2, 2), hidden=Activation("relu", swish, swish_grad))
    with pytest.raises(ValueError, match="may not be named 'softmax'"):
        funcnn.MLP((2, 2), output=Activation("softmax", swish, swish_grad))
    with pytest.raises(TypeError, match="callable grad"):
        funcnn.MLP((2, 2), hidden=Activation("swish", swish, None))
    with pytest.raises(ValueError, match="needs output softmax"):
        funcnn.MLP((2, 2), output=SWISH, loss="cross_entropy")


def test_custom_pieces_everywhere_on_both_backends(backend):
    net = funcnn.MLP((3, 6, 6, 2), hidden=SWISH, output="identity", loss=LOG_COSH, dropout=0.2)
    params = funcnn.init_params(net, 0, backend=backend, dtype="float64")
    rng = np.random.default_rng(2)
    x = funcnn.to_backend(rng.normal(size=(16, 3)), backend)
    y = funcnn.to_backend(rng.normal(size=(16, 2)), backend)
    out, cache = funcnn.forward(net, params, x, key=3, train=True)
    grads = funcnn.backprop(net, params, cache, y)
    loss, grads2 = funcnn.value_and_grad(net, params, x, y, key=3, train=True)
    for g, h in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads2),
                    strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-13)
    params2, _, history = funcnn.fit(net, params, funcnn.optim.adam(1e-2), x, y, epochs=20,
                                     batch_size=8, key=0, progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["train_accuracy"][-1] is None  # no accuracy for a custom loss


def test_custom_pieces_under_jit_and_scan_compile_once():
    def make():  # a new spec object each time, with equal pieces
        return funcnn.MLP((3, 4, 2), hidden=Activation("swish", swish, swish_grad),
                          output="identity", loss=Loss("log_cosh", log_cosh, log_cosh_delta))

    @jax.jit
    def steps(params, x, y):
        net = make()

        def body(p, _):
            loss, g = funcnn.value_and_grad(net, p, x, y)
            return jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, p, g), loss

        return jax.lax.scan(body, params, None, length=10)

    grad_fn = jax.jit(lambda net, p, x, y: funcnn.value_and_grad(net, p, x, y)[1],
                      static_argnums=0)
    params = funcnn.init_params(make(), 0, backend="jax", dtype="float64")
    x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    _, losses = steps(params, x, y)
    assert np.all(np.diff(np.asarray(losses)) < 0)
    grad_fn(make(), params, x, y)
    grad_fn(make(), params, x, y)
    assert grad_fn._cache_size() == 1


@pytest.mark.slow
def test_the_custom_activation_example_runs():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_activation.py"),
                             "--epochs", "3"], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "swish' against jax, float64: worst error" in result.stdout
    assert "after 3 epochs: loss" in result.stdout


def test_checkpoints_of_a_custom_net_save_the_names_and_need_the_pieces_to_load(tmp_path):
    net = funcnn.MLP((3, 4, 2), hidden=SWISH, output="identity", loss=LOG_COSH)
    params = funcnn.init_params(net, 0)
    path = tmp_path / "custom.npz"
    funcnn.save(path, params, net=net)
    with pytest.raises(ValueError, match=r"hidden is the custom activation 'swish'.*net=funcnn"):
        funcnn.load(path)
    other = funcnn.MLP((3, 4, 2), hidden=Activation("mish", swish, swish_grad),
                       output="identity", loss=LOG_COSH)
    with pytest.raises(ValueError, match="custom activation 'swish'"):
        funcnn.load(path, net=other)
    ckpt = funcnn.load(path, net=net)
    assert ckpt.net == net and ckpt.net.hidden is SWISH and ckpt.net.loss is LOG_COSH
    for a, b in zip(jax.tree_util.tree_leaves(ckpt.params), jax.tree_util.tree_leaves(params),
                    strict=True):
        np.testing.assert_array_equal(a, b)
