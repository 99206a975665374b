"""Optimizers: one contract over every optimizer, then closed forms written in NumPy.

The contract runs each optimizer on NumPy, on jax and on jax under ``jax.jit``: the typed
state with its ``count``, the tree structure and float32 dtype surviving updates, a
quadratic solved, and the factory agreeing with its free function. The closed forms are
textbook formulas in plain float64 NumPy, written here independently of funcnn.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import chex
import jax
import numpy as np
import pytest

import funcnn
from funcnn import optim, schedules
from funcnn.mlp import Dense
from funcnn.tree import tree_leaves, tree_map, tree_structure

SHAPES = ((3, 2), (2,), (2, 1), (1,))
DECAY = schedules.exponential_decay(0.2, 0.5, 10)


def make_tree(rng: np.random.Generator, dtype="float32", scale=1.0, backend="numpy"):
    """Two Dense layers of random leaves (uniform in [-scale, scale])."""
    w1, b1, w2, b2 = (rng.uniform(-scale, scale, size=s) for s in SHAPES)
    return funcnn.to_backend((Dense(w1, b1), Dense(w2, b2)), backend, dtype=dtype)


class Case(NamedTuple):
    factory: str  # the name in funcnn.optim.__all__ of the factory under test
    make: Callable[[], optim.Optimizer]  # the factory call under test
    init: Callable[[Any], Any]  # the free functions with the same hyperparameters
    update: Callable[..., Any]
    state_type: type


def _clipped_adam(params, grads, state, **hyper):
    return optim.adam_update(params, optim.clip_by_global_norm(grads, 1.0), state, **hyper)


def _init_of(stem: str):
    """The free ``init`` of an optimizer: ``<stem>_init``, except AdamW's, which is Adam's."""
    return getattr(optim, f"{'adam' if stem == 'adamw' else stem}_init")


def _case(factory, state_type, init_hyper=None, **hyper):
    """A contract case: ``factory(**hyper, **init_hyper)`` against the free functions
    ``<factory>_init(params, **init_hyper)`` and ``<factory>_update(..., **hyper)``."""
    init_hyper = init_hyper or {}
    return Case(factory, lambda: getattr(optim, factory)(**hyper, **init_hyper),
                partial(_init_of(factory), **init_hyper),
                partial(getattr(optim, f"{factory}_update"), **hyper), state_type)


ADAM_HYPER = dict(lr=DECAY, b1=0.5, b2=0.99)
RMS_LR = schedules.exponential_decay(0.1, 0.5, 10)


def _first_column(shape):
    mask = np.zeros(shape, dtype=bool)
    mask[:, 0] = True
    return mask


# A mask of every kind of leaf: leaf-shaped bool arrays, a 0-d bool array, a NumPy bool.
ARRAY_MASK = (Dense(_first_column(SHAPES[0]), np.asarray(False)),
              Dense(_first_column(SHAPES[2]), np.bool_(True)))
CASES = {
    "sgd": _case("sgd", optim.SGDState, lr=0.2),
    "sgd_momentum": _case("sgd", optim.SGDState, lr=0.05, momentum=0.5),
    "sgd_nesterov": _case("sgd", optim.SGDState, lr=0.05, momentum=0.5, nesterov=True),
    "sgd_weight_decay": _case("sgd", optim.SGDState, lr=0.05, momentum=0.5,
                              weight_decay=1e-4),
    "adam": _case("adam", optim.AdamState, **ADAM_HYPER),
    "adamw": _case("adamw", optim.AdamState, **ADAM_HYPER, weight_decay=1e-3),
    "adamw_masked": _case("adamw", optim.AdamState, **ADAM_HYPER, weight_decay=1e-3,
                          mask=optim.weights_only),
    "adamw_array_mask": _case("adamw", optim.AdamState, **ADAM_HYPER, weight_decay=1e-3,
                              mask=ARRAY_MASK),
    "rmsprop": _case("rmsprop", optim.RMSPropState, lr=RMS_LR),
    "rmsprop_momentum": _case("rmsprop", optim.RMSPropState, lr=RMS_LR, momentum=0.5),
    "rmsprop_centered": _case("rmsprop", optim.RMSPropState, lr=RMS_LR, centered=True),
    "rmsprop_centered_momentum": _case("rmsprop", optim.RMSPropState, lr=RMS_LR,
                                       momentum=0.5, centered=True),
    "adagrad": _case("adagrad", optim.AdagradState, lr=1.0),
    "adagrad_initial_accumulator": _case("adagrad", optim.AdagradState,
                                         dict(initial_accumulator=0.1), lr=1.0),
    "clipped_adam": Case("with_clipping", lambda: optim.with_clipping(optim.adam(**ADAM_HYPER),
                                                                      1.0),
                         optim.adam_init, partial(_clipped_adam, **ADAM_HYPER), optim.AdamState),
}
MODES = ("numpy", "jax", "jax-jit")


def _factories() -> list[str]:
    """The public names of funcnn.optim that return an Optimizer."""
    return sorted(name for name in optim.__all__ if callable(getattr(optim, name))
                  and typing.get_type_hints(getattr(optim, name)).get("return") is optim.Optimizer)


def test_every_optimizer_is_in_the_contract():
    factories = _factories()
    assert {"sgd", "adam", "adamw", "rmsprop", "adagrad", "with_clipping"} <= set(factories)
    missing = set(factories) - {case.factory for case in CASES.values()}
    assert not missing, f"factories of funcnn.optim without a contract case: {sorted(missing)}"
    # every free update has its init and its factory
    for name in (n for n in optim.__all__ if n.endswith("_update")):
        stem = name.removesuffix("_update")
        assert _init_of(stem).__name__ in optim.__all__ and stem in factories, stem
    assert {type(c.make()) for c in CASES.values()} == {optim.Optimizer}


def float_dtypes(tree):
    return {np.dtype(x.dtype) for x in tree_leaves(tree) if np.dtype(x.dtype).kind == "f"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_optimizer_contract(name, mode):
    case = CASES[name]
    backend = "numpy" if mode == "numpy" else "jax"
    rng = np.random.default_rng(0)
    target = make_tree(rng, backend=backend)
    params = tree_map(lambda t: t * 0, target)
    opt = case.make()

    state = opt.init(params)
    assert type(state) is case.state_type
    assert state._fields[0] == "count"
    assert np.dtype(state.count.dtype).kind == "i" and int(state.count) == 0
    # (NumPy turns the 0-d count into a NumPy scalar after ``count + 1``: both are NumPy.)
    array_type = (np.ndarray, np.generic) if backend == "numpy" else jax.Array
    params_structure = (tree_structure(params), jax.tree_util.tree_structure(params))
    state_structure = (tree_structure(state), jax.tree_util.tree_structure(state))
    params0, state0 = params, state

    def step(p, s):  # minimise sum((p - target)^2)
        grads = tree_map(lambda a, t: 2 * (a - t), p, target)
        return opt.update(p, grads, s)

    if mode == "jax-jit":
        step = jax.jit(step)
    for i in range(60):
        params, state = step(params, state)
        assert int(state.count) == i + 1
    assert (tree_structure(params), jax.tree_util.tree_structure(params)) == params_structure
    assert (tree_structure(state), jax.tree_util.tree_structure(state)) == state_structure
    assert type(state) is case.state_type and type(params[0]) is Dense
    assert float_dtypes((params, state)) == {np.dtype(np.float32)}
    assert all(isinstance(x, array_type) for x in tree_leaves((params, state)))
    err = max(float(np.max(np.abs(np.asarray(p) - np.asarray(t))))
              for p, t in zip(tree_leaves(params), tree_leaves(target), strict=True))
    assert err < 2e-3, f"{name} did not solve the quadratic: max |p - target| = {err:.3g}"
    # the same contract in chex's words: trees, leaf shapes and dtypes kept, target reached
    chex.assert_trees_all_equal_structs(params, params0)
    chex.assert_trees_all_equal_structs(state, state0)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, params0)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
    chex.assert_trees_all_close(params, target, atol=2e-3, rtol=0)

    if mode == "jax-jit":
        return  # (the factory is compared with its free function eagerly, below)
    # The factory's update is the free function with the same hyperparameters.
    start = make_tree(rng, backend=backend)
    mine, mine_state = start, opt.init(start)
    free, free_state = start, case.init(start)
    for _ in range(3):
        grads = make_tree(rng, backend=backend)
        mine, mine_state = opt.update(mine, grads, mine_state)
        free, free_state = case.update(free, grads, free_state)
    for a, b in zip(tree_leaves((mine, mine_state)), tree_leaves((free, free_state)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------- textbook formulas


def grad_sequence(seed, steps, scale=0.1):
    rng = np.random.default_rng(seed)
    return [make_tree(rng, "float64", scale) for _ in range(steps)]


def textbook_adam(p, grads, *, lr, b1, b2, eps, weight_decay=0.0, sqrt=True):
    """Kingma & Ba's Adam on one leaf (plus AdamW's decoupled decay), in float64."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        rate = lr(t - 1) if callable(lr) else lr
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        direction = m_hat / ((np.sqrt(v_hat) if sqrt else v_hat) + eps)
        p = p - rate * (direction + weight_decay * p)
    return p, m, v


