"""A convolution's and a max-pooling's forward + backward pass, several ways, in one run.

    python benchmarks/conv_layers.py [--repeats 20] [--numpy-repeats 5]

The layers of a small MNIST net, float32: two 3x3 convolutions ("same" padding, stride
1) of 32 filters on a (128, 28, 28, 1) batch and of 64 filters on a (128, 14, 14, 32)
one, and a 2x2 max-pooling of a (128, 28, 28, 32) batch. Each contender computes the
output, then the gradients of the params and of the input for a random cotangent:

* ``funcnn-jax``: the ``funcnn.layers`` layer's forward and hand-written backward
  pass (patches and matrix products; a one-hot mask for max-pooling), one ``jax.jit``;
* ``patch-jax-grad``: ``jax.vjp`` of the same forward pass, jitted: autodiff's version;
* ``lax-jax-grad``: ``jax.vjp`` of ``lax.conv_general_dilated`` (NHWC, HWIO) or
  ``lax.reduce_window``, jitted: what a JAX user writes first;
* ``funcnn-numpy``: the funcnn layer on NumPy arrays;
* ``matmuls-jax``, ``matmuls-numpy`` (convolutions): only the three matrix products
  of the patch form (``P @ Wm``, ``P.T @ dZ``, ``dZ @ Wm.T``) on ready operands, the
  floor the patch form's gathering and folding add to.

The contenders are timed in turn, round after round (a busy machine slows all alike).
Prints the median and least seconds of each, the median's ratio to ``funcnn-jax``, the
rate of the convolutions' three products in GFLOP/s (``2 * rows * k * n`` each), the
machine and the load. ``conv_epoch.py`` trains a whole net of these layers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from harness.machine import machine  # the harness puts the working tree's funcnn first
from harness.report import print_machine
from jax import lax

from funcnn.layers import Conv2D, MaxPool2D

CASES = ((Conv2D(32, 3, padding="same"), (128, 28, 28, 1)),
         (Conv2D(64, 3, padding="same"), (128, 14, 14, 32)),
         (MaxPool2D(2), (128, 28, 28, 32)))


def lax_forward(layer):
    if isinstance(layer, Conv2D):
        return lambda params, x: lax.conv_general_dilated(
            x, params.W, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        ) + params.b.reshape(1, 1, 1, -1)
    return lambda params, x: lax.reduce_window(x, -jnp.inf, lax.max, (1, *layer.window, 1),
                                               (1, *layer.stride, 1), "VALID")


def contenders(layer, params, x, dy) -> dict:
    """name -> (f, args); each f returns the output and the gradients (params, x)."""
    def hand(params, x, dy):
        y, cache, _ = layer.forward(params, (), x, train=True)
        return y, layer.backward(params, cache, dy)

    def by_autodiff(forward):
        def run(params, x, dy):
            y, vjp = jax.vjp(forward, params, x)
            return y, vjp(dy)
        return jax.jit(run)

    on_jax = jax.tree_util.tree_map(jnp.asarray, (params, x, dy))
    runs = {"funcnn-jax": (jax.jit(hand), on_jax),
            "patch-jax-grad": (by_autodiff(lambda p, x: layer.forward(p, (), x, train=True)[0]),
                               on_jax),
            "lax-jax-grad": (by_autodiff(lax_forward(layer)), on_jax),
            "funcnn-numpy": (hand, (params, x, dy))}
    if isinstance(layer, Conv2D):
        patches = layer.forward(params, (), x, train=True)[1].patches
        wm, dz = params.W.reshape(patches.shape[1], -1), dy.reshape(patches.shape[0], -1)

        def matmuls(p, w, d):
            return p @ w, p.T @ d, d @ w.T

        runs["matmuls-jax"] = (jax.jit(matmuls), tuple(jnp.asarray(a) for a in (patches, wm, dz)))
        runs["matmuls-numpy"] = (matmuls, (patches, wm, dz))
    return runs


def interleaved_seconds(runs: dict, repeats: dict) -> dict:
    """name -> (median, least) seconds of ``f(*args)`` for each ``runs[name] = (f, args)``."""
    for fn, args in runs.values():
        jax.block_until_ready(fn(*args))  # compile (jax) and warm up
    times = {name: [] for name in runs}
    for r in range(max(repeats.values())):
        for name, (fn, args) in runs.items():
            if r < repeats[name]:
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def check_agree(runs: dict) -> None:
    """funcnn's results (both backends) equal autodiff of lax's forward, to float32 rounding."""
    ref = jax.tree_util.tree_leaves(runs["lax-jax-grad"][0](*runs["lax-jax-grad"][1]))
    for name in ("funcnn-jax", "funcnn-numpy"):
        got = jax.tree_util.tree_leaves(runs[name][0](*runs[name][1]))
        for a, r in zip(got, ref, strict=True):
            err = float(np.max(np.abs(np.asarray(a) - np.asarray(r))) / np.max(np.abs(r)))
            assert err < 1e-4, f"{name} differs from lax by {err:.2g}"


def conv_flops(layer, shape) -> int:
    """FLOPs of a convolution's three products (output, kernel and input gradients); 0 for
    pooling. ``"same"`` padding, stride 1: ``rows = m * H * W``, ``k = kh * kw * C``."""
    if not isinstance(layer, Conv2D):
        return 0
    m, h, w, c = shape
    kh, kw = layer.kernel_size
    return 3 * 2 * (m * h * w) * (kh * kw * c) * layer.filters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of each jax program")
    parser.add_argument("--numpy-repeats", type=int, default=5, help="timed runs on NumPy")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    for layer, shape in CASES:
        params, _, out = layer.init(0, shape[1:], backend="numpy")
        params = jax.tree_util.tree_map(lambda v: v + rng.normal(size=v.shape).astype(v.dtype),
                                        params)
        x = rng.normal(size=shape).astype(np.float32)
        dy = rng.normal(size=(shape[0], *out)).astype(np.float32)
        runs = contenders(layer, params, x, dy)
        check_agree(runs)
        results = interleaved_seconds(runs, {name: args.numpy_repeats if name.endswith("numpy")
                                             else args.repeats for name in runs})
        print(f"\n{layer!r} on {shape}, float32, forward + backward")
        print(f"  {'contender':<15} {'median':>9}    {'least':>9}    median / funcnn-jax"
              "   GFLOP/s")
        base = results["funcnn-jax"][0]
        flops = conv_flops(layer, shape)
        for name, (median, least) in results.items():
            ms = f"{median * 1e3:9.2f} ms {least * 1e3:9.2f} ms"
            rate = f"{flops / median / 1e9:9.1f}" if flops else ""
            print(f"  {name:<15} {ms} {median / base:6.2f}x {rate:>16}")
    print()
    print_machine({"machine": machine(), "load_before": load_before})


if __name__ == "__main__":
    main()
