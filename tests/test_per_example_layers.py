"""funcnn.per_example on nets of layers (``funcnn.Net``): per-example gradients, their
norms, the clipped mean and the DP-SGD gradient function, against autodiff, in float64.

The referee of example ``i``'s gradient is ``jax.vmap(jax.grad)`` of its own loss: row
``i`` of the batch's loss with row ``i`` of the input replaced by the argument, the rest
of the batch and the dropout masks (those ``funcnn.forward`` draws from the key) as they
are. In evaluation and with dropout every row depends on its own input alone, so that is
the example's own loss. Conv nets cover Conv2D (same, valid, strided), both poolings,
Flatten, Dense with an activation and dropout, LayerNorm, BatchNorm in evaluation with its
running statistics, Residual and Dropout; BatchNorm in training is refused by name.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import leaves_close

import funcnn
from funcnn import per_example as pe
from funcnn.checked import check_y
from funcnn.layers import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    MaxPool2D,
    PerExampleError,
    Residual,
)
from funcnn.losses import get_loss
from funcnn.network import apply, draw_noise
from funcnn.tree import tree_leaves, tree_map, tree_unflatten

RTOL = 1e-7
M = 5

# In evaluation, BatchNorm on its running statistics (model state), dropout off.
EVAL_NET = funcnn.Net([
    Conv2D(3, 3, padding="same"), BatchNorm(), MaxPool2D(2),                 # (4, 4, 3)
    Conv2D(4, 3, stride=2, padding="same"),                                 # (2, 2, 4)
    Residual([Conv2D(4, 3, padding="same"), LayerNorm(), BatchNorm(momentum=0.5)]),
    AvgPool2D(2), Flatten(), Dropout(0.3),                                  # (4,)
    Dense(5, activation="tanh", dropout=0.2), Dense(3),
], (8, 8, 2), output="sigmoid")                                           # binary cross-entropy
# In training, dropout masks from the key (no BatchNorm: refused in training).
TRAIN_NET = funcnn.Net([
    Conv2D(3, 3), Dropout(0.25), AvgPool2D(2), Flatten(),                  # (4,4,3) (2,2,3)
    Dense(6, activation="elu"), Dropout(0.5), LayerNorm(),
    Dense(4, activation="gelu", dropout=0.3), Dense(3),
], (6, 6, 1))                                                             # softmax + cross-entropy
# (no Residual here: on main a net without model state cannot run one, network.apply
# hands it the state () instead of one () per inner layer)
NETS = {"eval-batchnorm-state": (EVAL_NET, False), "train-dropout": (TRAIN_NET, True)}


def case(name, backend, seed=0):
    """``(net, train, params, state, x, y, key)``: params and running statistics moved off
    their initial values (no bias at 0, no scale at 1, no variance at 1)."""
    net, train = NETS[name]
    rng = np.random.default_rng([seed, len(name)])
    params = tree_map(lambda v: v + 0.4 * rng.normal(size=v.shape),
                      funcnn.init_params(net, seed, dtype="float64"))
    state = tree_map(lambda v: v + rng.uniform(0.3, 1.0, v.shape),
                     funcnn.init_state(net, dtype="float64"))
    x = rng.normal(size=(M, *net.in_shape))
    y = rng.uniform(size=(M, 3)) if net.loss == "binary_cross_entropy" else \
        rng.integers(0, 3, M)
    params, state, x = funcnn.to_backend((params, state, x), backend)
    return net, train, params, state, x, y, funcnn.random.key(seed + 1, backend)


def state_arg(net, state):
    return {"state": state} if net.keeps_state else {}


@functools.partial(jax.jit, static_argnums=(0, 6))
def reference(net, params, state, x, y, key, train):
    """Each example's gradient by ``jax.vmap(jax.grad)`` of its own loss (see the module
    docstring), with the dropout masks ``funcnn.forward`` draws from ``key``."""
    params, state, x, key = funcnn.to_backend((params, state, x, key), "jax")
    y = check_y(net, jnp.asarray(y), M, np.float64)
    noise = draw_noise(net, key, M, x.dtype, "jax") if train and net.draws else None
    spec = get_loss(net.loss)

    def own_loss(p, xi, i):
        cache = apply(net, p, x.at[i].set(xi), noise, state=state, train=train)
        return spec.value(net.output, cache.z[i][None], cache.out[i][None], y[i][None])

    return jax.vmap(jax.grad(own_loss), in_axes=(None, 0, 0))(params, x, jnp.arange(M))


def flat(grads) -> np.ndarray:
    """Per-example grads as rows ``(m, n_params)`` in float64 NumPy."""
    return np.concatenate([np.asarray(g, np.float64).reshape(g.shape[0], -1)
                           for g in tree_leaves(grads)], axis=1)


def assert_close(got, want, label, rtol=RTOL):
    bad = leaves_close(got, want, rtol=rtol)
    assert not bad, f"{label}: leaves disagree beyond rtol={rtol}:\n  " + "\n  ".join(bad)


def hand_clipped(per_example, max_norm):
    """The mean of the per-example grads each clipped to ``max_norm``, ``(n_params,)``."""
    rows = flat(per_example)
    scale = np.minimum(1.0, max_norm / np.linalg.norm(rows, axis=1))
    return (rows * scale[:, None]).mean(axis=0), scale


def noise_like(params, key, std):
    """``std * N(0, I)`` drawn at once from ``key``, laid out over the params' leaves."""
    leaves = tree_leaves(params)
    normals = np.asarray(funcnn.random.normal(key, (sum(p.size for p in leaves),),
                                              np.float64))
    return std * normals