def leafwise(fn, params, grads_seq, **kw):
    """Apply a one-leaf textbook optimizer to every leaf; returns per-leaf results."""
    leaves = tree_leaves(params)
    per_step = [tree_leaves(g) for g in grads_seq]
    return [fn(np.asarray(leaf, np.float64), [np.asarray(gs[i]) for gs in per_step], **kw)
            for i, leaf in enumerate(leaves)]


def run(update, init, params, grads_seq, **kw):
    state = init(params)
    for g in grads_seq:
        params, state = update(params, g, state, **kw)
    return params, state


@pytest.mark.parametrize(
    "hyper",
    [dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8), dict(lr=0.05, b1=0.8, b2=0.95, eps=1e-4)],
)
def test_adam_matches_the_textbook_formula(backend, hyper):
    params = make_tree(np.random.default_rng(1), "float64", backend=backend)
    grads = [funcnn.to_backend(g, backend) for g in grad_sequence(2, 6)]
    new, state = run(optim.adam_update, optim.adam_init, params, grads, **hyper)
    assert int(state.count) == 6
    expected = leafwise(textbook_adam, params, grads, **hyper)
    for got, mu, nu, (p, m, v) in zip(tree_leaves(new), tree_leaves(state.mu),
                                      tree_leaves(state.nu), expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), p, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(mu), m, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(nu), v, rtol=1e-12)
    # The classic bug divides by v_hat instead of sqrt(v_hat): that must not match.
    wrong = leafwise(textbook_adam, params, grads, sqrt=False, **hyper)
    start = tree_leaves(params)
    for got, (p_wrong, _, _), p0 in zip(tree_leaves(new), wrong, start, strict=True):
        step_got = np.asarray(got) - np.asarray(p0)
        step_wrong = p_wrong - np.asarray(p0)
        assert not np.allclose(step_got, step_wrong, rtol=1e-2)


def test_adam_jitted_with_a_schedule_matches_the_textbook_formula():
    params = make_tree(np.random.default_rng(3), "float64", backend="jax")
    grads = [funcnn.to_backend(g, "jax") for g in grad_sequence(4, 5)]
    lr = schedules.warmup_cosine_decay(peak_value=0.1, warmup_steps=2, decay_steps=5,
                                       init_value=0.01)
    opt = optim.adam(lr=lr, b1=0.9, b2=0.99, eps=1e-7)
    update = jax.jit(opt.update)
    state = opt.init(params)
    new = params
    for g in grads:
        new, state = update(new, g, state)
    # A float32 schedule value under jit: agreement to float32 rounding of the lr.
    expected = leafwise(textbook_adam, params, grads, lr=lr, b1=0.9, b2=0.99, eps=1e-7)
    for got, (p, _, _) in zip(tree_leaves(new), expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), p, rtol=1e-6)


def test_adamw_decay_is_decoupled_and_masked(backend):
    params = make_tree(np.random.default_rng(5), "float64", backend=backend)
    grads = [funcnn.to_backend(g, backend) for g in grad_sequence(6, 4)]
    hyper = dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8)
    wd = 0.1
    adam_p, adam_s = run(optim.adam_update, optim.adam_init, params, grads, **hyper)
    adamw_p, adamw_s = run(optim.adamw_update, optim.adam_init, params, grads,
                           weight_decay=wd, **hyper)
    # Decoupled: the moments never see the decay.
    for a, b in zip(tree_leaves((adam_s.mu, adam_s.nu)), tree_leaves((adamw_s.mu, adamw_s.nu)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14)
    expected = leafwise(textbook_adam, params, grads, weight_decay=wd, **hyper)
    for got, (p, _, _) in zip(tree_leaves(adamw_p), expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), p, rtol=1e-12)
    # ... which differs from L2 regularisation coupled into the gradient.
    coupled = params
    state = optim.adam_init(params)
    for g in grads:
        g = tree_map(lambda gi, pi: gi + wd * pi, g, coupled)
        coupled, state = optim.adam_update(coupled, g, state, **hyper)
    assert not np.allclose(np.asarray(coupled[0].W), np.asarray(adamw_p[0].W), rtol=1e-6)

    # Masked: weights decay, biases follow plain Adam, with a callable or a tree of bools.
    bool_mask = (Dense(True, False), Dense(True, False))
    for mask in (optim.weights_only, bool_mask):
        masked_p, _ = run(optim.adamw_update, optim.adam_init, params, grads,
                          weight_decay=wd, mask=mask, **hyper)
        for layer, w_layer, a_layer in zip(masked_p, adamw_p, adam_p, strict=True):
            np.testing.assert_allclose(np.asarray(layer.W), np.asarray(w_layer.W), rtol=1e-14)
            np.testing.assert_allclose(np.asarray(layer.b), np.asarray(a_layer.b), rtol=1e-14)
            assert not np.allclose(np.asarray(layer.b), np.asarray(w_layer.b), rtol=1e-6)
    assert optim.weights_only(params) == bool_mask
    # Without decay AdamW is Adam.
    zero_p, _ = run(optim.adamw_update, optim.adam_init, params, grads, weight_decay=0.0,
                    **hyper)
    for a, b in zip(tree_leaves(zero_p), tree_leaves(adam_p), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14)


