"""The convolutional net's step piece by piece, each against its own matrix products
(``conv_epoch.py --passes``): the cost model of ``docs/performance.md``.

- NumPy: every layer's forward and backward pass timed alone, batch by batch, beside the
  same layer's products on ready operands (:func:`harness.conv.products`), and the
  gather, the loss and Adam;
- jax: the net as whole programs, each one jitted ``lax.scan`` over the same batches
  (forward only; forward + backward; the whole training step), beside XLA running only
  the forward products, or all of them. XLA fuses across layers, so a jax step is not
  split by layer.

Seconds are medians per step.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

import funcnn

from .contenders.conv import CROSS_ENTROPY, _adam, funcnn_step, initial_params
from .conv import ConvConfig, conv_net, order, products
from .data import permutation

__all__ = ["jax_programs", "numpy_layers"]


def _layer_products(cfg: ConvConfig) -> dict[int, tuple]:
    """Serial index -> ``(A, W, dZ, needs_dx)`` of the layer's products, random operands."""
    rng, dt = np.random.default_rng(cfg.seed), np.dtype(cfg.dtype)
    out = {}
    for i, p in zip((0, 3, 7, 9), products(cfg), strict=True):
        a, w, dz = (rng.standard_normal(s).astype(dt) for s in ((p.rows, p.k), (p.k, p.n),
                                                                 (p.rows, p.n)))
        out[i] = (a, w, dz, p.dx)
    return out


def _gather(x, y, rows):
    return x[rows], y[rows]


def _loss_delta(z, y):
    """The loss and its gradient ``(p - Y) / m`` from the logits, as the step computes them."""
    p = funcnn.activations.softmax(z)
    return CROSS_ENTROPY.value("softmax", z, p, y), CROSS_ENTROPY.delta("softmax", z, p, y)


def _backward_products(a, w, dz, dx: bool):
    return a.T @ dz, (dz @ w.T if dx else None)


def numpy_layers(cfg: ConvConfig, x: np.ndarray, y: np.ndarray, steps: int) -> dict[str, float]:
    """Median seconds per step of each piece of funcnn's NumPy step, ``"i name pass"`` for
    layer ``i``, and of each layer's products (``"i name products forward"``...)."""
    net, opt = conv_net(cfg), _adam(cfg)
    params, state = initial_params(cfg)
    opt_state = opt.init(params)
    prods = _layer_products(cfg)
    times: dict[str, list[float]] = defaultdict(list)

    def timed(label: str, fn: Callable, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times[label].append(time.perf_counter() - start)
        return out

    for rows in order(cfg, permutation(cfg, 0))[:steps]:
        xb, yb = timed("gather", _gather, x, y, rows)
        h, caches = xb, []
        for i, layer in enumerate(net.layers):
            h, cache, _ = timed(f"{i} {type(layer).__name__} forward", layer.forward, params[i],
                                state[i], h, train=True)
            caches.append(cache)
        dh = timed("loss and delta", _loss_delta, h, yb)[1]
        grads = [None] * len(net.layers)
        for i in reversed(range(len(net.layers))):
            layer = net.layers[i]
            grads[i], dh = timed(f"{i} {type(layer).__name__} backward", layer.backward,
                                 params[i], caches[i], dh)
        params, opt_state = timed("adam", opt.update, params, tuple(grads), opt_state)
        for i, (a, w, dz, dx) in prods.items():
            name = type(net.layers[i]).__name__
            timed(f"{i} {name} products forward", np.matmul, a, w)
            timed(f"{i} {name} products backward", _backward_products, a, w, dz, dx)
    return {label: statistics.median(t) for label, t in times.items()}


def jax_programs(cfg: ConvConfig, x: np.ndarray, y: np.ndarray, steps: int,
                 repeats: int = 3) -> dict[str, float]:
    """Median seconds per step of whole jitted ``lax.scan`` programs over ``steps`` batches:
    funcnn's forward, forward + hand-written backward, the training step, ``jax.grad``'s
    forward + backward of the same forward, and XLA's forward products or all of them."""
    import jax
    import jax.numpy as jnp

    net = conv_net(cfg)
    params, state = initial_params(cfg)
    params = funcnn.backend.to_backend(params, "jax")
    opt_state = _adam(cfg).init(params)
    xd, yd = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    rows = jnp.asarray(order(cfg, permutation(cfg, 0))[:steps].astype(np.int32))
    prods = [(jnp.asarray(a), jnp.asarray(w), dx) for a, w, _, dx in _layer_products(cfg).values()]

    def total(tree):
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(tree))

    def loss(p, xb, yb):
        return CROSS_ENTROPY.value("softmax", net.forward(p, state, xb, train=True)[0], None, yb)

    def forward(p, xb, yb):
        return jnp.sum(net.forward(p, state, xb, train=True)[0])

    def forward_backward(p, xb, yb):
        z, cache, _ = net.forward(p, state, xb, train=True)
        dz = CROSS_ENTROPY.delta("softmax", z, funcnn.activations.softmax(z), yb)
        return total(net.backward(p, cache, dz)[0])

    def autodiff(p, xb, yb):
        return total(jax.grad(loss)(p, xb, yb))

    def products_only(forward_only: bool):
        def run(p, xb, yb):  # the products on operands made to depend on the batch
            s, out = jnp.sum(xb[0, 0, 0]) * 1e-9, 0.0
            for a, w, dx in prods:
                z = a @ (w + s)
                out = out + jnp.sum(z)
                if not forward_only:
                    out = out + jnp.sum(a.T @ z) + (jnp.sum(z @ w.T) if dx else 0.0)
            return out
        return run

    def scanned(body: Callable):
        @jax.jit
        def run(params, xd, yd, rows):
            def step(c, r):
                return c + body(params, xd[r], yd[r]), None
            return jax.lax.scan(step, jnp.zeros((), jnp.float32), rows)[0]
        return lambda: run(params, xd, yd, rows)

    train = funcnn_step(cfg, state)

    @jax.jit
    def train_run(carry, xd, yd, rows):
        return jax.lax.scan(lambda c, r: train(c, xd[r], yd[r]), carry, rows)[1]

    programs = {"forward": scanned(forward), "forward + backward": scanned(forward_backward),
                "training step": lambda: train_run((params, opt_state), xd, yd, rows),
                "jax.grad forward + backward": scanned(autodiff),
                "XLA products forward": scanned(products_only(True)),
                "XLA products forward + backward": scanned(products_only(False))}
    times: dict[str, list[float]] = defaultdict(list)
    for run in programs.values():
        jax.block_until_ready(run())  # compile
    for _ in range(repeats):
        for name, run in programs.items():
            time.sleep(0.3)
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}
