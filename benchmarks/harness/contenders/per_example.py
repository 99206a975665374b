"""Per-example gradients: funcnn's norms, clipping and DP-SGD gradient against
``jax.vmap(jax.grad)``, each as the gradient of an otherwise identical step.

Each step is forward, that gradient and Adam; the jax ones run the epoch's full batches
in one jitted ``lax.scan``, the NumPy ones in a Python loop, so that only the gradient
differs between rows of one backend. They run only when named in ``--only`` (a vmap
epoch takes minutes; a row that follows one runs slower, so time the vmap rows apart from
the ratios among funcnn's rows; docs/performance.md has both commands).
"""

from __future__ import annotations

from functools import partial

import numpy as np

import funcnn
from funcnn import network
from funcnn import per_example as pe

from ..config import Config, Contender
from ..data import jax_data, nbytes, permutation
from .funcnn_fit import funcnn_setup

__all__ = ["DP_MAX_NORM", "DP_NOISE", "PER_EXAMPLE", "PER_EXAMPLE_BUILDERS", "build_per_example"]

DP_MAX_NORM, DP_NOISE = 1.0, 1.1
PER_EXAMPLE = {  # contender -> what its step computes
    "pe-plain": "funcnn backward (the plain step the others are compared with)",
    "pe-norms": "funcnn: gradient + per-example norms from one pass",
    "pe-clip": "funcnn: DP clipped gradient, no noise",
    "pe-dp": f"funcnn: DP-SGD gradient, clip {DP_MAX_NORM} + noise {DP_NOISE}",
    "pe-numpy-plain": "NumPy loop: funcnn backward",
    "pe-numpy-dp": f"NumPy loop: DP-SGD gradient, clip {DP_MAX_NORM} + noise {DP_NOISE}",
    "vmap-grad-norms": "jax.grad of the batch + norms of jax.vmap(jax.grad)",
    "vmap-grad-dp": "jax.vmap(jax.grad): per-example grads, clip, sum, noise",
}


def _per_example_grad(kind: str, net, params, cache, xb, yb, key):
    """``(gradient, per-step output)`` of one contender's step on a prepared batch."""
    if kind.endswith("plain"):
        return network.backward(net, params, cache, yb), network.loss_from_cache(net, cache, yb)
    if kind == "pe-norms":
        return pe.grad_and_norms_from_cache(net, params, cache, yb)
    if kind == "pe-clip":
        grads, _ = pe.clipped_grad_from_cache(net, params, cache, yb, max_norm=DP_MAX_NORM)
        return grads, cache.out[0]
    if kind.endswith("dp") and kind.startswith("pe-"):
        grads, _ = pe.clipped_grad_from_cache(net, params, cache, yb, max_norm=DP_MAX_NORM,
                                              noise_multiplier=DP_NOISE, key=key)
        return grads, cache.out[0]
    return _vmap_grad(kind, net, params, xb, yb, key)


def _vmap_grad(kind: str, net, params, xb, yb, key):
    """Per-example gradients the usual JAX way, ``jax.vmap(jax.grad(loss of one example))``,
    then their norms beside ``jax.grad`` of the batch (``vmap-grad-norms``) or DP-SGD
    (``vmap-grad-dp``)."""
    import jax
    import jax.numpy as jnp

    no_masks = (None,) * (net.n_layers - 1)

    def one(p, xi, yi):  # the loss of one example, on the same net
        return network.loss_from_cache(net, network.apply(net, p, xi[None], no_masks), yi[None])

    per = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, xb, yb)
    leaves = jax.tree.leaves(per)
    norms = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in leaves))
    if kind == "vmap-grad-norms":  # the update from jax.grad of the batch, as usual
        batch = jax.grad(
            lambda p: network.loss_from_cache(net, network.apply(net, p, xb, no_masks), yb))
        return batch(params), norms
    scale = DP_MAX_NORM / jnp.maximum(norms, DP_MAX_NORM)
    keys = iter(jax.random.split(key, len(leaves)))

    def clip_sum_noise(g):
        total = jnp.einsum("m,m...->...", scale, g)
        noise = jax.random.normal(next(keys), total.shape, total.dtype)
        return (total + DP_NOISE * DP_MAX_NORM * noise) / xb.shape[0]

    return jax.tree.map(clip_sum_noise, per), norms


def build_per_example(kind: str, cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    """The contender ``kind`` of :data:`PER_EXAMPLE`."""
    if "numpy" in kind:
        return _per_example_numpy(kind, cfg, x, y)
    import jax
    import jax.numpy as jnp

    net, params, opt = funcnn_setup(cfg, "jax")
    xd, yd = jax_data(cfg, x, y)
    bs, steps = cfg.batch_size, cfg.samples // cfg.batch_size
    no_masks = (None,) * (net.n_layers - 1)

    def run_epoch(params, state, xd, yd, perm, keys):
        def body(carry, batch):
            p, s = carry
            xb, yb, key = batch
            cache = network.apply(net, p, xb, no_masks)
            grads, out = _per_example_grad(kind, net, p, cache, xb, yb, key)
            p, s = opt.update(p, grads, s)
            return (p, s), out

        batches = (xd[perm].reshape(steps, bs, -1), yd[perm].reshape(steps, bs), keys)
        (params, state), outs = jax.lax.scan(body, (params, state), batches)
        return params, state, outs

    run_epoch = jax.jit(run_epoch, donate_argnums=(0, 1))
    carry = [params, opt.init(params)]

    def epoch(i: int) -> None:
        perm = jnp.asarray(permutation(cfg, i)[: steps * bs])
        keys = funcnn.random.split(funcnn.random.key(cfg.seed * 1_000_003 + i, "jax"), steps)
        p, s, outs = run_epoch(*carry, xd, yd, perm, keys)
        carry[:] = [p, s]
        jax.block_until_ready(outs)

    held = nbytes(xd, yd, *(leaf for layer in params for leaf in layer))
    return Contender(epoch, cfg.dtype, steps, held, "rss", PER_EXAMPLE[kind])


def _per_example_numpy(kind: str, cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    net, params, opt = funcnn_setup(cfg, "numpy")
    xs = np.ascontiguousarray(x, dtype=cfg.dtype)
    bs, steps = cfg.batch_size, cfg.samples // cfg.batch_size
    no_masks = (None,) * (net.n_layers - 1)
    carry = [params, opt.init(params)]

    def epoch(i: int) -> None:
        perm = permutation(cfg, i)
        keys = funcnn.random.split(funcnn.random.key(cfg.seed * 1_000_003 + i), steps)
        p, s = carry
        for k in range(steps):
            idx = perm[k * bs:(k + 1) * bs]
            cache = network.apply(net, p, xs[idx], no_masks)
            grads, _ = _per_example_grad(kind, net, p, cache, None, y[idx], keys[k])
            p, s = opt.update(p, grads, s)
        carry[:] = [p, s]

    held = nbytes(xs, y, *(leaf for layer in params for leaf in layer))
    return Contender(epoch, cfg.dtype, steps, held, "tracemalloc", PER_EXAMPLE[kind])


PER_EXAMPLE_BUILDERS = {kind: partial(build_per_example, kind) for kind in PER_EXAMPLE}