def torch_sgd(p, grads, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD (dampening 0) on one leaf, in float64."""
    buf = None
    for t, g in enumerate(grads):
        rate = lr(t) if callable(lr) else lr
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - rate * g
    return p


@pytest.mark.parametrize(
    "hyper",
    [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9, nesterov=True),
     dict(lr=0.05, momentum=0.5, weight_decay=0.01),
     dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
     dict(lr=schedules.exponential_decay(0.1, 0.5, 2))],
)
def test_sgd_matches_pytorch(backend, hyper):
    params = make_tree(np.random.default_rng(7), "float64", backend=backend)
    grads = [funcnn.to_backend(g, backend) for g in grad_sequence(8, 5)]
    new, state = run(optim.sgd_update, optim.sgd_init, params, grads, **hyper)
    assert int(state.count) == 5
    # a schedule evaluates in float32 on jax: the lr is exact to float32 rounding only
    rtol = 1e-7 if backend == "jax" and callable(hyper["lr"]) else 1e-12
    for got, leaf in zip(tree_leaves(new), leafwise(torch_sgd, params, grads, **hyper),
                         strict=True):
        np.testing.assert_allclose(np.asarray(got), leaf, rtol=rtol)


def textbook_rmsprop(p, grads, *, lr, decay, eps, momentum=0.0, centered=False):
    """torch.optim.RMSprop (alpha = decay) on one leaf, in float64."""
    nu, mu, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        nu = decay * nu + (1 - decay) * g * g
        var = nu
        if centered:
            mu = decay * mu + (1 - decay) * g
            var = nu - mu * mu
        d = g / (np.sqrt(var) + eps)
        if momentum > 0:
            buf = momentum * buf + d
            d = buf
        p = p - lr * d
    return p, nu, buf, mu


def textbook_adagrad(p, grads, *, lr, eps, initial_accumulator=0.0):
    s = np.full_like(p, initial_accumulator)
    for g in grads:
        s = s + g * g
        p = p - lr * g / (np.sqrt(s) + eps)
    return p


RMSPROP_VARIANTS = {
    "plain": dict(), "momentum": dict(momentum=0.9), "centered": dict(centered=True),
    "centered_momentum": dict(momentum=0.5, centered=True),
}


@pytest.mark.parametrize("variant", sorted(RMSPROP_VARIANTS))
def test_rmsprop_matches_its_formula(backend, variant):
    hyper = dict(lr=0.01, decay=0.8, eps=1e-6, **RMSPROP_VARIANTS[variant])
    params = make_tree(np.random.default_rng(9), "float64", backend=backend)
    grads = [funcnn.to_backend(g, backend) for g in grad_sequence(10, 5)]
    new, state = run(optim.rmsprop_update, optim.rmsprop_init, params, grads, **hyper)
    assert int(state.count) == 5
    expected = leafwise(textbook_rmsprop, params, grads, **hyper)
    for i, (p, nu, buf, mu) in enumerate(expected):
        for got, want in ((new, p), (state.nu, nu), (state.velocity, buf), (state.mu, mu)):
            np.testing.assert_allclose(np.asarray(tree_leaves(got)[i]), want, rtol=1e-12)
    if variant == "plain":  # the unused buffers stay zero
        assert not any(np.any(np.asarray(x)) for x in tree_leaves((state.velocity, state.mu)))


def test_adagrad_matches_its_formula(backend):
    params = make_tree(np.random.default_rng(9), "float64", backend=backend)
    grads = [funcnn.to_backend(g, backend) for g in grad_sequence(10, 5)]
    state = optim.adagrad_init(params, initial_accumulator=0.1)
    new = params
    for g in grads:
        new, state = optim.adagrad_update(new, g, state, lr=0.5, eps=1e-7)
    expected = leafwise(textbook_adagrad, params, grads, lr=0.5, eps=1e-7,
                        initial_accumulator=0.1)
    for got, leaf in zip(tree_leaves(new), expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), leaf, rtol=1e-12)
    expected_sum = [0.1 + sum(np.asarray(tree_leaves(g)[i]) ** 2 for g in grads)
                    for i in range(len(SHAPES))]
    for got, want in zip(tree_leaves(state.sum_sq), expected_sum, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)


# ------------------------------------------------------------------ against optax


def run_optax(transform, params, grads_seq):
    """``transform`` (an optax GradientTransformation) applied like funcnn's updates."""
    import optax

    state = transform.init(params)
    for g in grads_seq:
        updates, state = transform.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("variant", sorted(RMSPROP_VARIANTS))
def test_rmsprop_matches_optax_with_eps_outside_the_root(variant):
    optax = pytest.importorskip("optax")
    extra = RMSPROP_VARIANTS[variant]
    params = make_tree(np.random.default_rng(12), "float64", backend="jax")
    grads = [funcnn.to_backend(g, "jax") for g in grad_sequence(13, 8)]
    mine, _ = run(optim.rmsprop_update, optim.rmsprop_init, params, grads, lr=0.01,
                  decay=0.85, eps=1e-6, **extra)
    # optax's momentum is a trace after the lr scaling: the same steps for a constant lr.
    theirs = run_optax(optax.rmsprop(0.01, decay=0.85, eps=1e-6, initial_scale=0.0,
                                     eps_in_sqrt=False, centered=extra.get("centered", False),
                                     momentum=extra.get("momentum")), params, grads)
    chex.assert_trees_all_close(mine, theirs, rtol=1e-12, atol=0)
    # optax's default puts eps inside the square root: not this convention.
    inside = run_optax(optax.rmsprop(0.01, decay=0.85, eps=1e-6, centered=extra.get(
        "centered", False), momentum=extra.get("momentum")), params, grads)
    assert not np.allclose(np.asarray(mine[1].b), np.asarray(inside[1].b), rtol=1e-9, atol=0)


def test_adagrad_matches_optax_where_their_conventions_meet():
    """optax adds eps inside the square root, PyTorch (and funcnn) outside: with eps = 0
    and optax's initial accumulator both give the same steps."""
    optax = pytest.importorskip("optax")
    params = make_tree(np.random.default_rng(14), "float64", backend="jax")
    grads = [funcnn.to_backend(g, "jax") for g in grad_sequence(15, 8)]
    opt = optim.adagrad(0.3, eps=0.0, initial_accumulator=0.1)
    mine, _ = run(lambda p, g, s: opt.update(p, g, s), opt.init, params, grads)
    theirs = run_optax(optax.adagrad(0.3, initial_accumulator_value=0.1, eps=0.0), params, grads)
    chex.assert_trees_all_close(mine, theirs, rtol=1e-12, atol=0)


def test_the_stated_conventions_are_the_real_defaults():
    """The docstrings name PyTorch's and optax's settings; the defaults are what they say."""
    optax = pytest.importorskip("optax")

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()
                if p.default is not inspect.Parameter.empty}

    rms, ada = defaults(optim.rmsprop), defaults(optim.adagrad)
    assert rms["decay"] == defaults(optax.rmsprop)["decay"] == 0.9  # optax's decay
    assert rms["eps"] == 1e-8 and rms["momentum"] == 0.0 and rms["centered"] is False
    assert ada["initial_accumulator"] == 0.0 and ada["eps"] == 1e-10  # PyTorch's
    theirs = defaults(optax.adagrad)
    stated = re.search(r"``initial_accumulator_value=([\d.e-]+), eps=([\d.e-]+)``",
                       optim.adagrad_update.__doc__)
    assert stated, "adagrad_update does not state optax's defaults"
    assert float(stated[1]) == theirs["initial_accumulator_value"]
    assert float(stated[2]) == theirs["eps"]
    assert "PyTorch" in optim.rmsprop_update.__doc__ and "0.99" in optim.rmsprop_update.__doc__