def checked_calls(net, train, state, bound):
    """What the entry points give on one backend (jitted on jax): the per-example grads,
    their norms and the clipped mean to ``bound`` (noised, from ``key``; its dropout from
    the key's split)."""
    extra = state_arg(net, state)

    def calls(params, x, y, key):
        return (pe.per_example_grads(net, params, x, y, key=key, train=train, **extra),
                pe.per_example_grad_norms(net, params, x, y, key=key, train=train, **extra),
                pe.clipped_mean_grad(net, params, x, y, max_norm=bound, noise_multiplier=0.7,
                                     key=key, train=train, **extra))

    return calls


CLIP = 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NETS))
def test_grads_norms_and_clipped_mean_equal_vmap_of_jax_grad(backend, name):
    net, train, params, state, x, y, key = case(name, backend)
    drop_key, noise_key = funcnn.random.split(key)
    ref_clip = reference(net, params, state, x, y, drop_key, train)
    bound = float(np.median(np.linalg.norm(flat(ref_clip), axis=1)))  # clips half of them
    calls = checked_calls(net, train, state, bound)
    if backend == "jax":
        calls = jax.jit(calls)
    grads, norms, clipped = calls(params, x, y, key)

    ref = reference(net, params, state, x, y, key, train)
    assert_close(grads, ref, f"{name}: per_example_grads vs vmap(grad)")
    for g, p in zip(tree_leaves(grads), tree_leaves(params), strict=True):
        assert g.shape == (M, *p.shape) and g.dtype == p.dtype
        assert funcnn.backend.is_jax_array(g) == (backend == "jax")
    batch = funcnn.value_and_grad(net, params, x, y, key=key, train=train,
                                  **state_arg(net, state))[1]
    assert_close(tree_map(lambda g: g.mean(axis=0), grads), batch, f"{name}: mean vs backprop")

    want_norms = np.linalg.norm(flat(ref), axis=1)
    assert norms.shape == (M,) and np.all(want_norms > 0)
    np.testing.assert_allclose(np.asarray(norms), want_norms, rtol=RTOL)

    clean, scale = hand_clipped(ref_clip, bound)
    assert np.sum(scale < 1) == M // 2
    want = clean + noise_like(params, noise_key, 0.7 * bound / M)
    np.testing.assert_allclose(flat(tree_map(lambda g: g[None], clipped))[0], want,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(NETS))
def test_the_check_free_pieces_agree_with_each_other(name):
    """On NumPy: the norms are those of the per-example grads, ``grad_and_norms_from_cache``
    is ``backward``'s gradient with them, and the clipped gradient with a bound nobody
    reaches is the batch gradient (one backward pass from reweighted rows)."""
    net, train, params, state, x, y, key = case(name, "numpy", seed=1)
    _, cache, _ = funcnn.forward(net, params, x, key=key, train=train, state=state)
    targets = check_y(net, y, M, np.float64)
    each = pe.grads_from_cache(net, params, cache, targets)
    norms = pe.norms_from_cache(net, params, cache, targets)
    np.testing.assert_allclose(norms, np.linalg.norm(flat(each), axis=1), rtol=1e-12)
    batch = funcnn.network.backward(net, params, cache, targets)
    grads, one_pass = pe.grad_and_norms_from_cache(net, params, cache, targets)
    assert_close(grads, batch, "grad_and_norms_from_cache's gradient", rtol=1e-12)
    np.testing.assert_allclose(one_pass, norms, rtol=1e-14)
    loose, dp_norms = pe.clipped_grad_from_cache(net, params, cache, targets, max_norm=1e10)
    assert_close(loose, batch, "clipped with a bound nobody reaches", rtol=1e-12)
    np.testing.assert_allclose(dp_norms, norms, rtol=1e-14)
    tiny = 1e-6  # every example clipped: the mean of the unit directions, times the bound
    units = flat(each) / np.linalg.norm(flat(each), axis=1)[:, None]
    got, _ = pe.clipped_grad_from_cache(net, params, cache, targets, max_norm=tiny)
    np.testing.assert_allclose(flat(tree_map(lambda g: g[None], got))[0] / tiny,
                               units.mean(axis=0), rtol=1e-9, atol=1e-12)


