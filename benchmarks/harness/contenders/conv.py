"""The contenders of the convolutional benchmark (``benchmarks/conv_epoch.py``), each a
``build_*(cfg, x, y) -> Contender`` on a :class:`harness.conv.ConvConfig`.

Every trainer starts from the same funcnn-initialised weights, trains the same batches in
the same order with softmax + cross-entropy and Adam (lr 1e-3, b1 0.9, b2 0.999, eps 1e-8),
and returns the loss of its last batch, so that a run can check that they agree:

- ``funcnn-jax``: ``Serial.forward``, the delta ``(p - Y) / m`` and the hand-written
  ``Serial.backward_params`` (the backward pass without the first layer's ``dx``), then
  ``funcnn.optim.adam``; one jitted ``lax.scan`` per run;
- ``patch-jax-grad``: ``jax.grad`` of the loss of the same ``Serial.forward`` (patches and
  matrix products) in the same scan with the same Adam;
- ``lax-jax-grad``: ``jax.grad`` through ``lax.conv_general_dilated`` and
  ``lax.reduce_window`` (what a JAX user writes first), same scan, same Adam;
- ``lax-jax-grad-step``: the same step, one jitted call per batch from a Python loop
  (inside a ``lax.scan`` XLA's CPU backend runs the convolutions' gradients tens of
  times slower than in a program of one step);
- ``torch-eager``: ``nn.Sequential`` of ``Conv2d``/``MaxPool2d``/``Linear`` on NCHW
  images, ``CrossEntropyLoss``, ``torch.optim.Adam``, all cores;
- ``funcnn-numpy``: funcnn's step of ``funcnn-jax`` on NumPy arrays, batch by batch;
- ``gemm-floor`` and ``jax-gemm-floor``: only the matrix products of the patch form
  (:func:`harness.conv.products`) on ready operands, by NumPy and by XLA.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import numpy as np

import funcnn
from funcnn.activations import softmax

from ..config import B1, B2, EPS, Contender
from ..conv import IMAGE, ConvConfig, conv_net, order, products
from ..data import nbytes, permutation

__all__ = ["CONV_CONTENDERS", "initial_params", "lax_forward"]

CROSS_ENTROPY = funcnn.losses.get_loss("cross_entropy")
CONV_LAYERS, DENSE_LAYERS = (0, 3), (7, 9)  # where the params are in conv_net's Serial


def initial_params(cfg: ConvConfig):
    """The net's params on NumPy, drawn by funcnn from ``cfg.seed``: every contender's start."""
    return conv_net(cfg).init(cfg.seed, IMAGE, cfg.dtype, backend="numpy")[:2]


def _adam(cfg: ConvConfig):
    return funcnn.optim.adam(cfg.lr, b1=B1, b2=B2, eps=EPS)


def funcnn_step(cfg: ConvConfig, state):
    """One training step with funcnn's hand-written backward pass, NumPy or jax alike:
    ``step((params, opt_state), xb, yb) -> ((params, opt_state), loss)``."""
    net, opt = conv_net(cfg), _adam(cfg)

    def step(carry, xb, yb):
        params, opt_state = carry
        z, cache, _ = net.forward(params, state, xb, train=True)    # logits (m, 10)
        p = softmax(z)
        loss = CROSS_ENTROPY.value("softmax", z, p, yb)
        # backward_params: the first layer's dx, which nobody needs, is not computed
        grads = net.backward_params(params, cache, CROSS_ENTROPY.delta("softmax", z, p, yb))
        params, opt_state = opt.update(params, grads, opt_state)
        return (params, opt_state), loss

    return step


def lax_forward(params, x):
    """The net's logits through ``lax.conv_general_dilated`` (NHWC, HWIO, "SAME") and
    ``lax.reduce_window`` (2x2 max), on funcnn's params tree."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    def conv(p, h):
        y = lax.conv_general_dilated(h, p.W, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y + p.b.reshape(1, 1, 1, -1))

    def pool(h):
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    for i in CONV_LAYERS:
        x = pool(conv(params[i], x))
    d1, d2 = (params[i] for i in DENSE_LAYERS)
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ d1.W + d1.b[None, :])
    return h @ d2.W + d2.b[None, :]


def _grad_step(cfg: ConvConfig, forward: Callable):
    """``jax.grad`` of the cross-entropy of ``forward(params, xb)``, then the same Adam."""
    import jax

    opt = _adam(cfg)

    def loss_fn(params, xb, yb):
        z = forward(params, xb)
        return CROSS_ENTROPY.value("softmax", z, None, yb)

    def step(carry, xb, yb):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        params, opt_state = opt.update(params, grads, opt_state)
        return (params, opt_state), loss

    return step


