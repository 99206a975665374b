"""Per-example gradients in training: DP-SGD clipping in fit and in a train step, and
per-example gradient norms in fit's history, for spotting mislabelled examples."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import funcnn


def _blobs_with_flipped_labels(n=200, flipped=(3, 50, 120)):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = (rng.normal(size=(n, 2)) * 0.3 + np.where(y[:, None] == 1, 2.0, -2.0)).astype(np.float32)
    y_noisy = y.copy()
    y_noisy[list(flipped)] = 1 - y_noisy[list(flipped)]
    return x, y_noisy, set(flipped)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_the_largest_norms_point_at_the_flipped_labels(backend, tmp_path):
    x, y, flipped = _blobs_with_flipped_labels()
    net = funcnn.MLP((2, 8, 2))
    params = funcnn.init_params(net, 0, backend=backend)
    cb = funcnn.callbacks.grad_norms(x, y, top=3)
    given = []
    spy = funcnn.callbacks.Callback(on_epoch_end=lambda state, info: given.append(
        (state.history, {k: list(v) for k, v in state.history.items()})))
    params, _, history = funcnn.fit(net, params, funcnn.optim.adam(1e-2), x, y, epochs=15,
                                    batch_size=32, key=0, progress=False, callbacks=[spy, cb])
    # the callback adds to a new history, never to the one it is given
    assert "grad_norm_top" not in given[0][0]
    assert all(h == before for h, before in given)
    assert len(history["grad_norm_top"]) == 15
    assert set(history["grad_norm_top"][-1]) == flipped
    norms = np.asarray(funcnn.per_example.per_example_grad_norms(net, params, x, y))
    assert history["grad_norm_max"][-1] == pytest.approx(norms.max(), rel=1e-5)
    assert history["grad_norm_mean"][-1] == pytest.approx(norms.mean(), rel=1e-5)


def test_the_norms_history_survives_a_checkpoint(tmp_path):
    x, y, _ = _blobs_with_flipped_labels()
    net = funcnn.MLP((2, 8, 2))
    params = funcnn.init_params(net, 0)
    path = tmp_path / "run.ckpt"
    callbacks = [funcnn.callbacks.grad_norms(x, y), funcnn.callbacks.checkpoint(path)]
    _, _, history = funcnn.fit(net, params, funcnn.optim.adam(1e-2), x, y, epochs=2,
                               batch_size=64, key=0, progress=False, callbacks=callbacks)
    saved = funcnn.callbacks.load_fit_state(path, net)
    assert saved.history["grad_norm_top"] == history["grad_norm_top"]
    with pytest.raises(ValueError, match="top"):
        funcnn.callbacks.grad_norms(x, y, top=0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_dp_grad_in_fit(backend):
    x, y, _ = _blobs_with_flipped_labels()
    net = funcnn.MLP((2, 8, 2), dropout=0.1)
    params = funcnn.init_params(net, 0, backend=backend, dtype="float64")
    adam = funcnn.optim.adam(1e-2)

    def run(grad_fn=funcnn.step.backward_grad, key=0):  # 200 rows: batches 64, 64, 64, 8
        return funcnn.fit(net, params, adam, x, y, epochs=2, batch_size=64, key=key,
                          grad_fn=grad_fn, progress=False)[0]

    plain = run()
    loose = run(funcnn.per_example.dp_grad(max_norm=1e6))  # clipping never bites
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(loose),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    tight = funcnn.per_example.dp_grad(max_norm=0.01, noise_multiplier=1.0)
    first, again, other = run(tight), run(tight), run(tight, key=1)
    leaves = [jax.tree_util.tree_leaves(t) for t in (first, again, other, plain)]
    assert all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[1], strict=True))
    assert not all(np.allclose(a, b) for a, b in zip(leaves[0], leaves[2], strict=True))
    assert not all(np.allclose(a, b) for a, b in zip(leaves[0], leaves[3], strict=True))


def test_a_noisy_dp_step_needs_a_key_and_equals_the_clipped_gradient():
    x, y, _ = _blobs_with_flipped_labels()
    net = funcnn.MLP((2, 8, 2))
    params = funcnn.init_params(net, 0, dtype="float64")
    opt = funcnn.optim.sgd(0.1)
    step = funcnn.make_train_step(net, opt, grad_fn=funcnn.per_example.dp_grad(0.5, 0.7))
    state = opt.init(params)
    with pytest.raises(ValueError, match="noise_multiplier=0.7 adds Gaussian noise.*needs a key"):
        step(params, state, x[:16], y[:16])
    key = funcnn.random.key(4)
    new, _, _ = step(params, state, x[:16], y[:16], key)
    cache = funcnn.apply(net, params, x[:16].astype(np.float64), (None,))
    grads, _ = funcnn.per_example.clipped_grad_from_cache(
        net, params, cache, y[:16], max_norm=0.5, noise_multiplier=0.7,
        key=funcnn.random.fold_in(key, funcnn.per_example.NOISE_STREAM))
    want = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(want),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_the_noise_key_is_never_a_dropout_key():
    for seed in range(20):
        key = funcnn.random.key(seed)
        noise = np.asarray(funcnn.random.fold_in(key, funcnn.per_example.NOISE_STREAM))
        drops = np.asarray(funcnn.random.split(key, 8))  # the masks of up to 8 hidden layers
        assert not any(np.array_equal(noise, d) for d in drops)
        assert np.array_equal(np.asarray(funcnn.random.fold_in(key, 1)), drops[1])  # why
