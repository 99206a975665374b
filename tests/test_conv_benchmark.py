"""The convolutional benchmark (``benchmarks/conv_epoch.py``): its FLOP count, its two
forms of the net, its targets and a tiny run. No assertion here is about speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from harness import child_env  # noqa: E402
from harness.contenders.conv import (  # noqa: E402
    CONV_CONTENDERS,
    build_gemm_floor,
    initial_params,
    lax_forward,
    torch_weights,
)
from harness.conv import ConvConfig, conv_net, products, step_flops  # noqa: E402
from harness.conv_cli import conv_targets, losses_disagree  # noqa: E402

SMALL = ConvConfig("t", channels=(2, 3), hidden=4, batch_size=2, samples=2, repeats=1)


def test_step_flops_count_the_products_the_gemm_floor_runs(monkeypatch):
    counted = []
    matmul = np.matmul

    def counting(a, b, out=None):
        counted.append(2 * a.shape[0] * a.shape[1] * b.shape[1])
        return matmul(a, b, out=out)

    monkeypatch.setattr(np, "matmul", counting)
    build_gemm_floor(SMALL, None, None).epoch(0)  # one step
    assert len(counted) == 4 + 4 + 3  # forward, dW, and dX but for the first layer
    flops = step_flops(SMALL)
    assert sum(counted) == flops["forward"] + flops["backward"] == sum(flops["layers"].values())


def test_the_products_are_the_shapes_of_funcnns_patch_form():
    """Each product's (rows, k, n) is what funcnn's forward pass multiplies."""
    net = conv_net(SMALL)
    params, state = initial_params(SMALL)
    x = np.random.default_rng(0).random((SMALL.batch_size, 28, 28, 1), dtype=np.float32)
    _, caches, _ = net.forward(params, state, x, train=True)
    conv1, conv2, dense1, dense2 = products(SMALL)
    for p, cache in ((conv1, caches[0]), (conv2, caches[3])):
        assert cache.patches.shape == (p.rows, p.k), p.name
    for p, i in ((dense1, 7), (dense2, 9)):
        assert caches[i].x.shape == (p.rows, p.k) and params[i].W.shape == (p.k, p.n), p.name


def test_lax_forward_computes_the_logits_of_the_patch_form():
    params, state = initial_params(SMALL)
    x = np.random.default_rng(1).random((3, 28, 28, 1), dtype=np.float32)
    want = conv_net(SMALL).forward(params, state, x, train=True)[0]
    got = np.asarray(lax_forward(params, x))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_torch_weights_are_funcnns_weights_in_torchs_layouts():
    """The kernels become (F, C, kh, kw); the first dense layer's rows, read by torch in
    (C, H, W) order, are funcnn's (H, W, C) rows moved accordingly."""
    cfg = SMALL._replace(channels=(2, 3))
    params, _ = initial_params(cfg)
    k1, b1, k2, _, w1, _, w2, _ = torch_weights(params)
    assert k1.shape == (2, 1, 3, 3) and k1[1, 0, 2, 0] == params[0].W[2, 0, 0, 1]
    assert k2[2, 1, 0, 2] == params[3].W[0, 2, 1, 2]
    h, w, c = 7, 7, 3
    for (i, j, ch), o in (((0, 0, 0), 0), ((3, 5, 2), 1), ((6, 6, 1), 3)):
        assert w1[o, ch * h * w + i * w + j] == params[7].W[(i * w + j) * c + ch, o]
    assert np.array_equal(w2, params[9].W.T) and np.array_equal(b1, params[0].b)


def test_targets_compare_funcnn_jax_with_autodiff_and_torch():
    rows = [{"name": "funcnn-jax", "median_s": 1.0}, {"name": "patch-jax-grad", "median_s": 0.8},
            {"name": "torch-eager", "median_s": 2.0}, {"name": "gemm-floor", "median_s": 0.5}]
    found = {label: (measured, met) for label, measured, met in conv_targets(rows)}
    assert found["funcnn-jax <= 1.1 x patch-jax-grad"] == ("1.25 x", False)
    assert found["funcnn-jax faster than torch-eager"] == ("0.50 x", True)
    assert found["lax-jax-grad / funcnn-jax"] == ("not measured", None)


def test_losses_that_disagree_are_named():
    rows = [{"name": "funcnn-jax", "last_loss": 2.0}, {"name": "torch-eager", "last_loss": 2.01},
            {"name": "lax-jax-grad", "last_loss": 2.5}, {"name": "gemm-floor", "last_loss": None},
            {"name": "funcnn-numpy", "last_loss": 1.0, "repeats": 1}]  # cut short: not compared
    for r in rows[:4]:
        r["repeats"] = 2
    assert [line.split()[0] for line in losses_disagree(rows)] == ["lax-jax-grad"]


@pytest.mark.slow
def test_the_tiny_run_trains_every_contender_alike(tmp_path):
    """``conv_epoch.py --tiny`` (what CI runs) times every contender and writes the JSON;
    the trainers start from the same weights and see the same batches, so their last
    losses agree. torch-eager is skipped, with its reason, only where torch is missing."""
    out = tmp_path / "conv.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "conv_epoch.py"), "--tiny",
                           "--json", str(out)], capture_output=True, text=True, timeout=600,
                          env=child_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["results"]}
    assert list(rows) == list(CONV_CONTENDERS)
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "torch" in rows.pop("torch-eager")["skipped"]
    skipped = {name: r["skipped"] for name, r in rows.items() if "skipped" in r}
    assert not skipped, skipped
    assert report["losses_disagree"] == []
    losses = [r["last_loss"] for r in rows.values() if r["last_loss"] is not None]
    assert len(losses) == len(rows) - 2 and np.all(np.isfinite(losses))  # all but the floors
    floor = rows["gemm-floor"]["median_s"]
    for r in rows.values():
        assert r["ratio"] == pytest.approx(r["median_s"] / floor)
        assert r["epoch_s"] == pytest.approx(r["median_s"] * 8 / 4)  # 4 of 8 steps
    assert report["machine"]["cores"] >= 1 and len(report["load_before"]) == 3
    assert "funcnn-jax" in done.stdout and "x funcnn-jax" in done.stdout
