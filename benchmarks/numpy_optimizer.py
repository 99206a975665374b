"""Ways to write Adam's element-wise update on NumPy, timed side by side in one process.

    python benchmarks/numpy_optimizer.py [--sizes 784,256,128,10] [--steps 300] [--rounds 5]
    python benchmarks/numpy_optimizer.py --jax   # funcnn's two Adam leaves in fit's jax epoch

Each option updates the parameters of an MLP of ``--sizes`` (float32) ``--steps`` times
with fixed gradients, inside ``funcnn.flush_denormals()`` as ``fit`` does; rounds
interleave the options so that outside load falls on all alike. Prints the median
milliseconds per step and the ratio to the plain expressions:

- ``plain``: the textbook expressions, ``m = b1 * m + (1 - b1) * g`` and so on, one
  fresh array per operation (funcnn's form before issue 12);
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

With ``--jax``: ``fit``'s jax epoch program (forward, backward and Adam on 60 000 random
rows, batch 128), compiled with ``textbook`` and with ``in-place`` (funcnn's two leaves):
ms per step of a whole epoch.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import funcnn  # noqa: E402
from funcnn.optim import _adam  # noqa: E402
from funcnn.optim._adam import adam_leaf, adam_leaf_folded  # noqa: E402

B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 1e-3


def _scalars(t: int) -> tuple[float, float]:
    c1, c2 = 1 - B1**t, math.sqrt(1 - B2**t)
    return LR * c2 / c1, EPS * c2


def plain(p, g, m, v, t):
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * (g * g)
    m_hat, v_hat = m / (1 - B1**t), v / (1 - B2**t)
    return p - LR * m_hat / (np.sqrt(v_hat) + EPS), m, v


def _f32(x):  # a scalar as funcnn's leafwise passes it: a 0-d array of the leaf's dtype
    return np.asarray(x, dtype=np.float32)


def _moments():
    return dict(b1=_f32(B1), b2=_f32(B2), one_minus_b1=_f32(1 - B1), one_minus_b2=_f32(1 - B2))


def textbook(p, g, m, v, t):  # funcnn's adam_leaf, with its scalars
    return adam_leaf(p, g, m, v, **_moments(), c1=_f32(1 - B1**t), c2=_f32(1 - B2**t),
                     lr=_f32(LR), eps=_f32(EPS))


def in_place(p, g, m, v, t):  # funcnn's adam_leaf_folded, with its scalars
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


def _as_textbook(p, g, m, v, decayed=False, *, step_size, eps_hat, **scalars):
    """``adam_leaf`` where the update calls ``adam_leaf_folded``: the same step, the
    scalars unfolded (``c2 = (eps_hat / eps)^2``, ``c1 = lr sqrt(c2) / step_size``)."""
    c2 = (eps_hat / EPS) ** 2
    return adam_leaf(p, g, m, v, decayed, **scalars, c1=LR * eps_hat / (EPS * step_size),
                     c2=c2, lr=LR, eps=EPS)


def jax_epochs(sizes: tuple, rows: int = 60_000, batch: int = 128):
    """ms per step of ``fit``'s jax epoch program (``rows`` random rows, Adam), compiled
    with each of funcnn's two Adam leaves (the leaf is read when the program is traced)."""
    import jax

    from funcnn import batching, random, train

    rng = np.random.default_rng(0)
    x = jax.device_put(rng.random((rows, sizes[0]), dtype=np.float32))
    y = jax.device_put(rng.integers(0, sizes[-1], rows).astype(np.int32))
    net = funcnn.MLP(sizes, output="softmax")
    opt = funcnn.optim.adam(LR, B1, B2, EPS)
    static, hyper = funcnn.optim.split_hyper(opt)
    split = batching.split_batches(rows, batch, False)
    order, tail = train._padded(np.arange(rows, dtype=np.int32), split)
    keys = random.split(random.key(0), split.full + 1)
    statics = dict(net=net, optimizer=static, grad_fn=funcnn.step.backward_grad,
                   batch_size=batch, tail=tail, mesh=None)

    def fresh():
        params = funcnn.init_params(net, 0, backend="jax")
        return params, opt.init(params), x, y, order, keys, hyper

    def compiled(leaf):
        _adam.adam_leaf_folded = leaf
        try:
            epoch = jax.jit(train._epoch_scan, static_argnames=tuple(statics),
                            donate_argnums=(0, 1))
            fn = epoch.lower(*fresh(), **statics).compile()
        finally:
            _adam.adam_leaf_folded = adam_leaf_folded

        def run(_steps: int) -> float:
            args = fresh()
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            return (time.perf_counter() - start) / split.count * 1e3
        return run

    return {"textbook": compiled(_as_textbook), "in-place": compiled(adam_leaf_folded)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="784,256,128,10")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jax", action="store_true", help="funcnn's two Adam leaves on jax")
    args = ap.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    rng = np.random.default_rng(0)
    params = funcnn.init_params(funcnn.MLP(sizes), 0)
    grads = funcnn.tree.tree_map(lambda a: rng.normal(0, 1e-3, a.shape).astype(a.dtype),
                                 params)
    leaves = [funcnn.tree.tree_leaves(t) for t in (params, grads)]
    leaves += [[np.zeros_like(a) for a in leaves[0]]] * 2
    if args.jax:
        options = jax_epochs(sizes)
    else:
        options = {"plain": per_leaf(plain, leaves), "funcnn": funcnn_adam(params, grads),
                   "textbook": per_leaf(textbook, leaves),
                   "in-place": per_leaf(in_place, leaves), "flat": flat(in_place, leaves),
                   "lerp": per_leaf(lerp, leaves)}
        try:
            options["numexpr-1"] = per_leaf(numexpr_update(1), leaves)
            options["numexpr-2"] = per_leaf(numexpr_update(2), leaves)
        except ImportError:
            print("numexpr is not installed: its rows are skipped")
    times = {name: [] for name in options}
    with funcnn.flush_denormals():
        for _ in range(args.rounds):
            for name, run in options.items():
                times[name].append(run(args.steps))
    n = sum(a.size for a in leaves[0])
    what = "fit's jax epoch, 60 000 rows" if args.jax else f"NumPy, {args.steps} steps"
    print(f"Adam on {n:,} float32 parameters ({'-'.join(map(str, sizes))}), {what}, "
          f"median of {args.rounds} rounds")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = "textbook" if args.jax else "plain"
    for name, ms in med.items():
        print(f"  {name:10s} {ms:6.3f} ms/step  {ms / med[base]:5.2f} x {base}")
    return med


if __name__ == "__main__":
    main()
