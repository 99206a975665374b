"""Hand-written JAX: ``jax.grad`` and Adam in ``jnp``, jitted per step (``jax-step-ref``)
or one ``lax.scan`` per epoch (``jax-scan-ref``), and JAX's own from-scratch MNIST example
(``jax-example``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..config import B1, B2, EPS, Config, Contender
from ..data import init_weights, jax_data, nbytes, permutation

__all__ = ["build_jax_example", "build_jax_scan_ref", "build_jax_step_ref", "jax_reference",
           "jax_step_epochs", "scan_ref_program"]


def jax_reference(cfg: Config, x: np.ndarray, y: np.ndarray):
    """What the two JAX references share: ``(step, params, state, xd, yd, held)``, i.e. one
    ``jax.value_and_grad`` + Adam (or SGD) step, the initial state, the data on the device
    and the bytes of data + params."""
    import jax
    import jax.numpy as jnp

    xd, yd = jax_data(cfg, x, y)

    act = jnp.tanh if cfg.activation == "tanh" else jax.nn.relu

    def loss_fn(params, xb, yb):
        a = xb
        for w, b in params[:-1]:
            a = act(a @ w + b)
        w, b = params[-1]
        logp = jax.nn.log_softmax(a @ w + b)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    def step(params, state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        if cfg.optimizer == "sgd":
            return jax.tree.map(lambda p, g: p - cfg.lr * g, params, grads), state + 1, loss
        count, mu, nu = state
        count = count + 1
        mu = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, mu, grads)
        nu = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, nu, grads)
        t = count.astype(xb.dtype)
        step_size = cfg.lr * jnp.sqrt(1 - B2**t) / (1 - B1**t)
        params = jax.tree.map(
            lambda p, m, v: p - step_size * m / (jnp.sqrt(v) + EPS), params, mu, nu
        )
        return params, (count, mu, nu), loss

    params = jax.tree.map(jnp.asarray, init_weights(cfg.sizes, cfg.seed, cfg.dtype))
    # two separate zero trees: both moments are donated, so they must not share buffers
    mu, nu = (jax.tree.map(jnp.zeros_like, params) for _ in range(2))
    state = (jnp.zeros((), jnp.int32), mu, nu)
    if cfg.optimizer == "sgd":
        state = jnp.zeros((), jnp.int32)  # a step count only
    held = nbytes(xd, yd, *jax.tree.leaves(params))
    return step, params, state, xd, yd, held


def jax_step_epochs(cfg: Config, step, params, state, xd, yd) -> Callable[[int], float]:
    """Epochs of a Python loop over ``jit(step, donate_argnums=(0, 1))``.

    Each epoch permutes the device arrays once (one jitted gather) and feeds
    the step contiguous slices of them. ``step(params, state, xb, yb)`` returns
    ``(params, state, loss)``.
    """
    import jax
    import jax.numpy as jnp

    bs, steps = cfg.batch_size, cfg.samples // cfg.batch_size
    step = jax.jit(step, donate_argnums=(0, 1))
    shuffle = jax.jit(lambda a, perm: a[perm])
    carry = [params, state]

    def epoch(i: int) -> float:
        perm = jnp.asarray(permutation(cfg, i)[: steps * bs])
        xp, yp = shuffle(xd, perm), shuffle(yd, perm)
        p, s = carry
        for k in range(steps):
            p, s, loss = step(p, s, xp[k * bs : (k + 1) * bs], yp[k * bs : (k + 1) * bs])
        carry[:] = [p, s]
        return float(loss.block_until_ready())

    return epoch


def build_jax_step_ref(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    step, params, state, xd, yd, held = jax_reference(cfg, x, y)
    epoch = jax_step_epochs(cfg, step, params, state, xd, yd)
    return Contender(epoch, cfg.dtype, cfg.samples // cfg.batch_size, held, "rss", "jit per step")


def scan_ref_program(step, steps: int, bs: int):
    """jax-scan-ref's jitted epoch ``(params, state, xd, yd, perm) -> (params, state,
    losses)``: the rows gathered in ``perm``'s order, then one ``lax.scan`` of ``step``."""
    import jax

    def run_epoch(params, state, xd, yd, perm):
        xb = xd[perm].reshape(steps, bs, -1)
        yb = yd[perm].reshape(steps, bs)

        def body(carry, batch):
            p, s, loss = step(*carry, *batch)
            return (p, s), loss

        (params, state), losses = jax.lax.scan(body, (params, state), (xb, yb))
        return params, state, losses

    return jax.jit(run_epoch, donate_argnums=(0, 1))


def build_jax_scan_ref(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    import jax.numpy as jnp

    step, params, state, xd, yd, held = jax_reference(cfg, x, y)
    bs, steps = cfg.batch_size, cfg.samples // cfg.batch_size
    run_epoch = scan_ref_program(step, steps, bs)
    carry = [params, state]

    def epoch(i: int) -> float:
        perm = jnp.asarray(permutation(cfg, i)[: steps * bs])
        p, s, losses = run_epoch(*carry, xd, yd, perm)
        carry[:] = [p, s]
        return float(losses[-1].block_until_ready())

    return Contender(epoch, cfg.dtype, steps, held, "rss", "one jitted lax.scan per epoch")


def build_jax_example(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    """The way JAX's ``examples/mnist_classifier_fromscratch.py`` trains, written out:
    normal(0, 0.1) params, tanh hidden layers, log-softmax output, one-hot targets,
    ``jax.grad`` of the mean loss and a list-comprehension SGD update in one jitted
    function per step, each batch a NumPy array sent from the host (no donation)."""
    if (cfg.activation, cfg.optimizer) != ("tanh", "sgd"):
        raise NotImplementedError("the example trains tanh + plain SGD only")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(cfg.seed)
    params = [(0.1 * rng.standard_normal((m, n)).astype(cfg.dtype),
               0.1 * rng.standard_normal(n).astype(cfg.dtype))
              for m, n in zip(cfg.sizes[:-1], cfg.sizes[1:], strict=True)]

    def log_probs(params, inputs):
        a = inputs
        for w, b in params[:-1]:
            a = jnp.tanh(a @ w + b)
        logits = a @ params[-1][0] + params[-1][1]
        return logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)

    def loss(params, inputs, targets):
        return -jnp.mean(jnp.sum(log_probs(params, inputs) * targets, axis=1))

    @jax.jit
    def update(params, inputs, targets):
        grads = jax.grad(loss)(params, inputs, targets)
        return [(w - cfg.lr * dw, b - cfg.lr * db)
                for (w, b), (dw, db) in zip(params, grads, strict=True)]

    xs = np.ascontiguousarray(x, dtype=cfg.dtype)
    onehot = np.eye(cfg.sizes[-1], dtype=cfg.dtype)[y]
    bs, steps = cfg.batch_size, cfg.samples // cfg.batch_size
    carry = [params]

    def epoch(i: int) -> None:
        perm = permutation(cfg, i)
        p = carry[0]
        for k in range(steps):
            idx = perm[k * bs:(k + 1) * bs]
            p = update(p, xs[idx], onehot[idx])
        carry[0] = jax.block_until_ready(p)

    held = nbytes(xs, onehot, *(a for layer in params for a in layer))
    return Contender(epoch, cfg.dtype, steps, held, "rss", "jit per step, batches from host")