# --------------------------------------------------------------------- clipping


def test_clip_by_global_norm(backend):
    grads = make_tree(np.random.default_rng(11), "float64", backend=backend)
    leaves = [np.asarray(g) for g in tree_leaves(grads)]
    norm = np.sqrt(sum(np.sum(g**2) for g in leaves))
    np.testing.assert_allclose(float(optim.global_norm(grads)), norm, rtol=1e-12)

    clipped = optim.clip_by_global_norm(grads, norm / 4)
    assert tree_structure(clipped) == tree_structure(grads)
    np.testing.assert_allclose(float(optim.global_norm(clipped)), norm / 4, rtol=1e-12)
    for c, g in zip(tree_leaves(clipped), leaves, strict=True):
        np.testing.assert_allclose(np.asarray(c), g / 4, rtol=1e-12)

    untouched = optim.clip_by_global_norm(grads, norm * 2)
    for c, g in zip(tree_leaves(untouched), leaves, strict=True):
        np.testing.assert_allclose(np.asarray(c), g, rtol=1e-15)

    f32 = funcnn.to_backend(grads, backend, dtype="float32")
    assert float_dtypes(optim.clip_by_global_norm(f32, 0.1)) == {np.dtype(np.float32)}

    # with_clipping clips before the inner update: SGD with lr=1 moves by the clipped grads.
    opt = optim.with_clipping(optim.sgd(lr=1.0), norm / 4)
    params = tree_map(lambda g: g * 0, grads)
    new, _ = opt.update(params, grads, opt.init(params))
    for p, g in zip(tree_leaves(new), leaves, strict=True):
        np.testing.assert_allclose(np.asarray(p), -g / 4, rtol=1e-12)


def _extreme(backend, value):
    """A float32 tree whose every element is ``value`` or ``-value``: its norm is
    representable but the squares of 1e20 overflow float32 and those of 1e-30 underflow."""
    signs = np.array([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])
    tree = (Dense(signs * value, signs[0] * value), Dense(signs.T * value, signs[1, :2] * value))
    return funcnn.to_backend(tree, backend, dtype="float32")


@pytest.mark.parametrize(("backend", "jit"), [("numpy", False), ("jax", False), ("jax", True)],
                         ids=["numpy", "jax", "jax-jit"])
@pytest.mark.parametrize("value", [1e20, 1e-30])
def test_clip_by_global_norm_of_gradients_whose_squares_overflow(backend, value, jit):
    grads = _extreme(backend, value)
    rows = np.concatenate([np.asarray(g, np.float64).ravel() for g in tree_leaves(grads)])
    norm = float(np.linalg.norm(rows))  # float64: 1e20 * sqrt(17), 1e-30 * sqrt(17)
    norm_fn, clip = optim.global_norm, optim.clip_by_global_norm
    if jit:
        norm_fn, clip = jax.jit(norm_fn), jax.jit(clip, static_argnums=1)
    np.testing.assert_allclose(float(norm_fn(grads)), norm, rtol=1e-6)
    for bound in (norm * 0.5, 1.0, 1e-3):
        clipped = clip(grads, bound)
        got = np.concatenate([np.asarray(c, np.float64).ravel() for c in tree_leaves(clipped)])
        if bound < norm:  # the direction kept, the norm at the bound, no gradient zeroed
            np.testing.assert_allclose(got, rows * (bound / norm), rtol=1e-6)
        else:  # unchanged, bit for bit
            assert np.array_equal(got, rows)
        assert {np.asarray(c).dtype for c in tree_leaves(clipped)} == {np.dtype(np.float32)}
    # with_clipping: SGD with lr=1 moves the params by the clipped gradient
    opt = optim.with_clipping(optim.sgd(lr=1.0), 1.0)
    params = tree_map(lambda g: g * 0, grads)
    new, _ = (jax.jit(opt.update) if jit else opt.update)(params, grads, opt.init(params))
    moved = np.concatenate([np.asarray(p, np.float64).ravel() for p in tree_leaves(new)])
    np.testing.assert_allclose(moved, -rows * min(1.0, 1.0 / norm), rtol=1e-6)


# --------------------------------------------------------------- factories and errors


def _static(opt):
    return optim.split_hyper(opt)[0]


