"""Ways to write Adam's element-wise update on NumPy, each timed by a runner
``run(steps) -> ms per step`` on the same parameters and fixed gradients:

- ``plain``: the textbook expressions, ``m = b1 * m + (1 - b1) * g`` and so on, one
  fresh array per operation;
- ``funcnn``: ``funcnn.optim.adam`` as it is (its fast path, the tree walk and checks
  included);
- ``textbook``: funcnn's ``adam_leaf``, Adam as the paper writes it, alone;
- ``in-place``: funcnn's fast path ``adam_leaf_folded`` (in-place passes over fresh
  arrays, the bias corrections folded into two scalars), alone;
- ``flat``: the same on one contiguous buffer per tree instead of one array per leaf;
- ``lerp``: the moving-average form ``m + (1 - b1) (g - m)``, one array per moment
  (fewest allocations, but under flushed subnormals a decaying moment stops near 1e-38);
- ``numexpr-1``/``numexpr-2``: one numexpr expression per output, on 1 and 2 threads
  (only when numexpr is installed).

And on jax (:func:`jax_forms`, ``numpy_optimizer.py --jax``): ``fit``'s jax epoch program
(forward, backward and Adam over 60 000 random rows, batch 128) compiled with each of
funcnn's two Adam leaves, ``textbook`` and ``in-place``, timed a whole epoch at a time.
"""

from __future__ import annotations

import math
import statistics
import time
from functools import partial

import numpy as np

import funcnn
from funcnn import train
from funcnn.optim import _adam
from funcnn.optim._adam import adam_leaf, adam_leaf_folded

from .config import B1, B2, EPS, Config
from .contenders.funcnn_fit import fit_epoch_inputs
from .data import load_data

__all__ = ["LR", "forms", "jax_forms", "measure"]

LR = 1e-3


def _scalars(t: int) -> tuple[float, float]:
    c1, c2 = 1 - B1**t, math.sqrt(1 - B2**t)
    return LR * c2 / c1, EPS * c2


def plain(p, g, m, v, t):
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * (g * g)
    m_hat, v_hat = m / (1 - B1**t), v / (1 - B2**t)
    return p - LR * m_hat / (np.sqrt(v_hat) + EPS), m, v


def _f32(x):  # a scalar as funcnn's leaf passes it: a 0-d array of the leaf's dtype
    return np.asarray(x, dtype=np.float32)


def _moments() -> dict:
    return dict(b1=_f32(B1), b2=_f32(B2), one_minus_b1=_f32(1 - B1), one_minus_b2=_f32(1 - B2))


def textbook(p, g, m, v, t):  # funcnn's adam_leaf, the definition
    return adam_leaf(p, g, m, v, **_moments(), c1=_f32(1 - B1**t), c2=_f32(1 - B2**t),
                     lr=_f32(LR), eps=_f32(EPS))


def in_place(p, g, m, v, t):  # funcnn's fast path adam_leaf_folded
    step, eps_hat = _scalars(t)
    return adam_leaf_folded(p, g, m, v, **_moments(), step_size=_f32(step),
                            eps_hat=_f32(eps_hat))


def lerp(p, g, m, v, t):
    step, eps_hat = _scalars(t)
    m_new = g - m
    m_new *= 1 - B1
    m_new += m
    v_new = g * g
    v_new -= v
    v_new *= 1 - B2
    v_new += v
    p_new = np.sqrt(v_new)
    p_new += eps_hat
    np.divide(m_new, p_new, out=p_new)
    p_new *= -step
    p_new += p
    return p_new, m_new, v_new


def numexpr_update(threads: int):
    import numexpr as ne

    def update(p, g, m, v, t):
        ne.set_num_threads(threads)
        step, eps_hat = (np.float32(s) for s in _scalars(t))
        scalars = {"b1": np.float32(B1), "b2": np.float32(B2), "step": step, "e": eps_hat}
        m_new = ne.evaluate("b1 * m + (1 - b1) * g", {**scalars, "m": m, "g": g})
        v_new = ne.evaluate("b2 * v + (1 - b2) * g * g", {**scalars, "v": v, "g": g})
        p_new = ne.evaluate("p - step * m_new / (sqrt(v_new) + e)",
                            {**scalars, "p": p, "m_new": m_new, "v_new": v_new})
        return p_new, m_new, v_new

    return update


def per_leaf(update, leaves):
    """Steps of ``update`` on every leaf; returns ms per step."""
    def run(steps: int) -> float:
        p, g, m, v = (list(tree) for tree in leaves)
        start = time.perf_counter()
        for t in range(1, steps + 1):
            out = [update(*args, t) for args in zip(p, g, m, v, strict=True)]
            p, m, v = ([o[i] for o in out] for i in range(3))
        return (time.perf_counter() - start) / steps * 1e3
    return run