def _scan_trainer(cfg: ConvConfig, x: np.ndarray, y: np.ndarray, make_step: Callable,
                  note: str) -> Contender:
    """A trainer whose run is one jitted ``lax.scan`` of ``make_step(state)`` over the
    batches, each gathered on the device from the images sent there once."""
    import jax
    import jax.numpy as jnp

    params, state = initial_params(cfg)
    params = funcnn.backend.to_backend(params, "jax")
    carry = [(params, _adam(cfg).init(params))]
    xd, yd = jax.block_until_ready((jnp.asarray(x), jnp.asarray(y.astype(np.int32))))
    step = make_step(state)

    @jax.jit
    def run(carry, xd, yd, rows):
        return jax.lax.scan(lambda c, r: step(c, xd[r], yd[r]), carry, rows)

    def epoch(i: int) -> float:
        rows = jnp.asarray(order(cfg, permutation(cfg, i)).astype(np.int32))
        carry[0], losses = run(carry[0], xd, yd, rows)
        return float(losses[-1])  # waits for the run

    held = nbytes(x, y) + sum(int(leaf.nbytes) for leaf in jax.tree.leaves(params))
    return Contender(epoch, cfg.dtype, cfg.run_steps, held, "rss", note)


def build_funcnn_jax(cfg: ConvConfig, x: np.ndarray, y: np.ndarray) -> Contender:
    return _scan_trainer(cfg, x, y, lambda state: funcnn_step(cfg, state),
                         "hand-written backward, one lax.scan")


def build_patch_jax_grad(cfg: ConvConfig, x: np.ndarray, y: np.ndarray) -> Contender:
    net = conv_net(cfg)

    def make_step(state):
        return _grad_step(cfg, lambda p, xb: net.forward(p, state, xb, train=True)[0])

    return _scan_trainer(cfg, x, y, make_step, "jax.grad of the patch form, one lax.scan")


def build_lax_jax_grad(cfg: ConvConfig, x: np.ndarray, y: np.ndarray) -> Contender:
    return _scan_trainer(cfg, x, y, lambda state: _grad_step(cfg, lax_forward),
                         "jax.grad of lax.conv_general_dilated + reduce_window")


def build_lax_jax_grad_step(cfg: ConvConfig, x: np.ndarray, y: np.ndarray) -> Contender:
    """``lax-jax-grad``'s step jitted alone (params and Adam state donated), called once
    per batch with the batch's rows; the batch is gathered on the device."""
    import jax
    import jax.numpy as jnp

    params, _ = initial_params(cfg)
    params = funcnn.backend.to_backend(params, "jax")
    carry = [(params, _adam(cfg).init(params))]
    xd, yd = jax.block_until_ready((jnp.asarray(x), jnp.asarray(y.astype(np.int32))))
    step = _grad_step(cfg, lax_forward)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def run(carry, xd, yd, rows):
        return step(carry, xd[rows], yd[rows])

    def epoch(i: int) -> float:
        for rows in order(cfg, permutation(cfg, i)).astype(np.int32):
            carry[0], loss = run(carry[0], xd, yd, rows)
        return float(loss)

    held = nbytes(x, y) + sum(int(leaf.nbytes) for leaf in jax.tree.leaves(params))
    return Contender(epoch, cfg.dtype, cfg.run_steps, held, "rss",
                     "lax-jax-grad's step, one jitted call per batch")


def build_funcnn_numpy(cfg: ConvConfig, x: np.ndarray, y: np.ndarray) -> Contender:
    params, state = initial_params(cfg)
    carry = [(params, _adam(cfg).init(params))]
    step = funcnn_step(cfg, state)

    def epoch(i: int) -> float:
        for rows in order(cfg, permutation(cfg, i)):
            carry[0], loss = step(carry[0], x[rows], y[rows])
        return float(loss)

    held = nbytes(x, y, *funcnn.tree.tree_leaves(params))
    return Contender(epoch, cfg.dtype, cfg.run_steps, held, "tracemalloc", "the step of funcnn-jax")