def test_equal_factories_split_into_equal_programs_and_numbers_are_data():
    """What a compiled loop keys its cache on (``split_hyper``'s static part) is equal for
    optimizers built alike, whatever their learning rate; what changes the program (a
    flag, a fraction, a schedule, the kind of optimizer) makes it differ."""
    pairs = [
        (optim.adam(1e-3), optim.adam(2e-3)),
        (optim.sgd(0.1, momentum=0.9), optim.sgd(lr=0.2, momentum=0.9)),
        (optim.sgd(0.1, weight_decay=0.0), optim.sgd(0.1, weight_decay=1e-4)),
        (optim.adamw(mask=optim.weights_only), optim.adamw(1e-2, mask=optim.weights_only)),
        (optim.adamw(mask=ARRAY_MASK), optim.adamw(mask=tree_map(np.logical_not, ARRAY_MASK))),
        (optim.with_clipping(optim.adam(), 1.0), optim.with_clipping(optim.adam(0.1), 2.0)),
        (optim.adam(lr=schedules.cosine_decay(0.1, 100)),
         optim.adam(lr=schedules.cosine_decay(0.1, 100))),
        (optim.rmsprop(), optim.rmsprop(eps=1e-6)),
        (optim.rmsprop(momentum=0.9, centered=True), optim.rmsprop(centered=True, momentum=0.9)),
        (optim.adagrad(0.1), optim.adagrad(0.2)),
        (optim.adagrad(0.1, initial_accumulator=0.1), optim.adagrad(0.1, 1e-10, 0.2)),
    ]
    for a, b in pairs:
        assert _static(a) == _static(b) and hash(_static(a)) == hash(_static(b)), a
    assert optim.split_hyper(optim.adam(1e-3))[1].update == {"lr": 1e-3, "eps": 1e-8}
    assert _static(optim.adam(1e-3, b1=0.8)) != _static(optim.adam(1e-3))
    assert _static(optim.sgd(0.1)) != _static(optim.sgd(0.1, momentum=0.5))
    assert _static(optim.sgd(0.1, 0.5)) != _static(optim.sgd(0.1, 0.5, nesterov=True))
    assert _static(optim.adamw()) != _static(optim.adam())
    assert _static(optim.rmsprop()) != _static(optim.rmsprop(centered=True))
    assert _static(optim.adam(schedules.cosine_decay(0.1, 100))) != \
        _static(optim.adam(schedules.cosine_decay(0.1, 200)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_split_and_merge_give_the_same_optimizer(name):
    opt = CASES[name].make()
    params = make_tree(np.random.default_rng(4), "float64")
    static, hyper = optim.split_hyper(opt)
    merged = optim.merge_hyper(static, hyper)
    want = opt.update(params, params, opt.init(params))
    got = merged.update(params, params, merged.init(params))
    chex.assert_trees_all_equal(got, want)


def test_optimizers_built_alike_share_one_jit_trace_whatever_their_learning_rate():
    traces = []

    @partial(jax.jit, static_argnums=0)
    def step(static, hyper, params, grads, state):
        traces.append(static)
        return optim.merge_hyper(static, hyper).update(params, grads, state)

    params = make_tree(np.random.default_rng(0), backend="jax")
    results = []
    for lr in (1e-3, 1e-3, 2e-3):
        opt = optim.adam(lr)
        results.append(step(*optim.split_hyper(opt), params, params, opt.init(params)))
        want = opt.update(params, params, opt.init(params))
        chex.assert_trees_all_close(results[-1], want, rtol=1e-6)
    assert len(traces) == 1
    assert _trees_differ(results[0][0], results[2][0])  # the new learning rate was used


def _trees_differ(a, b) -> bool:
    return any(not np.array_equal(np.asarray(u), np.asarray(v))
               for u, v in zip(tree_leaves(a), tree_leaves(b), strict=True))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: optim.adam(lr=0.0), ValueError, "lr"),
        (lambda: optim.adam(lr=-1e-3), ValueError, "lr"),
        (lambda: optim.sgd(lr=0), ValueError, "lr"),
        (lambda: optim.rmsprop(lr=float("nan")), ValueError, "lr"),
        (lambda: optim.adagrad(lr="0.1"), TypeError, "lr"),
        (lambda: optim.adam(b1=1.0), ValueError, "b1"),
        (lambda: optim.adam(b1=-0.1), ValueError, "b1"),
        (lambda: optim.adamw(b2=1.0), ValueError, "b2"),
        (lambda: optim.rmsprop(decay=1.0), ValueError, "decay"),
        (lambda: optim.sgd(momentum=1.0), ValueError, "momentum"),
        (lambda: optim.sgd(nesterov=True), ValueError, "nesterov"),
        (lambda: optim.with_clipping(optim.adam(), 0.0), ValueError, "max_norm"),
    ],
)
def test_bad_hyperparameters_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_free_sgd_refuses_nesterov_without_momentum():
    params = make_tree(np.random.default_rng(0))
    with pytest.raises(ValueError, match="nesterov"):
        optim.sgd_update(params, params, optim.sgd_init(params), nesterov=True)


def test_state_of_the_wrong_type_or_structure_raises():
    rng = np.random.default_rng(0)
    params = make_tree(rng)
    grads = make_tree(rng)
    with pytest.raises(TypeError, match="AdamState.*got SGDState"):
        optim.adam_update(params, grads, optim.sgd_init(params))
    with pytest.raises(TypeError, match="SGDState"):
        optim.sgd().update(params, grads, optim.adam_init(params))
    with pytest.raises(TypeError, match="RMSPropState.*got tuple"):
        optim.rmsprop_update(params, grads, tuple(optim.rmsprop_init(params)))
    with pytest.raises(TypeError, match="AdagradState"):
        optim.adagrad_update(params, grads, optim.rmsprop_init(params))

    smaller = params[:1]
    with pytest.raises(ValueError, match=r"state\.mu does not match params.*first difference"):
        optim.adam_update(params, grads, optim.adam_init(smaller))
    with pytest.raises(ValueError, match=r"grads does not match params"):
        optim.adam_update(params, grads[:1], optim.adam_init(params))
    transposed = (Dense(params[0].W.T, params[0].b), params[1])
    with pytest.raises(ValueError, match=r"\[0\]\.W"):
        optim.sgd_update(params, grads, optim.sgd_init(transposed))


