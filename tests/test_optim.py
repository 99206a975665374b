"""Optimizers: one contract over every optimizer, then closed forms written in NumPy.

The contract runs each optimizer on NumPy, on jax and on jax under ``jax.jit``: the typed
state with its ``count``, the tree structure and float32 dtype surviving updates, a
quadratic solved, and the factory agreeing with its free function. The closed forms are
textbook formulas in plain float64 NumPy, written here independently of funcnn.
"""

from __future__ import annotations

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
    make: Callable[[], optim.Optimizer]  # the factory call under test
    init: Callable[[Any], Any]  # the free functions with the same hyperparameters
    update: Callable[..., Any]
    state_type: type


def _clipped_adam(params, grads, state, **hyper):
    return optim.adam_update(params, optim.clip_by_global_norm(grads, 1.0), state, **hyper)


ADAM_HYPER = dict(lr=DECAY, b1=0.5, b2=0.99)
CASES = {
    "sgd": Case(lambda: optim.sgd(lr=0.2), optim.sgd_init,
                partial(optim.sgd_update, lr=0.2), optim.SGDState),
    "sgd_momentum": Case(lambda: optim.sgd(lr=0.05, momentum=0.5), optim.sgd_init,
                         partial(optim.sgd_update, lr=0.05, momentum=0.5), optim.SGDState),
    "sgd_nesterov": Case(lambda: optim.sgd(lr=0.05, momentum=0.5, nesterov=True),
                         optim.sgd_init,
                         partial(optim.sgd_update, lr=0.05, momentum=0.5, nesterov=True),
                         optim.SGDState),
    "adam": Case(lambda: optim.adam(**ADAM_HYPER), optim.adam_init,
                 partial(optim.adam_update, **ADAM_HYPER), optim.AdamState),
    "adamw": Case(lambda: optim.adamw(**ADAM_HYPER, weight_decay=1e-3), optim.adam_init,
                  partial(optim.adamw_update, **ADAM_HYPER, weight_decay=1e-3),
                  optim.AdamState),
    "adamw_masked": Case(
        lambda: optim.adamw(**ADAM_HYPER, weight_decay=1e-3, mask=optim.weights_only),
        optim.adam_init,
        partial(optim.adamw_update, **ADAM_HYPER, weight_decay=1e-3, mask=optim.weights_only),
        optim.AdamState),
    "rmsprop": Case(lambda: optim.rmsprop(lr=schedules.exponential_decay(0.1, 0.5, 10)),
                    optim.rmsprop_init,
                    partial(optim.rmsprop_update, lr=schedules.exponential_decay(0.1, 0.5, 10)),
                    optim.RMSPropState),
    "adagrad": Case(lambda: optim.adagrad(lr=1.0), optim.adagrad_init,
                    partial(optim.adagrad_update, lr=1.0), optim.AdagradState),
    "clipped_adam": Case(lambda: optim.with_clipping(optim.adam(**ADAM_HYPER), 1.0),
                         optim.adam_init, partial(_clipped_adam, **ADAM_HYPER),
                         optim.AdamState),
}
MODES = ("numpy", "jax", "jax-jit")


def test_every_optimizer_is_in_the_contract():
    factories = {"sgd", "adam", "adamw", "rmsprop", "adagrad", "with_clipping"}
    assert factories <= set(optim.__all__)
    made = {type(c.make()) for c in CASES.values()}
    assert made == {optim.Optimizer}


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


def textbook_rmsprop(p, grads, *, lr, decay, eps):
    nu = np.zeros_like(p)
    for g in grads:
        nu = decay * nu + (1 - decay) * g * g
        p = p - lr * g / (np.sqrt(nu) + eps)
    return p


def textbook_adagrad(p, grads, *, lr, eps, initial_accumulator=0.0):
    s = np.full_like(p, initial_accumulator)
    for g in grads:
        s = s + g * g
        p = p - lr * g / (np.sqrt(s) + eps)
    return p


def test_rmsprop_and_adagrad_match_their_formulas(backend):
    params = make_tree(np.random.default_rng(9), "float64", backend=backend)
    grads = [funcnn.to_backend(g, backend) for g in grad_sequence(10, 5)]
    new, state = run(optim.rmsprop_update, optim.rmsprop_init, params, grads,
                     lr=0.01, decay=0.8, eps=1e-6)
    assert int(state.count) == 5
    for got, leaf in zip(tree_leaves(new), leafwise(textbook_rmsprop, params, grads, lr=0.01,
                                                    decay=0.8, eps=1e-6), strict=True):
        np.testing.assert_allclose(np.asarray(got), leaf, rtol=1e-12)

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


# --------------------------------------------------------------- factories and errors


def test_equal_factories_compare_and_hash_equal():
    pairs = [
        (optim.adam(1e-3), optim.adam(1e-3)),
        (optim.sgd(0.1, momentum=0.9), optim.sgd(lr=0.1, momentum=0.9)),
        (optim.adamw(mask=optim.weights_only), optim.adamw(mask=optim.weights_only)),
        (optim.with_clipping(optim.adam(), 1.0), optim.with_clipping(optim.adam(), 1.0)),
        (optim.adam(lr=schedules.cosine_decay(0.1, 100)),
         optim.adam(lr=schedules.cosine_decay(0.1, 100))),
        (optim.rmsprop(), optim.rmsprop()),
        (optim.adagrad(0.1), optim.adagrad(0.1)),
    ]
    for a, b in pairs:
        assert a is not b and a == b and hash(a) == hash(b)
    assert optim.adam(1e-3) != optim.adam(2e-3)
    assert optim.adam(1e-3, b1=0.8) != optim.adam(1e-3)
    assert optim.sgd(0.1) != optim.sgd(0.1, momentum=0.5)
    assert optim.with_clipping(optim.adam(), 1.0) != optim.with_clipping(optim.adam(), 2.0)
    assert optim.adamw() != optim.adam()


def test_equal_optimizers_share_one_jit_trace():
    traces = []

    @partial(jax.jit, static_argnums=0)
    def step(opt, params, grads, state):
        traces.append(opt)
        return opt.update(params, grads, state)

    params = make_tree(np.random.default_rng(0), backend="jax")
    for _ in range(2):
        opt = optim.adam(1e-3)
        step(opt, params, params, opt.init(params))
    assert len(traces) == 1


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
    state = funcnn.adamw_init(params)
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
