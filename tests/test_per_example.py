"""Per-example gradients, their norms and the DP-SGD gradient against autodiff, in float64.

The referee of a per-example gradient is ``jax.vmap(jax.grad(loss of one example))``: the
loss of row ``i`` alone is ``funcnn.network.loss_from_cache`` on ``funcnn.apply`` of that
row with row ``i`` of the same dropout masks (those ``funcnn.forward`` draws from the key).
Every leaf must agree to ``max|g - r| <= 1e-7 max|r|`` (the metric of funcnn.testing).
The matrix runs every hidden activation with every (output, loss) pair of test_grads.py,
with and without dropout, on NumPy and on jax under ``jax.jit``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiers import sample_quick
from conftest import leaves_close
from hypothesis import given, settings
from hypothesis import strategies as st
from test_grads import HIDDEN, PAIRS, make_data

import funcnn
from funcnn import per_example as pe
from funcnn.activations import Activation, sigmoid
from funcnn.checked import check_y
from funcnn.losses import Loss
from funcnn.network import apply, backward, loss_from_cache
from funcnn.tree import tree_leaves, tree_map

RTOL = 1e-7
M = 6
HUGE = 1e10  # a clipping norm no example reaches: clipping changes nothing


def net_for(hidden, pair, depth=3, dropout=0.4):
    output, loss, kind = PAIRS[pair]
    k = 1 if kind == "binary_vector" else 4
    return funcnn.MLP((5, *(6,) * (depth - 1), k), hidden=hidden, output=output, loss=loss,
                      dropout=dropout if depth > 1 else 0.0), kind


def assert_close(got, want, label, rtol=RTOL):
    bad = leaves_close(got, want, rtol=rtol)
    assert not bad, f"{label}: leaves disagree beyond rtol={rtol}:\n  " + "\n  ".join(bad)


def flat(grads) -> np.ndarray:
    """Per-example grads as rows ``(m, n_params)`` in float64 NumPy."""
    leaves = [np.asarray(g, dtype=np.float64) for g in tree_leaves(grads)]
    return np.concatenate([g.reshape(g.shape[0], -1) for g in leaves], axis=1)


def one_example_loss(net):
    """The loss of one row ``xi`` with its own row ``mi`` of each dropout mask."""

    def loss(params, xi, yi, mi):
        cache = apply(net, params, xi[None], tuple(mk[None] for mk in mi))
        return loss_from_cache(net, cache, yi[None])

    return loss


def reference(net, params, x, y, masks):
    """Per-example grads by ``jax.vmap(jax.grad(...))`` with ``masks`` (``None``: nothing
    dropped). Run eagerly: jax caches each operation by shape, and every net of the
    matrix has the same shapes, so this costs less than compiling a program per net."""
    y = check_y(net, y, x.shape[0], np.float64)
    ones = [np.ones((x.shape[0], n)) for n in net.sizes[1:-1]]
    masks = tuple(o if mk is None else np.asarray(mk) for o, mk in zip(ones, masks, strict=True))
    per_example = jax.vmap(jax.grad(one_example_loss(net)), in_axes=(None, 0, 0, 0))
    return per_example(funcnn.to_backend(params, "jax"), jnp.asarray(x), jnp.asarray(y),
                       funcnn.to_backend(masks, "jax"))


def everything(net, params, x, y, key, train):
    """What the matrix compares: per-example grads and norms, the batch gradient, and the
    clipped gradient with a huge norm beside the batch gradient with its dropout key."""
    drop_key = funcnn.random.split(key)[0]
    return (
        pe.per_example_grads(net, params, x, y, key=key, train=train),
        pe.per_example_grad_norms(net, params, x, y, key=key, train=train),
        funcnn.value_and_grad(net, params, x, y, key=key, train=train)[1],
        pe.clipped_mean_grad(net, params, x, y, max_norm=HUGE, key=key, train=train),
        funcnn.value_and_grad(net, params, x, y, key=drop_key, train=train)[1],
    )


everything_jitted = jax.jit(everything, static_argnums=(0, 5))


def check_case(make_params, backend, hidden, pair, depth, train, run):
    net, kind = net_for(hidden, pair, depth)
    seed = HIDDEN.index(hidden) * 10 + depth
    params = make_params(net, seed, backend=backend)
    x, y = make_data(net, kind, M, seed)
    key = funcnn.random.key(seed, backend)
    grads, norms, batch, clipped, batch_clip_masks = run(net, params, x, y, key, train)

    masks = funcnn.forward(net, params, x, key=key, train=train)[1].masks
    assert all(mk is None for mk in masks) != (train and depth > 1)
    ref = reference(net, params, x, y, masks)
    assert_close(grads, ref, "per_example_grads vs vmap(grad)")
    for g, p in zip(tree_leaves(grads), tree_leaves(params), strict=True):
        assert g.shape == (M, *p.shape) and g.dtype == p.dtype
        assert isinstance(g, np.ndarray) == (backend == "numpy")
    assert_close(tree_map(lambda g: g.mean(axis=0), grads), batch, "mean vs backprop")

    assert norms.shape == (M,)
    np.testing.assert_allclose(norms, np.linalg.norm(flat(grads), axis=1), rtol=RTOL)
    np.testing.assert_allclose(norms, np.linalg.norm(flat(ref), axis=1), rtol=RTOL)
    assert np.all(np.asarray(norms) > 0)
    assert_close(clipped, batch_clip_masks, "clipped with a huge max_norm vs backprop")


MATRIX = [(h, p, 3) for h in HIDDEN for p in PAIRS] + [("relu", p, 1) for p in PAIRS]
# Under jax.jit (a compilation per net, the dropout key's threefry the dearest part): every
# activation and every pair once, with dropout; the matrix runs all of them eagerly.
JITTED = [(h, p, 3) for h, p in zip(HIDDEN, PAIRS, strict=True)] + [("tanh", "identity+mse", 1)]


@pytest.mark.parametrize(("hidden", "pair", "depth"),
                         sample_quick(MATRIX, 6, ids=[f"{h}-{p}-d{d}" for h, p, d in MATRIX]))
@pytest.mark.parametrize("train", [True, False], ids=["dropout", "no-dropout"])
def test_per_example_grads_match_vmap_grad(make_params, backend, hidden, pair, depth, train):
    check_case(make_params, backend, hidden, pair, depth, train, everything)


@pytest.mark.parametrize(("hidden", "pair", "depth"),
                         sample_quick(JITTED, 4, ids=[f"{h}-{p}-d{d}" for h, p, d in JITTED]))
def test_per_example_grads_match_vmap_grad_under_jit(make_params, hidden, pair, depth):
    check_case(make_params, "jax", hidden, pair, depth, True, everything_jitted)


def test_matrix_covers_every_activation_and_pair():
    assert {(h, p) for h, p, d in MATRIX if d > 1} == {(h, p) for h in HIDDEN for p in PAIRS}
    assert {h for h, _, _ in JITTED} == set(HIDDEN) and {p for _, p, _ in JITTED} == set(PAIRS)
    assert {funcnn.MLP((2, 3), output=o, loss=loss).loss for o, loss, _ in PAIRS.values()} \
        == set(funcnn.losses.LOSSES)


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    m=st.integers(1, 7),
    hidden=st.sampled_from(HIDDEN),
    pair=st.sampled_from(sorted(PAIRS)),
    dropout=st.sampled_from([0.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_each_row_is_backprop_on_that_row_alone(make_params, widths, m, hidden, pair, dropout,
                                                seed):
    """Ragged shapes on NumPy: row i of the per-example grads is the hand-written batch
    gradient of the one-row batch x[i:i+1] with row i of the same masks."""
    output, loss, kind = PAIRS[pair]
    k = 1 if kind == "binary_vector" else 2 + seed % 3
    net = funcnn.MLP((*widths, k), hidden=hidden, output=output, loss=loss, dropout=dropout)
    params = make_params(net, seed)
    x, y = make_data(net, kind, m, seed)
    key = funcnn.random.key(seed)
    grads = pe.per_example_grads(net, params, x, y, key=key, train=True)
    norms = pe.per_example_grad_norms(net, params, x, y, key=key, train=True)
    masks = funcnn.forward(net, params, x, key=key, train=True)[1].masks
    y = check_y(net, y, m, np.float64)
    for i in range(m):
        row_masks = tuple(None if mk is None else mk[i:i + 1] for mk in masks)
        want = backward(net, params, apply(net, params, x[i:i + 1], row_masks), y[i:i + 1])
        assert_close(tree_map(lambda g, i=i: g[i], grads), want, f"row {i}")
        np.testing.assert_allclose(norms[i], np.linalg.norm(flat(grads)[i]), rtol=RTOL)


def test_custom_activation_and_loss(make_params, backend):
    """A swish hidden layer and a loss of one's own (the mean over rows of the summed half
    squared error) go through the per-example pass like the built-in pieces."""

    def swish_grad(z, a):
        s = sigmoid(z)
        return s + a * (1 - s)

    swish = Activation("swish", lambda z: z * sigmoid(z), swish_grad)
    half_sq = Loss("half_sq", lambda out, z, a, y: ((a - y) ** 2).sum() / (2 * z.shape[0]),
                   lambda out, z, a, y: (a - y) * (1.0 / z.shape[0]))
    net = funcnn.MLP((5, 6, 6, 3), hidden=swish, output="identity", loss=half_sq, dropout=0.3)
    params = make_params(net, 4, backend=backend)
    x, y = make_data(net, "real", M, 4)
    key = funcnn.random.key(4, backend)
    grads = pe.per_example_grads(net, params, x, y, key=key, train=True)
    masks = funcnn.forward(net, params, x, key=key, train=True)[1].masks
    assert_close(grads, reference(net, params, x, y, masks), "custom pieces vs vmap(grad)")


# ------------------------------------------------------------------ clipping and noise


CLIP_CASES = [("tanh", "softmax+ce/labels"), ("gelu", "sigmoid+bce/(m,k)"), ("elu", "tanh+mse")]


def numpy_clipped_mean(per_example, max_norm):
    """DP clipping done by hand on the materialised per-example grads (float64 NumPy)."""
    rows = flat(per_example)
    scale = np.minimum(1.0, max_norm / np.linalg.norm(rows, axis=1))
    return (rows * scale[:, None]).mean(axis=0), scale


@pytest.mark.slow
@pytest.mark.parametrize(("hidden", "pair"), CLIP_CASES)
def test_clipped_mean_grad_clips_each_example(make_params, backend, hidden, pair):
    net, kind = net_for(hidden, pair)
    params = make_params(net, 7, backend=backend)
    x, y = make_data(net, kind, M, 7)
    key = funcnn.random.key(7, backend)
    drop_key = funcnn.random.split(key)[0]
    masks = funcnn.forward(net, params, x, key=drop_key, train=True)[1].masks
    ref = reference(net, params, x, y, masks)
    norms = np.linalg.norm(flat(ref), axis=1)

    clip = functools.partial(pe.clipped_mean_grad, net, key=key, train=True)
    if backend == "jax":
        clip = jax.jit(clip, static_argnames=("max_norm",))
    for max_norm, clipped_rows in ((1e-4, M), (float(np.median(norms)), M // 2)):
        want, scale = numpy_clipped_mean(ref, max_norm)
        assert np.sum(scale < 1) == clipped_rows
        got = clip(params, x, y, max_norm=max_norm)
        np.testing.assert_allclose(flat(tree_map(lambda g: g[None], got))[0], want,
                                   rtol=1e-10, atol=1e-14 * max_norm)
        assert float(funcnn.optim.global_norm(got)) <= max_norm * (1 + 1e-12)
    tiny = 1e-4  # every example contributes exactly max_norm: the mean of unit directions
    units = flat(ref) / norms[:, None]
    got = clip(params, x, y, max_norm=tiny)
    np.testing.assert_allclose(flat(tree_map(lambda g: g[None], got))[0] / tiny,
                               units.mean(axis=0), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("max_norm", [0.5, 3.0])
def test_noise_has_the_dp_sgd_standard_deviation(backend, max_norm):
    """Noise N(0, (sigma C)^2) per element of the sum, then / m: the difference to the
    noiseless gradient, times m / (sigma C), is standard normal over ~3000 elements."""
    net = funcnn.MLP((40, 50, 20, 3))
    params = funcnn.init_params(net, 0, backend=backend, dtype="float64")
    x, y = make_data(net, "labels", 4, 0)
    sigma = 1.3
    _, cache = funcnn.forward(net, params, x)
    y = check_y(net, y, 4, np.float64)
    clean, _ = pe.clipped_grad_from_cache(net, params, cache, y, max_norm=max_norm)
    key = funcnn.random.key(11, backend)

    def noised(net, params, cache, y, key):
        return pe.clipped_grad_from_cache(net, params, cache, y, max_norm=max_norm,
                                          noise_multiplier=sigma, key=key)[0]

    run = jax.jit(noised, static_argnums=0) if backend == "jax" else noised
    noisy = run(net, params, cache, y, key)
    z = np.concatenate([(np.asarray(n) - np.asarray(c)).ravel()
                        for n, c in zip(tree_leaves(noisy), tree_leaves(clean), strict=True)])
    z *= 4 / (sigma * max_norm)
    assert z.size > 3000
    assert abs(z.std() - 1.0) < 0.1, z.std()      # the sample std's own spread is ~0.013
    assert abs(z.mean()) < 0.1, z.mean()          # the sample mean's is ~0.018
    sizes = [leaf.size for leaf in tree_leaves(params)]
    parts = np.split(z, np.cumsum(sizes)[:-1])
    assert all(abs(p.std() - 1.0) < 0.3 for p in parts if p.size >= 20), [p.std() for p in parts]
    assert np.abs(z).max() < 6.0  # no leaf escapes the noise's scale (the small ones too)
    again = run(net, params, cache, y, key)
    assert_close(again, noisy, "the same key again", rtol=0.0)
    other = run(net, params, cache, y, funcnn.random.key(12, backend))
    assert all(np.max(np.abs(np.asarray(a) - np.asarray(b))) > 0
               for a, b in zip(tree_leaves(other), tree_leaves(noisy), strict=True))


def test_clipped_mean_grad_draws_dropout_and_noise_from_split_key(make_params, backend):
    net, kind = net_for("relu", "softmax+ce/onehot")
    params = make_params(net, 2, backend=backend)
    x, y = make_data(net, kind, M, 2)
    key = funcnn.random.key(2, backend)
    got = pe.clipped_mean_grad(net, params, x, y, max_norm=0.1, noise_multiplier=0.7, key=key,
                               train=True)
    drop_key, noise_key = funcnn.random.split(key)
    _, cache = funcnn.forward(net, params, x, key=drop_key, train=True)
    want, _ = pe.clipped_grad_from_cache(net, params, cache, check_y(net, y, M, np.float64),
                                         max_norm=0.1, noise_multiplier=0.7, key=noise_key)
    assert_close(got, want, "clipped_mean_grad vs the split keys", rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtypes_are_preserved(backend, dtype):
    net = funcnn.MLP((5, 6, 3), hidden="gelu", dropout=0.2)
    params = funcnn.init_params(net, 1, backend=backend, dtype=dtype)
    x, y = make_data(net, "labels", M, 1)
    key = funcnn.random.key(1, backend)
    fns = {
        "per_example_grads": functools.partial(pe.per_example_grads, net, key=key, train=True),
        "per_example_grad_norms": functools.partial(pe.per_example_grad_norms, net, key=key,
                                                    train=True),
        "clipped_mean_grad": functools.partial(pe.clipped_mean_grad, net, max_norm=1.0,
                                               noise_multiplier=1.0, key=key, train=True),
    }
    for name, fn in fns.items():
        jitted = backend == "jax" and dtype == "float32"  # float32 is what jit could lose
        for run in ((fn, jax.jit(fn)) if jitted else (fn,)):
            out = run(params, x.astype(dtype), y)
            for leaf in tree_leaves(out):
                assert leaf.dtype == np.dtype(dtype), (name, leaf.dtype)
                assert isinstance(leaf, np.ndarray) == (backend == "numpy"), name
                assert np.isfinite(np.asarray(leaf)).all(), name


# ------------------------------------------------------------------ the gradient function


def _output_delta(net, cache, y):
    return funcnn.losses.get_loss(net.loss).delta(net.output, cache.zs[-1], cache.out, y)


@pytest.mark.slow
def test_dp_grad_settings_hash_equal_and_compile_once(make_params):
    assert pe.dp_grad(1, 0) == pe.dp_grad(1.0, 0.0) == pe.DPGrad(1.0)
    assert hash(pe.dp_grad(1, 0)) == hash(pe.dp_grad(1.0))
    assert pe.dp_grad(1.0, 0.5) != pe.dp_grad(1.0, 0.6)
    assert pe.dp_grad(np.float32(2.0)).max_norm == 2.0
    assert type(pe.dp_grad(np.float32(2.0)).max_norm) is float
    traces = []

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def grads_of(net, grad_fn, params, x, y, key):
        traces.append(grad_fn)
        cache = apply(net, params, x, (None,))
        return grad_fn(net, params, cache, _output_delta(net, cache, y), rows=M, key=key)

    net = funcnn.MLP((5, 6, 4))
    params = make_params(net, 0, backend="jax")
    x, y = make_data(net, "labels", M, 0)
    key = funcnn.random.key(0, "jax")
    first = grads_of(net, pe.dp_grad(1, 0.5), params, x, y, key)
    second = grads_of(net, pe.dp_grad(1.0, 0.5), params, x, y, key)
    assert len(traces) == 1
    assert_close(second, first, "an equal gradient function", rtol=0.0)
    grads_of(net, pe.dp_grad(2.0, 0.5), params, x, y, key)
    assert len(traces) == 2


@pytest.mark.parametrize("rows", ["all", "some"])
def test_dp_grad_is_the_clipped_gradient_of_its_rows(backend, make_params, rows):
    """From the delta of a mean over ``rows`` examples (the rest zero, as on a padded short
    batch), ``dp_grad`` gives ``clipped_grad_from_cache`` of those examples alone, its
    noise drawn from ``fold_in(key, NOISE_STREAM)``."""
    net, kind = net_for("tanh", "softmax+ce/labels")
    params = make_params(net, 4, backend=backend)
    x, y = make_data(net, kind, M, 4)
    n = M if rows == "all" else 4
    key = funcnn.random.key(4, backend)
    _, cache = funcnn.forward(net, params, x, key=key, train=True)
    y = check_y(net, y, M, np.float64)
    # the cache of the first n rows alone (each row's pass depends on its own row only)
    head = funcnn.tree.tree_map(lambda a: a[:n], cache)
    dz = _output_delta(net, head, y[:n])
    xp = funcnn.backend.array_namespace(dz)
    dz = xp.concatenate([dz, xp.zeros((M - n, dz.shape[1]), dz.dtype)])
    grad_fn = pe.dp_grad(0.3, 0.9)
    run = jax.jit(grad_fn, static_argnums=0) if backend == "jax" else grad_fn
    got = run(net, params, cache, dz, rows=n, key=key)
    want, _ = pe.clipped_grad_from_cache(net, params, head, y[:n], max_norm=0.3,
                                         noise_multiplier=0.9,
                                         key=funcnn.random.fold_in(key, pe.NOISE_STREAM))
    assert_close(got, want, f"dp_grad over {n} of {M} rows", rtol=1e-12)


OPTIMIZERS = {
    "sgd": lambda: funcnn.optim.sgd(lr=0.1),
    "sgd_momentum": lambda: funcnn.optim.sgd(lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda: funcnn.optim.adam(1e-2),
    "adamw": lambda: funcnn.optim.adamw(1e-2, mask=funcnn.optim.weights_only),
    "rmsprop": lambda: funcnn.optim.rmsprop(1e-2),
    "adagrad": lambda: funcnn.optim.adagrad(0.1),
    "clipped_adam": lambda: funcnn.optim.with_clipping(funcnn.optim.adam(1e-2), 0.5),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_dp_grad_goes_with_every_optimizer(backend, name):
    """A DP step is ``optimizer.update`` of the clipped, noised gradient, for every
    optimizer, and keeps float32 parameters float32 (jitted for two of them: a
    compilation each)."""
    net = funcnn.MLP((5, 6, 4), hidden="tanh", dropout=0.25)
    opt = OPTIMIZERS[name]()
    params = funcnn.init_params(net, 3, backend=backend)
    state = opt.init(params)
    x, y = make_data(net, "labels", M, 3)
    x = funcnn.to_backend(x, backend, "float32")
    y = funcnn.to_backend(y, backend)
    key = funcnn.random.key(3, backend)
    step = funcnn.make_train_step(net, opt, grad_fn=pe.dp_grad(0.5, 1.1))
    run = jax.jit(step) if backend == "jax" and name in ("sgd", "adam") else step
    new, new_state, _ = run(params, state, x, y, key)
    _, cache = funcnn.forward(net, params, x, key=key, train=True)  # the step's masks
    grads, _ = pe.clipped_grad_from_cache(net, params, cache, y, max_norm=0.5,
                                          noise_multiplier=1.1,
                                          key=funcnn.random.fold_in(key, pe.NOISE_STREAM))
    want, want_state = opt.update(params, grads, state)
    assert_close(new, want, f"{name}: the step vs update(DP gradient)", rtol=1e-5)
    assert type(new_state) is type(state)
    assert {leaf.dtype for leaf in tree_leaves(new)} == {np.dtype("float32")}
    assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(tree_leaves(new), tree_leaves(params), strict=True)) > 0


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(("max_norm", "noise", "error", "words"), [
    (0.0, 0.0, ValueError, "max_norm must be positive"),
    (-1.0, 0.0, ValueError, "max_norm must be positive"),
    (float("nan"), 0.0, ValueError, "max_norm must be positive and finite"),
    (float("inf"), 0.0, ValueError, "max_norm must be positive and finite"),
    (True, 0.0, TypeError, "max_norm must be a positive number"),
    ("1.0", 0.0, TypeError, "max_norm must be a positive number"),
    (np.ones(2), 0.0, TypeError, "max_norm must be a positive number"),
    (1.0, -0.5, ValueError, "noise_multiplier must be non-negative"),
    (1.0, float("inf"), ValueError, "noise_multiplier must be non-negative and finite"),
    (1.0, None, TypeError, "noise_multiplier must be a non-negative number"),
])
def test_bad_settings_are_named(max_norm, noise, error, words):
    with pytest.raises(error, match=words):
        pe.dp_grad(max_norm, noise)
    net = funcnn.MLP((5, 3))
    params = funcnn.init_params(net, 0, dtype="float64")
    x, y = make_data(net, "labels", M, 0)
    with pytest.raises(error, match=words):
        pe.clipped_mean_grad(net, params, x, y, max_norm=max_norm, noise_multiplier=noise)


def test_noise_without_a_key_and_traced_settings_are_refused():
    net = funcnn.MLP((5, 3))
    params = funcnn.init_params(net, 0, dtype="float64")
    x, y = make_data(net, "labels", M, 0)
    with pytest.raises(ValueError, match="noise_multiplier=1.0 adds Gaussian noise.*needs a key"):
        pe.clipped_mean_grad(net, params, x, y, max_norm=1.0, noise_multiplier=1.0)
    _, cache = funcnn.forward(net, params, x)
    dz = _output_delta(net, cache, check_y(net, y, M, np.float64))
    with pytest.raises(ValueError, match="needs a key"):
        pe.dp_grad(1.0, 1.0)(net, params, cache, dz, rows=M, key=None)
    with pytest.raises(TypeError, match="max_norm must be a Python number, not a traced value"):
        jax.jit(lambda c: pe.dp_grad(c))(1.0)


def test_inputs_are_checked_as_value_and_grad_checks_them():
    net = funcnn.MLP((5, 6, 3), dropout=0.5)
    params = funcnn.init_params(net, 0, dtype="float64")
    x, y = make_data(net, "labels", M, 0)
    for fn in (pe.per_example_grads, pe.per_example_grad_norms,
               functools.partial(pe.clipped_mean_grad, max_norm=1.0)):
        with pytest.raises(ValueError, match="x has 4 features but the net expects 5"):
            fn(net, params, x[:, :4], y)
        with pytest.raises(ValueError, match="y has length 5 but x has 6 rows"):
            fn(net, params, x, y[:5])
        with pytest.raises(ValueError, match=r"class labels must be in \[0, 3\)"):
            fn(net, params, x, y + 3)
        with pytest.raises(ValueError, match="train=True with dropout needs a key"):
            fn(net, params, x, y, train=True)
        with pytest.raises(TypeError, match="net must be a funcnn.MLP"):
            fn("net", params, x, y)
        with pytest.raises(ValueError, match="params does not match"):
            fn(net, params[:1], x, y)


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_grad_and_norms_from_one_pass(make_params, backend, pair):
    """The check-free pieces a loop uses: one pass gives backward's gradient and the norms."""
    net, kind = net_for("softplus", pair)
    params = make_params(net, 5, backend=backend)
    x, y = make_data(net, kind, M, 5)
    _, cache = funcnn.forward(net, params, x, key=funcnn.random.key(5, backend), train=True)
    y = check_y(net, y, M, np.float64)
    grads, norms = pe.grad_and_norms_from_cache(net, params, cache, y)
    assert_close(grads, backward(net, params, cache, y), "gradient from the per-example pass")
    np.testing.assert_allclose(norms, pe.norms_from_cache(net, params, cache, y), rtol=1e-14)
    np.testing.assert_allclose(norms, np.linalg.norm(
        flat(pe.grads_from_cache(net, params, cache, y)), axis=1), rtol=RTOL)