def test_adamw_free_functions_match_the_factory():
    rng = np.random.default_rng(3)
    params = make_tree(rng)
    grads = make_tree(rng)
    state = funcnn.adam_init(params)
    assert type(state) is funcnn.AdamState
    opt = funcnn.optim.adamw(1e-2, weight_decay=0.1, mask=funcnn.optim.weights_only)
    free = funcnn.adamw_update(params, grads, state, lr=1e-2, weight_decay=0.1,
                               mask=funcnn.optim.weights_only)
    factory = opt.update(params, grads, opt.init(params))
    for a, b in zip(tree_leaves(free), tree_leaves(factory), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and every public name of both namespaces resolves
    for name in funcnn.__all__:
        assert getattr(funcnn, name) is not None, name
    for name in funcnn.optim.__all__:
        assert getattr(funcnn.optim, name) is not None, name


def test_state_field_names_are_kept():
    """Checkpoints store states by field name: existing names stay, new ones come after."""
    assert optim.SGDState._fields == ("count", "velocity")
    assert optim.AdamState._fields == ("count", "mu", "nu")
    assert optim.RMSPropState._fields == ("count", "nu", "velocity", "mu")
    assert optim.AdagradState._fields == ("count", "sum_sq")


def _keywords(fn) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize("factory", [f for f in _factories() if f != "with_clipping"])
def test_every_factory_takes_what_its_free_functions_take(factory):
    takes = {k: p.default for k, p in inspect.signature(getattr(optim, factory)).parameters.items()}
    free = {**_keywords(getattr(optim, f"{factory}_update")),
            **_keywords(_init_of(factory))}
    assert free, factory
    for name, default in free.items():
        assert name in takes, f"optim.{factory} does not take {name}"
        assert takes[name] == default, f"optim.{factory}: {name} defaults differ"


def test_adagrad_factory_fills_its_accumulator():
    params = make_tree(np.random.default_rng(0))
    opt = optim.adagrad(0.1, initial_accumulator=0.25)
    state = opt.init(params)
    for leaf in tree_leaves(state.sum_sq):
        assert leaf.dtype == np.float32
        np.testing.assert_allclose(leaf, 0.25, rtol=0)
    free = optim.adagrad_init(params, initial_accumulator=0.25)
    chex.assert_trees_all_equal(state, free)
    assert not np.any(tree_leaves(optim.adagrad(0.1).init(params).sum_sq)[0])


# ------------------------------------------------------------------ hyperparameter checks

FRACTIONS = ("momentum", "b1", "b2", "decay")
NON_NEGATIVE = ("eps", "weight_decay", "initial_accumulator")


def _callers(name: str) -> dict[str, Callable[[Any], Any]]:
    """Every public function of funcnn.optim that takes ``name``, as ``call(value)``."""
    params = make_tree(np.random.default_rng(0))
    calls = {}
    for fn_name in optim.__all__:
        fn = getattr(optim, fn_name)
        if isinstance(fn, type) or name not in inspect.signature(fn).parameters:
            continue
        if fn_name.endswith("_update"):
            init = _init_of(fn_name.removesuffix("_update"))
            calls[fn_name] = lambda v, fn=fn, init=init: fn(params, params, init(params),
                                                              **{name: v})
        elif fn_name.endswith("_init"):
            calls[fn_name] = lambda v, fn=fn: fn(params, **{name: v})
        elif fn_name == "clip_by_global_norm":
            calls[fn_name] = lambda v: optim.clip_by_global_norm(params, v)
        elif fn_name == "with_clipping":
            calls[fn_name] = lambda v: optim.with_clipping(optim.sgd(), v)
        else:  # a factory
            calls[fn_name] = lambda v, fn=fn: fn(**{name: v})
    return calls


def _bad_values():
    nan, inf = math.nan, math.inf
    for name in FRACTIONS:
        for value in (1.0, 1.5, -0.1, nan, inf, np.float64(1.0), np.asarray(-0.5)):
            yield name, value, ValueError, "must be in [0, 1)"
    for name in NON_NEGATIVE:
        for value in (-1e-8, -1, nan, inf, np.float32(-1.0)):
            yield name, value, ValueError, "must be non-negative and finite, in [0, inf)"
    for value in (0.0, -1.0, nan, inf):
        yield "max_norm", value, ValueError, "must be positive and finite"
        yield "lr", value, ValueError, "must be positive and finite"
    for name in (*FRACTIONS, *NON_NEGATIVE, "max_norm"):
        for value in ("0.5", [0.5], np.full(2, 0.5), True, None):
            yield name, value, TypeError, "must be a"
    for name in ("nesterov", "centered"):
        for value in ("yes", 1, None):
            yield name, value, TypeError, "must be True or False"


@pytest.mark.parametrize(("name", "value", "error", "words"), list(_bad_values()))
def test_a_hyperparameter_is_refused_the_same_way_everywhere(name, value, error, words):
    """One check per kind of hyperparameter, in the free functions and the factories alike:
    the same error and message, naming the hyperparameter, the range and the value."""
    callers = _callers(name)
    assert callers, name
    messages = {}
    for label, call in callers.items():
        with pytest.raises(error) as info:
            call(value)
        messages[label] = str(info.value)
    assert len(set(messages.values())) == 1, messages
    message = next(iter(messages.values()))
    assert message.startswith(f"{name} must be") and words in message, message
    if isinstance(value, float | str):
        assert repr(value) in message, message


@pytest.mark.parametrize("name", [*FRACTIONS, *NON_NEGATIVE, "max_norm", "lr"])
def test_edge_values_and_0d_arrays_are_accepted(name):
    edges = {"max_norm": (1e-30, 1e30), "lr": (1e-30, 10.0)}.get(
        name, (0.0, 0.999) if name in FRACTIONS else (0.0, 1e3))
    for value in (*edges, np.float32(0.5), np.asarray(0.5), jax.numpy.asarray(0.5)):
        for call in _callers(name).values():
            call(value)  # does not raise


def test_the_validation_holes_of_issue_8_are_closed():
    params = make_tree(np.random.default_rng(0))
    cases = [
        (lambda: optim.sgd_update(params, params, optim.sgd_init(params), momentum=1.5),
         "momentum must be in [0, 1); got 1.5"),
        (lambda: optim.adam_update(params, params, optim.adam_init(params), b1=1.0),
         "b1 must be in [0, 1); got 1.0"),
        (lambda: optim.adam_update(params, params, optim.adam_init(params), eps=-1e-8),
         "eps must be non-negative"),
        (lambda: optim.adamw_update(params, params, optim.adam_init(params), weight_decay=-0.1),
         "weight_decay must be non-negative"),
        (lambda: optim.adagrad_init(params, initial_accumulator=-1),
         "initial_accumulator must be non-negative and finite, in [0, inf); got -1"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


def test_traced_hyperparameters_are_not_checked():
    params = make_tree(np.random.default_rng(0), backend="jax")
    state = optim.adam_init(params)
    update = jax.jit(lambda b1, eps: optim.adam_update(params, params, state, b1=b1, eps=eps))
    new, _ = update(1.5, -1.0)  # tracers: values unknown, not checked
    assert tree_leaves(new)[0].dtype == np.float32


# ------------------------------------------------------------------ arrays as hyperparameters

# Values exact in float32, so every wrapping gives the same Python float.
EXACT = dict(lr=0.25, momentum=0.5, b1=0.5, b2=0.75, decay=0.5, eps=0.125, weight_decay=0.0625,
             initial_accumulator=0.5, max_norm=2.0)
WRAPS = {"numpy scalar": np.float32, "numpy 0-d": np.asarray,
         "jax 0-d": lambda v: jax.numpy.asarray(v, dtype=jax.numpy.float64)}


@pytest.mark.parametrize("wrap", sorted(WRAPS))
@pytest.mark.parametrize("factory", _factories())
def test_factories_of_0d_arrays_split_as_factories_of_python_numbers(factory, wrap):
    fn = getattr(optim, factory)
    names = [n for n in inspect.signature(fn).parameters if n in EXACT]
    plain = {n: EXACT[n] for n in names}
    args = (optim.sgd(),) if factory == "with_clipping" else ()
    made = fn(*args, **{n: WRAPS[wrap](v) for n, v in plain.items()})
    assert _static(made) == _static(fn(*args, **plain))
    assert hash(_static(made)) == hash(_static(fn(*args, **plain)))


def _tiny_jax_fit():
    """``(params, fit)``: a 3-4-2 net's jax params and ``fit`` on 8 rows with all but the
    optimizer given."""
    jnp = jax.numpy
    net = funcnn.MLP((3, 4, 2))
    params = funcnn.init_params(net, 0, backend="jax")
    x, y = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)), jnp.float32), \
        jnp.asarray([0, 1] * 4)
    return params, partial(funcnn.fit, net, params, x=x, y=y, epochs=2, batch_size=4,
                           key=0, progress=False)