def test_norms_of_huge_and_tiny_loss_deltas_neither_overflow_nor_underflow():
    """float32 with MSE gaps of 1e30 (squares overflow) and 1e-30 (squares underflow), the
    outputs exactly 0 (a zero last layer): each row of the delta is scaled before the
    layers' squares, so the norms are finite and nonzero: the huge example clips to the
    bound (not dropped), the tiny one keeps its norm (not 0)."""
    net = funcnn.Net([Conv2D(2, 2), Flatten(), Dense(2)], (3, 3, 1), output="identity")
    params = funcnn.init_params(net, 0, dtype="float32")
    params = (params[0], (), tree_map(np.zeros_like, params[2]))
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 1)).astype(np.float32)
    gaps = np.array([1e30, 1e-30])
    y = np.stack([gaps, np.zeros(2)], axis=1).astype(np.float32)
    norms = np.asarray(pe.per_example_grad_norms(net, params, x, y), np.float64)
    # in float64, each example's norm for a gap of 1, times its gap (linear in the gap)
    p64, x64 = funcnn.to_backend((params, x), "numpy", dtype="float64")
    unit = pe.per_example_grad_norms(net, p64, x64, np.array([[1.0, 0], [1.0, 0]]))
    assert np.all(np.asarray(unit) > 0)
    np.testing.assert_allclose(norms, gaps * np.asarray(unit), rtol=1e-5)
    for row in (0, 1):
        got = pe.clipped_mean_grad(net, params, x[row:row + 1], y[row:row + 1], max_norm=1.0)
        assert all(np.isfinite(np.asarray(g)).all() for g in tree_leaves(got))
        np.testing.assert_allclose(float(funcnn.optim.global_norm(got)),
                                   min(1.0, norms[row]), rtol=1e-5)  # clipped; kept


def test_an_example_whose_squares_underflow_is_not_clipped():
    """float32 inputs of 1e-30: each example's squares underflow to 0 (its norm reads 0),
    yet its gradient (about 1e-27) is far below the bound, so clipping leaves it as it is:
    the clipped mean is the batch gradient, not a gradient scaled down to the bound."""
    net = funcnn.Net([Flatten(), Dense(2, bias=False)], (3,), output="identity")
    params = funcnn.init_params(net, 0, dtype="float32")
    x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32) * np.float32(1e-30)
    y = np.full((4, 2), -1e3, np.float32)               # each example's delta about 1e3
    assert np.all(np.asarray(pe.per_example_grad_norms(net, params, x, y)) == 0)
    got = pe.clipped_mean_grad(net, params, x, y, max_norm=1.0)
    want = funcnn.value_and_grad(net, params, x, y)[1]
    assert_close(got, want, "an unclipped example whose squares underflow", rtol=1e-6)


# ---------------------------------------------------------------------------- in training


def dp_reference_step(net, params, x, y, key, lr, max_norm, sigma):
    """SGD on the DP-SGD gradient computed from the per-example referee: the step's masks
    from ``key``, the noise from ``fold_in(key, NOISE_STREAM)``."""
    clean, _ = hand_clipped(reference(net, params, (), x, y, key, True), max_norm)
    noise_key = funcnn.random.fold_in(key, pe.NOISE_STREAM)
    g = clean + noise_like(params, noise_key, sigma * max_norm / x.shape[0])
    leaves, start, out = tree_leaves(params), 0, []
    for p in leaves:
        out.append(np.asarray(p) - lr * g[start:start + p.size].reshape(p.shape))
        start += p.size
    return tree_unflatten(params, out)


@pytest.mark.slow
def test_dp_grad_in_make_train_step_on_both_backends():
    net, _, params, _, x, y, key = case("train-dropout", "numpy", seed=2)
    opt = funcnn.optim.sgd(lr=0.1)
    step = funcnn.make_train_step(net, opt, grad_fn=pe.dp_grad(CLIP, 0.8))
    on_numpy, _, _ = step(params, opt.init(params), x, y, key)
    jax_args = funcnn.to_backend((params, x, y, key), "jax")
    on_jax, _, loss = jax.jit(step)(jax_args[0], opt.init(jax_args[0]), *jax_args[1:])
    assert np.isfinite(float(loss))
    assert all(funcnn.backend.is_jax_array(p) for p in tree_leaves(on_jax))
    assert_close(on_jax, on_numpy, "the DP step on jax vs NumPy", rtol=1e-12)
    want = dp_reference_step(net, params, x, y, key, 0.1, CLIP, 0.8)
    assert_close(on_numpy, want, "the DP step vs SGD on the referee's DP gradient")