def flat(update, leaves):
    def run(steps: int) -> float:
        p, g, m, v = (np.concatenate([a.ravel() for a in tree]) for tree in leaves)
        start = time.perf_counter()
        for t in range(1, steps + 1):
            p, m, v = update(p, g, m, v, t)
        return (time.perf_counter() - start) / steps * 1e3
    return run


def funcnn_adam(params, grads):
    opt = funcnn.optim.adam(LR, B1, B2, EPS)

    def run(steps: int) -> float:
        p, s = params, opt.init(params)
        start = time.perf_counter()
        for _ in range(steps):
            p, s = opt.update(p, grads, s)
        return (time.perf_counter() - start) / steps * 1e3
    return run


def forms(sizes: tuple[int, ...]) -> tuple[dict, int]:
    """The runners of every form on the float32 params of an MLP of ``sizes`` (random
    gradients, zero moments), and the number of parameters. The numexpr forms are left
    out, with a message, when numexpr is not installed."""
    rng = np.random.default_rng(0)
    params = funcnn.init_params(funcnn.MLP(sizes), 0)
    grads = funcnn.tree.tree_map(lambda a: rng.normal(0, 1e-3, a.shape).astype(a.dtype),
                                 params)
    leaves = [funcnn.tree.tree_leaves(t) for t in (params, grads)]
    leaves += [[np.zeros_like(a) for a in leaves[0]]] * 2
    options = {"plain": per_leaf(plain, leaves), "funcnn": funcnn_adam(params, grads),
               "textbook": per_leaf(textbook, leaves), "in-place": per_leaf(in_place, leaves),
               "flat": flat(in_place, leaves),
               "lerp": per_leaf(lerp, leaves)}
    try:
        options["numexpr-1"] = per_leaf(numexpr_update(1), leaves)
        options["numexpr-2"] = per_leaf(numexpr_update(2), leaves)
    except ImportError:
        print("numexpr is not installed: its rows are skipped")
    return options, sum(a.size for a in leaves[0])


def _as_textbook(p, g, m, v, decayed=False, *, step_size, eps_hat, **scalars):
    """``adam_leaf`` where the update calls ``adam_leaf_folded``: the same step, the
    scalars unfolded (``c2 = (eps_hat / eps)^2``, ``c1 = lr sqrt(c2) / step_size``)."""
    return adam_leaf(p, g, m, v, decayed, **scalars, c1=LR * eps_hat / (EPS * step_size),
                     c2=(eps_hat / EPS) ** 2, lr=LR, eps=EPS)


def jax_forms(sizes: tuple[int, ...], rows: int = 60_000, batch_size: int = 128
              ) -> tuple[dict, int]:
    """The runners of ``fit``'s jax epoch program on ``rows`` random rows, compiled with
    ``textbook`` (:func:`adam_leaf`) and with ``in-place`` (:func:`adam_leaf_folded`, what
    the updates run) in place of the leaf, and the number of parameters. The leaf is read
    when the program is traced; each form is a fresh program (a new ``partial``, so that
    jax traces it anew), compiled and run once before it is timed. ``run(steps)`` times one
    whole epoch (``steps`` is not used) and returns ms per optimizer step."""
    import jax

    cfg = Config("adam-forms", tuple(sizes), batch_size, "float32", rows, 1, lr=LR)
    args, statics, steps = fit_epoch_inputs(cfg, *load_data(cfg, None))

    def compiled(leaf):
        _adam.adam_leaf_folded = leaf
        try:
            program = jax.jit(partial(train._epoch_scan, **statics)).lower(*args).compile()
        finally:
            _adam.adam_leaf_folded = adam_leaf_folded
        jax.block_until_ready(program(*args))  # the first run's costs are not timed

        def run(_steps: int) -> float:
            start = time.perf_counter()
            jax.block_until_ready(program(*args))
            return (time.perf_counter() - start) / steps * 1e3
        return run

    options = {"textbook": compiled(_as_textbook), "in-place": compiled(adam_leaf_folded)}
    return options, sum(leaf.size for leaf in funcnn.tree.tree_leaves(args[0]))


def measure(options: dict, steps: int, rounds: int) -> dict:
    """Median ms per step of every runner over ``rounds`` rounds of ``steps`` steps, inside
    ``funcnn.backend.flush_denormals()`` as ``fit`` does; the rounds interleave the forms so that
    outside load falls on all alike."""
    times = {name: [] for name in options}
    with funcnn.backend.flush_denormals():
        for _ in range(rounds):
            for name, run in options.items():
                times[name].append(run(steps))
    return {name: statistics.median(ts) for name, ts in times.items()}