def torch_weights(params) -> list[np.ndarray]:
    """funcnn's params in torch's layouts: kernels ``(F, C, kh, kw)``, dense ``(out, in)``;
    the first dense layer's inputs reordered from funcnn's (H, W, C) flattening to torch's
    (C, H, W)."""
    c1, c2, d1, d2 = (params[i] for i in (*CONV_LAYERS, *DENSE_LAYERS))
    hw = int(round((d1.W.shape[0] // c2.W.shape[3]) ** 0.5))
    w1 = d1.W.reshape(hw, hw, c2.W.shape[3], -1).transpose(3, 2, 0, 1).reshape(d1.W.shape[1], -1)
    out = [c1.W.transpose(3, 2, 0, 1), c1.b, c2.W.transpose(3, 2, 0, 1), c2.b, w1, d1.b, d2.W.T,
           d2.b]
    return [np.ascontiguousarray(a) for a in out]


def build_torch_eager(cfg: ConvConfig, x: np.ndarray, y: np.ndarray) -> Contender:
    """PyTorch eager, out of the box, on NCHW images (torch's own layout), from funcnn's
    initial weights."""
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    (c1, c2), dt = cfg.channels, getattr(torch, cfg.dtype)
    flat = (IMAGE[0] // 4) * (IMAGE[1] // 4) * c2
    model = nn.Sequential(nn.Conv2d(IMAGE[2], c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(flat, cfg.hidden), nn.ReLU(),
                          nn.Linear(cfg.hidden, 10)).to(dt)
    with torch.no_grad():
        for p, w in zip(model.parameters(), torch_weights(initial_params(cfg)[0]), strict=True):
            p.copy_(torch.from_numpy(w))
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(B1, B2), eps=EPS)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # (n, C, H, W)
    yt = torch.from_numpy(y.astype(np.int64))

    def epoch(i: int) -> float:
        for rows in torch.from_numpy(order(cfg, permutation(cfg, i))):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[rows]), yt[rows])
            loss.backward()
            opt.step()
        return loss.item()

    held = nbytes(xt, yt) + sum(p.nbytes for p in model.parameters())
    note = f"torch {torch.__version__}, {torch.get_num_threads()} threads, NCHW"
    return Contender(epoch, cfg.dtype, cfg.run_steps, held, "rss", note)


def _floor_operands(cfg: ConvConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(A, W, dZ)`` of each product of :func:`harness.conv.products`, random values."""
    rng, dt = np.random.default_rng(cfg.seed), np.dtype(cfg.dtype)
    return [tuple(rng.standard_normal(shape).astype(dt) * 0.01
                  for shape in ((p.rows, p.k), (p.k, p.n), (p.rows, p.n)))
            for p in products(cfg)]


def build_gemm_floor(cfg: ConvConfig, x: np.ndarray, y: np.ndarray) -> Contender:
    """Per step only the products of the patch form, NumPy, preallocated outputs: forward
    ``A @ W``, backward ``A.T @ dZ`` and ``dZ @ W.T`` (not for the first layer). No patch
    gathering, folding, bias, activation, pooling, loss or optimizer."""
    ops = _floor_operands(cfg)
    outs = [(np.empty((a.shape[0], w.shape[1]), a.dtype), np.empty_like(w), np.empty_like(a))
            for a, w, _ in ops]
    needs_dx = [p.dx for p in products(cfg)]

    def epoch(_: int) -> None:
        for _ in range(cfg.run_steps):
            for (a, w, _), (z, _, _) in zip(ops, outs, strict=True):
                np.matmul(a, w, out=z)
            for (a, w, dz), (_, dw, da), dx in zip(ops, outs, needs_dx, strict=True):
                np.matmul(a.T, dz, out=dw)
                if dx:
                    np.matmul(dz, w.T, out=da)

    held = nbytes(*(a for op in ops for a in op))
    return Contender(epoch, cfg.dtype, cfg.run_steps, held, "tracemalloc", "NumPy's matmuls alone")


def build_jax_gemm_floor(cfg: ConvConfig, x: np.ndarray, y: np.ndarray) -> Contender:
    """The products of :func:`build_gemm_floor` run by XLA in one jitted ``lax.scan``. The
    forward product stands in for ``dZ`` and the weights are carried and nudged by their
    gradients, so that no product is the same in two steps (XLA would hoist it out of the
    loop); the input gradients feed a scalar, so that none is dropped."""
    import jax
    import jax.numpy as jnp

    ops = [tuple(map(jnp.asarray, op)) for op in _floor_operands(cfg)]
    needs_dx = [p.dx for p in products(cfg)]

    @jax.jit
    def run(ws, ops):
        def body(carry, _):
            ws, total = carry
            new = []
            for (a, _, _), w, dx in zip(ops, ws, needs_dx, strict=True):
                z = a @ w
                new.append(w - 1e-6 * (a.T @ z))
                if dx:
                    total = total + jnp.sum(z @ w.T)
            return (new, total), None

        return jax.lax.scan(body, (ws, jnp.zeros((), ops[0][0].dtype)), None,
                            length=cfg.run_steps)[0][1]

    ws = [w for _, w, _ in ops]

    def epoch(_: int) -> None:
        run(ws, ops).block_until_ready()

    held = nbytes(*(np.asarray(a) for op in ops for a in op))
    return Contender(epoch, cfg.dtype, cfg.run_steps, held, "rss", "XLA's matmuls alone, one scan")


CONV_CONTENDERS: dict[str, Callable[[ConvConfig, np.ndarray, np.ndarray], Contender]] = {
    "gemm-floor": build_gemm_floor,
    "jax-gemm-floor": build_jax_gemm_floor,
    "funcnn-jax": build_funcnn_jax,
    "patch-jax-grad": build_patch_jax_grad,
    "lax-jax-grad": build_lax_jax_grad,
    "lax-jax-grad-step": build_lax_jax_grad_step,
    "torch-eager": build_torch_eager,
    "funcnn-numpy": build_funcnn_numpy,
}