@pytest.mark.slow
def test_dp_grad_in_fit_equals_on_numpy_and_jax():
    """Two epochs of 18 rows in batches of 8 (the last one short: padded on jax, its
    padding rows unclipped and uncounted): the same params on both backends."""
    net, _, params, _, _, _, _ = case("train-dropout", "numpy", seed=4)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(18, *net.in_shape)), rng.integers(0, 3, 18)
    grad_fn = pe.dp_grad(CLIP, 0.6)

    def run(backend):
        p, xb = funcnn.to_backend((params, x), backend)
        return funcnn.fit(net, p, funcnn.optim.adam(1e-2), xb, y, epochs=2, batch_size=8,
                          key=5, grad_fn=grad_fn, progress=False)

    (p_np, _, h_np), (p_jax, _, h_jax) = run("numpy"), run("jax")
    assert_close(p_jax, p_np, "fit with dp_grad, jax vs NumPy", rtol=1e-10)
    np.testing.assert_allclose(h_jax["loss"], h_np["loss"], rtol=1e-10)
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(tree_leaves(p_np), tree_leaves(params), strict=True))
    assert moved > 0


# ---------------------------------------------------------------------------- BatchNorm


BN_TRAIN = r"layers\[1\]: BatchNorm\(.*\) has no per-example gradients: in training " \
    r"\(train=True\) it normalises by the batch's own mean and variance"


def bn_net(nested=False):
    block = [Residual([BatchNorm(), Conv2D(2, 1)])] if nested else [BatchNorm()]
    return funcnn.Net([Conv2D(2, 2), *block, Flatten(), Dense(2)], (3, 3, 1))


@pytest.mark.parametrize("backend", ["numpy", pytest.param("jax", marks=pytest.mark.slow)])
def test_batchnorm_in_training_is_refused_by_name_and_place(backend):
    net = bn_net()
    params = funcnn.init_params(net, 0, backend=backend, dtype="float64")
    state = funcnn.init_state(net, backend=backend, dtype="float64")
    x, y = np.random.default_rng(0).normal(size=(4, 3, 3, 1)), np.array([0, 1, 1, 0])
    for fn in (pe.per_example_grads, pe.per_example_grad_norms,
               functools.partial(pe.clipped_mean_grad, max_norm=1.0)):
        with pytest.raises(PerExampleError, match=BN_TRAIN):
            fn(net, params, x, y, state=state, train=True)
        assert fn(net, params, x, y, state=state) is not None  # train=False: running stats
        with pytest.raises(ValueError, match=r"pass state=funcnn.init_state\(net\)"):
            fn(net, params, x, y)
    nested = bn_net(nested=True)
    params = funcnn.init_params(nested, 0, backend=backend, dtype="float64")
    with pytest.raises(PerExampleError, match=r"layers\[1\]\.layers\[0\]: BatchNorm"):
        pe.per_example_grad_norms(nested, params, x, y, train=True,
                                  state=funcnn.init_state(nested, backend=backend,
                                                          dtype="float64"))


def test_dp_grad_refuses_batchnorm_under_jit_and_in_fit():
    """A training step normalises by the batch: dp_grad raises while jax traces the step,
    and fit raises before its first update, on both backends."""
    net = bn_net()
    opt = funcnn.optim.sgd(lr=0.1)
    x, y = np.random.default_rng(0).normal(size=(6, 3, 3, 1)), np.array([0, 1, 1, 0, 1, 0])
    step = jax.jit(funcnn.make_train_step(net, opt, grad_fn=pe.dp_grad(1.0)))
    params = funcnn.init_params(net, 0, backend="jax")
    state = funcnn.init_state(net, backend="jax")
    with pytest.raises(PerExampleError, match=BN_TRAIN):
        step(params, opt.init(params), jnp.asarray(x, jnp.float32), jnp.asarray(y),
             state=state)
    for backend in ("numpy", "jax"):
        params = funcnn.init_params(net, 0, backend=backend)
        with pytest.raises(PerExampleError, match=BN_TRAIN):
            funcnn.fit(net, params, opt, x.astype(np.float32), y, epochs=1, batch_size=4,
                       key=0, grad_fn=pe.dp_grad(1.0), progress=False,
                       state=funcnn.init_state(net, backend=backend))