@pytest.mark.slow
def test_fit_on_jax_takes_an_optimizer_built_from_0d_arrays():
    jnp = jax.numpy
    _, fit = _tiny_jax_fit()
    reference, _, _ = fit(optimizer=optim.adam(lr=0.25, b1=0.5))
    for lr in (np.asarray(0.25), jnp.asarray(0.25), np.float32(0.25)):
        trained, _, _ = fit(optimizer=optim.adam(lr=lr, b1=jnp.asarray(0.5)))
        chex.assert_trees_all_close(trained, reference, rtol=0, atol=0)


@pytest.mark.parametrize("update", [n for n in optim.__all__ if n.endswith("_update")])
def test_free_functions_take_0d_arrays_and_tracers_in_the_param_dtype(update):
    """float64 hyperparameters (arrays or tracers) on float32 params: float32 results, under
    jax's strict dtype promotion, equal to the same call with Python numbers."""
    fn, init = getattr(optim, update), _init_of(update.removesuffix("_update"))
    hyper = {n: EXACT[n] for n in _keywords(fn) if n in EXACT}
    params = make_tree(np.random.default_rng(2), backend="jax")
    state = init(params)
    want, _ = fn(params, params, state, **hyper)
    arrays = {n: jax.numpy.asarray(v, dtype=jax.numpy.float64) for n, v in hyper.items()}
    eager, _ = fn(params, params, state, **arrays)
    traced, _ = jax.jit(lambda h: fn(params, params, state, **h))(hyper)
    numpy_in, _ = fn(params, params, state, **{n: np.float64(v) for n, v in hyper.items()})
    for got in (eager, traced, numpy_in):
        assert float_dtypes(got) == {np.dtype(np.float32)}
        chex.assert_trees_all_close(got, want, rtol=1e-6)


# ------------------------------------------------------------------ AdamW masks

MASK_KINDS = {
    "python bool": lambda b, shape: b,
    "numpy bool": lambda b, shape: np.bool_(b),
    "numpy 0-d": lambda b, shape: np.asarray(b),
    "jax 0-d": lambda b, shape: jax.numpy.asarray(b),
    "numpy leaf-shaped": lambda b, shape: np.full(shape, b),
    "jax leaf-shaped": lambda b, shape: jax.numpy.full(shape, b),
}
ADAMW = dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1)


@pytest.mark.parametrize("kind", sorted(MASK_KINDS))
def test_adamw_takes_masks_of_every_leaf_kind(backend, kind):
    params = make_tree(np.random.default_rng(5), "float64", backend=backend)
    grads = [funcnn.to_backend(g, backend) for g in grad_sequence(6, 3)]
    leaf = MASK_KINDS[kind]
    mask = tuple(Dense(leaf(True, layer.W.shape), leaf(False, layer.b.shape)) for layer in params)
    want, _ = run(optim.adamw_update, optim.adam_init, params, grads, mask=optim.weights_only,
                  **ADAMW)
    free, _ = run(optim.adamw_update, optim.adam_init, params, grads, mask=mask, **ADAMW)
    opt = optim.adamw(**ADAMW, mask=mask)
    hash(_static(opt))  # what a jitted loop keys its cache on
    made, _ = run(lambda p, g, s: opt.update(p, g, s), opt.init, params, grads)
    chex.assert_trees_all_close(free, want, rtol=1e-14, atol=0)
    chex.assert_trees_all_close(made, want, rtol=1e-14, atol=0)


def test_an_array_mask_decays_entry_by_entry(backend):
    rng = np.random.default_rng(7)
    params = make_tree(rng, "float64", backend=backend)
    grads = [funcnn.to_backend(g, backend) for g in grad_sequence(8, 3)]
    mask = tree_map(lambda p: rng.random(p.shape) < 0.5, params)
    masked, _ = run(optim.adamw_update, optim.adam_init, params, grads, mask=mask, **ADAMW)
    decayed, _ = run(optim.adamw_update, optim.adam_init, params, grads, **ADAMW)
    plain, _ = run(optim.adam_update, optim.adam_init, params, grads,
                   **{k: v for k, v in ADAMW.items() if k != "weight_decay"})
    for m, got, yes, no in zip(*map(tree_leaves, (mask, masked, decayed, plain)), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.where(m, yes, no), rtol=1e-14)
        assert m.any() and not m.all() or m.size < 3


def test_adamw_masks_are_data_not_part_of_the_program():
    python = (Dense(True, False), Dense(True, False))
    listed = [Dense(True, False), Dense(True, False)]  # a list: not hashable, no matter
    for mask in (python, listed, ARRAY_MASK, tree_map(jax.numpy.asarray, ARRAY_MASK)):
        static, hyper = optim.split_hyper(optim.adamw(mask=mask))
        assert static == _static(optim.adamw(mask=ARRAY_MASK))
        assert hyper.update["mask"] is mask
    assert _static(optim.adamw(mask=optim.weights_only)) != _static(optim.adamw())


def test_an_array_mask_works_under_jit_and_in_a_scan():
    jnp = jax.numpy
    params = make_tree(np.random.default_rng(9), "float64", backend="jax")
    grads = [funcnn.to_backend(g, "jax") for g in grad_sequence(10, 4)]
    mask = tree_map(jnp.asarray, ARRAY_MASK)
    want, _ = run(optim.adamw_update, optim.adam_init, params, grads, mask=mask, **ADAMW)
    opt = optim.adamw(**ADAMW, mask=mask)

    split = jax.jit(lambda st, h, p, g, s: optim.merge_hyper(st, h).update(p, g, s),
                    static_argnums=0)
    jitted, _ = run(lambda p, g, s: split(*optim.split_hyper(opt), p, g, s), opt.init, params,
                    grads)

    def body(carry, g):
        return opt.update(*carry[:1], g, carry[1]), None

    stacked = tree_map(lambda *xs: jnp.stack(xs), *grads)
    (scanned, _), _ = jax.lax.scan(body, (params, opt.init(params)), stacked)

    traced_mask = jax.jit(lambda p, g, s, m: optim.adamw_update(p, g, s, mask=m, **ADAMW))
    as_argument, _ = run(lambda p, g, s: traced_mask(p, g, s, mask), optim.adam_init, params,
                         grads)
    for got in (jitted, scanned, as_argument):
        chex.assert_trees_all_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_fit_on_jax_takes_adamw_with_an_array_mask():
    jnp = jax.numpy
    params, fit = _tiny_jax_fit()
    shaped = tree_map(lambda p: jnp.full(p.shape, p.ndim >= 2), params)
    got, _, _ = fit(optimizer=optim.adamw(0.1, weight_decay=0.5, mask=shaped))
    want, _, _ = fit(optimizer=optim.adamw(0.1, weight_decay=0.5, mask=optim.weights_only))
    chex.assert_trees_all_close(got, want, rtol=1e-6)


