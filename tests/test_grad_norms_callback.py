"""Per-example gradient norms in fit's history, for spotting mislabelled examples."""

from __future__ import annotations

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


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_the_largest_norms_point_at_the_flipped_labels(backend, tmp_path):
    x, y, flipped = _blobs_with_flipped_labels()
    net = funcnn.MLP((2, 8, 2))
    params = funcnn.init_params(net, 0, backend=backend)
    cb = funcnn.callbacks.grad_norms(x, y, top=3)
    params, _, history = funcnn.fit(net, params, funcnn.optim.adam(1e-2), x, y, epochs=15,
                                    batch_size=32, key=0, progress=False, callbacks=[cb])
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
