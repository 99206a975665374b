"""funcnn itself: ``fit`` on NumPy (``funcnn-numpy``) and on jax (``funcnn-jax-scan``, one
``lax.scan`` per epoch), and a Python loop over the jitted ``make_train_step``
(``funcnn-jax-step``)."""

from __future__ import annotations

from functools import partial

import numpy as np

import funcnn
from funcnn import batching, train

from ..config import Config, Contender
from ..data import jax_data, nbytes
from .jax_refs import jax_step_epochs

__all__ = ["build_funcnn_jax_scan", "build_funcnn_jax_step", "build_funcnn_numpy",
           "fit_epoch_inputs", "funcnn_setup"]


def funcnn_setup(cfg: Config, backend: str):
    """``(net, params, optimizer)`` of ``cfg`` on ``backend``, as a user would write them."""
    net = funcnn.MLP(cfg.sizes, hidden=cfg.activation, output="softmax")
    params = funcnn.init_params(net, cfg.seed, backend=backend, dtype=cfg.dtype)
    make = funcnn.optim.sgd if cfg.optimizer == "sgd" else funcnn.optim.adam
    return net, params, make(lr=cfg.lr)


def fit_epoch_inputs(cfg: Config, x: np.ndarray, y: np.ndarray) -> tuple[tuple, dict, int]:
    """The inputs of ``fit``'s jax epoch program (``funcnn.train._epoch_scan``) on the rows
    ``x``, ``y``, made as ``fit`` makes them (the short last batch padded into the scan):
    ``(args, statics, steps)``, the arrays, the static arguments and the steps of one epoch."""
    net, params, opt = funcnn_setup(cfg, "jax")
    xd, yd = jax_data(cfg, x, y)
    split = batching.split_batches(len(x), cfg.batch_size, False)
    order, tail = train._padded(np.arange(len(x), dtype=np.int32), split)
    keys = funcnn.random.split(funcnn.random.key(cfg.seed), split.full + 1)
    static, hyper = funcnn.optim.split_hyper(opt)
    statics = dict(net=net, optimizer=static, grad_fn=funcnn.step.backward_grad,
                   batch_size=split.size, tail=tail, mesh=None)
    return (params, opt.init(params), (), xd, yd, order, keys, hyper), statics, split.count


def _funcnn_fit(cfg: Config, x: np.ndarray, y: np.ndarray, backend: str) -> Contender:
    """Epochs of ``fit(epochs=1)``, each continuing from the last one's params and state."""
    net, params, opt = funcnn_setup(cfg, backend)
    fit = partial(funcnn.fit, epochs=1, batch_size=cfg.batch_size, progress=False)
    if backend == "jax":
        import jax

        x, y = jax_data(cfg, x, y)
        block = jax.block_until_ready
    else:
        x = np.ascontiguousarray(x, dtype=cfg.dtype)
        block = lambda tree: tree
    carry = [params, None]

    def epoch(i: int) -> float | None:
        key = cfg.seed * 1_000_003 + i
        params, opt_state, history = fit(net, carry[0], opt, x, y, key=key, opt_state=carry[1])
        carry[:] = block([params, opt_state])
        losses = history.get("loss") if isinstance(history, dict) else None
        return float(losses[-1]) if losses is not None and len(losses) else None

    held = nbytes(x, y, *(leaf for layer in params for leaf in layer))
    memory = "rss" if backend == "jax" else "tracemalloc"
    return Contender(epoch, cfg.dtype, -(-cfg.samples // cfg.batch_size), held, memory, "fit")


def build_funcnn_numpy(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    return _funcnn_fit(cfg, x, y, "numpy")


def build_funcnn_jax_scan(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    return _funcnn_fit(cfg, x, y, "jax")._replace(note="fit: one lax.scan per epoch")


def build_funcnn_jax_step(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    net, params, opt = funcnn_setup(cfg, "jax")
    xd, yd = jax_data(cfg, x, y)
    step = funcnn.make_train_step(net, opt)
    epoch = jax_step_epochs(cfg, step, params, opt.init(params), xd, yd)
    held = nbytes(xd, yd, *(leaf for layer in params for leaf in layer))
    return Contender(epoch, cfg.dtype, cfg.samples // cfg.batch_size, held, "rss", "jit per step")