# ------------------------------------------------------------------ extreme magnitudes


def extreme_case(depth: int):
    """float32 examples whose gradients are representable but whose squares are not.

    Identity layers and MSE: with ``W0 = 1e-20`` the first layer maps ``x = 1e20`` to 1,
    so row 0's gradient has an element ``x * delta = 1e20`` (its square overflows float32);
    row 1 (``x = 0``, output 0) has its target ``1e-30`` away, so its gradient is ``~1e-30``
    (its square underflows to 0); row 2 is moderate."""
    if depth == 1:
        net = funcnn.MLP((1, 1), output="identity", loss="mse")
        params = (funcnn.Dense(np.full((1, 1), 1e-20), np.zeros(1)),)
    else:
        net = funcnn.MLP((1, 1, 1), hidden="identity", output="identity", loss="mse")
        params = (funcnn.Dense(np.full((1, 1), 1e-20), np.zeros(1)),
                  funcnn.Dense(np.ones((1, 1)), np.zeros(1)))
    params = funcnn.to_backend(params, "numpy", dtype="float32")
    x = np.array([[1e20], [0.0], [2.0]], np.float32)
    out = np.asarray(funcnn.predict(net, params, x), np.float32)
    y = out + np.array([[-0.5], [1e-30], [0.75]], np.float32)
    return net, params, x, y