@pytest.mark.parametrize(("bad", "error", "words"), [
    (np.ones((3, 2)), TypeError, "mask[0].W is an array of dtype float64 and shape (3, 2)"),
    (1, TypeError, "mask[0].W is of type int"),
    ("yes", TypeError, "mask[0].W is of type str"),
    (np.ones((2, 3), bool), ValueError, "mask[0].W has shape (2, 3) but params[0].W has shape "
                                        "(3, 2)"),
    (np.ones(1, bool), ValueError, "mask[0].W has shape (1,)"),
])
def test_a_bad_mask_leaf_is_named(bad, error, words):
    params = make_tree(np.random.default_rng(0))
    mask = (Dense(bad, False), Dense(True, False))
    expected = "each mask leaf must be a bool, a 0-d bool array or a bool array of the leaf's shape"
    calls = [lambda: optim.adamw_update(params, params, optim.adam_init(params), mask=mask),
             lambda: optim.adamw_update(params, params, optim.adam_init(params),
                                        mask=lambda p: mask)]
    if error is TypeError:  # the factory refuses a leaf of the wrong kind at once
        calls.append(lambda: optim.adamw(mask=mask))
    else:  # shapes are known only with the params
        opt = optim.adamw(mask=mask)
        calls.append(lambda: opt.update(params, params, opt.init(params)))
    for call in calls:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value) and expected in str(info.value), str(info.value)
    with pytest.raises(ValueError, match=r"mask does not match params: first difference"):
        optim.adamw_update(params, params, optim.adam_init(params), mask=mask[:1])


# ------------------------------------------------------------------ fast forms, same maths


def _textbook_adam(p, g, m, v, t, *, lr, b1, b2, eps, weight_decay=0.0):
    """Adam(W) as the paper writes it, one array per operation (NumPy, in p's dtype)."""
    c = p.dtype.type
    m = c(b1) * m + c(1 - b1) * g
    v = c(b2) * v + c(1 - b2) * g * g
    m_hat, v_hat = m / c(1 - b1**t), v / c(1 - b2**t)
    return p - c(lr) * (m_hat / (np.sqrt(v_hat) + c(eps)) + c(weight_decay) * p), m, v


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-6), ("float64", 1e-14)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_equals_the_textbook_expressions_step_after_step(backend, dtype, rtol,
                                                               weight_decay):
    """funcnn's Adam (its folded fast path), step after step from the same params, gradients
    and moments, gives what the textbook expressions written here give, to rounding
    (relative to the largest entry)."""
    rng = np.random.default_rng(7)
    hyper = dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-8)
    params = make_tree(rng, dtype, backend=backend)
    opt = optim.adamw(**hyper, weight_decay=weight_decay)
    state = opt.init(params)
    for t in range(1, 51):
        grads = make_tree(rng, dtype, scale=10.0 ** rng.uniform(-4, 1), backend=backend)
        before = [[np.asarray(a) for a in tree_leaves(tree)]
                  for tree in (params, grads, state.mu, state.nu)]
        params, state = opt.update(params, grads, state)
        got = tree_leaves((params, state.mu, state.nu))
        want = [_textbook_adam(*leaf, t, **hyper, weight_decay=weight_decay)
                for leaf in zip(*before, strict=True)]
        want = [w[i] for i in range(3) for w in want]
        for g, w in zip(got, want, strict=True):
            assert np.asarray(g).dtype == w.dtype == np.dtype(dtype)
            err = np.max(np.abs(np.asarray(g, np.float64) - w))
            assert err <= rtol * np.max(np.abs(w)), (t, err)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_one_minus_a_decay_near_one_is_taken_before_rounding_to_float32(backend):
    """1 - float32(0.999) is 0.00099998713, off by 1.3e-5 relative: the moments must use
    1 - 0.999 from the hyperparameter itself (as PyTorch does), rounded once."""
    rng = np.random.default_rng(3)
    params = make_tree(rng, "float32", backend=backend)
    g = [np.asarray(a, np.float64) for a in tree_leaves(params)]
    _, adam_state = optim.adam_update(params, params, optim.adam_init(params), b2=0.999)
    _, rms_state = optim.rmsprop_update(params, params, optim.rmsprop_init(params), decay=0.999)
    for state in (adam_state.nu, rms_state.nu):
        for got, gi in zip(tree_leaves(state), g, strict=True):
            want = (1 - 0.999) * gi * gi  # float64, then compared at float32 precision
            np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=3e-7)


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-6), ("float64", 1e-14)])
@pytest.mark.parametrize("decayed", [False, True, "array"])
def test_the_fast_path_equals_the_library_textbook_leaf(backend, dtype, rtol, decayed):
    """``adam_leaf_folded`` (the fast path the updates run, the bias corrections folded)
    against ``adam_leaf`` (Adam as the paper writes it), on the same inputs and scalars."""
    from funcnn.optim._adam import adam_leaf, adam_leaf_folded
    from funcnn.optim._base import bias_correction, one_minus

    rng = np.random.default_rng(11)
    c = np.dtype(dtype).type
    b1, b2, lr, eps = 0.9, 0.999, c(1e-2), c(1e-8)
    p, m = (rng.normal(size=(40, 30)).astype(dtype) for _ in range(2))
    v = rng.random((40, 30)).astype(dtype) * c(1e-3)
    decay = None if decayed is False else lr * c(0.1)
    mask = (rng.random((40, 30)) < 0.5).astype(dtype) if decayed == "array" else decayed
    for t in (1, 2, 10, 1000):
        g = (rng.normal(size=(40, 30)) * 10.0 ** rng.uniform(-4, 1)).astype(dtype)
        step = np.asarray(t, dtype)
        c1, c2 = bias_correction(b1, step), bias_correction(b2, step)
        common = dict(b1=c(b1), b2=c(b2), one_minus_b1=c(one_minus(b1)),
                      one_minus_b2=c(one_minus(b2)), decay=decay)
        args = funcnn.to_backend((p, g, m, v), backend)
        want = adam_leaf(p, g, m, v, mask, **common, c1=c1, c2=c2, lr=lr, eps=eps)
        got = adam_leaf_folded(*args, mask, **common, step_size=lr * np.sqrt(c2) / c1,
                               eps_hat=eps * np.sqrt(c2))
        for name, a, b in zip(("p", "m", "v"), got, want, strict=True):
            assert a.dtype == b.dtype == np.dtype(dtype), name
            err = np.max(np.abs(np.asarray(a, np.float64) - b))
            assert err <= rtol * np.max(np.abs(b)), (t, name, err)
        p, m, v = want