def extreme_reference(net, params, x, y):
    """Per-example grads of the same float32 numbers, in float64 (where nothing overflows)."""
    p64 = funcnn.to_backend(params, "numpy", dtype="float64")
    return flat(reference(net, p64, x.astype(np.float64), y.astype(np.float64),
                          (None,) * (net.n_layers - 1)))


@pytest.mark.parametrize(("backend", "jit"), [("numpy", False), ("jax", False), ("jax", True)],
                         ids=["numpy", "jax", "jax-jit"])
@pytest.mark.parametrize("depth", [1, 2])
def test_norms_and_clipping_of_gradients_whose_squares_overflow_or_underflow(
        backend, depth, jit):
    net, params, x, y = extreme_case(depth)
    rows = extreme_reference(net, params, x, y)
    want_norms = np.linalg.norm(rows, axis=1)
    assert want_norms[0] > 1e19 and 0 < want_norms[1] < 1e-29  # the case is what it says
    params, x_b, y_b = funcnn.to_backend((params, x, y), backend)

    norms_fn = functools.partial(pe.per_example_grad_norms, net)
    clip_fn = functools.partial(pe.clipped_mean_grad, net)
    if jit:
        norms_fn, clip_fn = jax.jit(norms_fn), jax.jit(clip_fn, static_argnames=("max_norm",))
    norms = np.asarray(norms_fn(params, x_b, y_b), np.float64)
    np.testing.assert_allclose(norms, want_norms, rtol=1e-6)

    for max_norm in (1.0, 1e-3):  # each example clipped to the bound, none dropped
        scale = np.minimum(1.0, max_norm / want_norms)
        want = (rows * scale[:, None]).mean(axis=0)
        got = flat(tree_map(lambda g: g[None], clip_fn(params, x_b, y_b, max_norm=max_norm)))[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max_norm)
    # row 0 alone: its unit direction times the bound, not 0 (weight C / inf)
    alone = clip_fn(params, x_b[:1], y_b[:1], max_norm=1.0)
    got = flat(tree_map(lambda g: g[None], alone))[0]
    np.testing.assert_allclose(got, rows[0] / want_norms[0], rtol=1e-5, atol=1e-6)

    cache = apply(net, params, x_b, (None,) * (net.n_layers - 1))
    targets = check_y(net, y_b, 3, np.float32)
    _, one_pass = pe.grad_and_norms_from_cache(net, params, cache, targets)
    dp, dp_norms = pe.clipped_grad_from_cache(net, params, cache, targets, max_norm=1.0)
    for n in (one_pass, dp_norms, pe.norms_from_cache(net, params, cache, targets)):
        np.testing.assert_allclose(np.asarray(n, np.float64), want_norms, rtol=1e-6)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in tree_leaves(dp))
