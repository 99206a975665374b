"""Time one training epoch of an MLP with funcnn and with baselines, in one process.

    python benchmarks/mlp_epoch.py                       # main + small config, all contenders
    python benchmarks/mlp_epoch.py --tiny                # a few seconds, for CI
    python benchmarks/mlp_epoch.py --only gemm-floor,torch-eager --json out.json --plot out.png
    python benchmarks/mlp_epoch.py --parallel --no-small  # data-parallel fit, in subprocesses

The network is ``sizes`` (default 784-256-128-10) with ReLU hidden layers and a
softmax + cross-entropy output, trained by Adam (lr 1e-3) on mini-batches. The
data are 60000 uniform random "images" with random labels, drawn from a fixed
``numpy.random.Generator``; ``--data DIR`` uses real MNIST through
``funcnn.data.load_mnist`` instead. Every contender gets one warm-up epoch
(``first_epoch_s``, compilation included for jax), then ``--repeats`` timed
epochs; the ratio column divides the median by the ``gemm-floor`` median of
the same configuration, i.e. by the cost of the matrix products alone.

``--parallel`` times ``funcnn.fit(..., devices=...)`` instead: on 1, 2 and 4 virtual
CPU devices and on 2 processes of 1 device, each setting in its own subprocess (jax
fixes its device count when it starts), against ``fit`` on one device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections.abc import Callable
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import numpy as np
from _baselines import (
    BASELINES,
    Config,
    Contender,
    jax_data,
    jax_step_epochs,
    nbytes,
    permutation,
)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmark the working tree's funcnn

T = TypeVar("T")
FLOOR = "gemm-floor"
MAIN = dict(name="main", sizes=(784, 256, 128, 10), batch_size=128)
SMALL = dict(name="small", sizes=(784, 64, 10), batch_size=32)
TINY = dict(name="tiny", sizes=(784, 32, 10), batch_size=128, samples=2048, repeats=1)
# the shape of JAX's examples/mnist_classifier_fromscratch.py, with plain SGD and with Adam
# (6400 samples, 50 steps: a NumPy epoch of this net takes ~8x the main one's per row)
WIDE = [dict(name=f"wide-{opt}", sizes=(784, 1024, 1024, 10), batch_size=128, samples=6400,
             activation="tanh", optimizer=opt) for opt in ("sgd", "adam")]


# --------------------------------------------------------------------------- funcnn contenders


def _funcnn(cfg: Config, backend: str):
    import funcnn

    net = funcnn.MLP(cfg.sizes, hidden=cfg.activation, output="softmax")
    params = funcnn.init_params(net, cfg.seed, backend=backend, dtype=cfg.dtype)
    make = funcnn.optim.sgd if cfg.optimizer == "sgd" else funcnn.optim.adam
    return funcnn, net, params, make(lr=cfg.lr)


def _funcnn_fit(cfg: Config, x: np.ndarray, y: np.ndarray, backend: str) -> Contender:
    funcnn, net, params, opt = _funcnn(cfg, backend)
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
    funcnn, net, params, opt = _funcnn(cfg, "jax")
    xd, yd = jax_data(cfg, x, y)
    step = funcnn.make_train_step(net, opt)
    epoch = jax_step_epochs(cfg, step, params, opt.init(params), xd, yd)
    held = nbytes(xd, yd, *(leaf for layer in params for leaf in layer))
    return Contender(epoch, cfg.dtype, cfg.samples // cfg.batch_size, held, "rss", "jit per step")


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


# --------------------------------------------------------------------------- per-example gradients

DP_MAX_NORM, DP_NOISE = 1.0, 1.1
# contender -> what its step computes. Each step is forward, that gradient and Adam; the jax
# ones run the epoch's full batches in one jitted lax.scan, the NumPy ones in a Python loop,
# so that only the gradient differs between rows of one backend. They run only when named
# in --only (a vmap epoch takes minutes; a row that follows one runs slower, so time the vmap
# rows apart from the ratios among funcnn's rows; docs/performance.md has both commands).
PER_EXAMPLE = {
    "pe-plain": "funcnn backward (the plain step the others are compared with)",
    "pe-norms": "funcnn: gradient + per-example norms from one pass",
    "pe-clip": "funcnn: DP clipped gradient, no noise",
    "pe-dp": f"funcnn: DP-SGD hook, clip {DP_MAX_NORM} + noise {DP_NOISE}",
    "pe-numpy-plain": "NumPy loop: funcnn backward",
    "pe-numpy-dp": f"NumPy loop: DP-SGD hook, clip {DP_MAX_NORM} + noise {DP_NOISE}",
    "vmap-grad-norms": "jax.grad of the batch + norms of jax.vmap(jax.grad)",
    "vmap-grad-dp": "jax.vmap(jax.grad): per-example grads, clip, sum, noise",
}


def _per_example_grad(kind: str, net, params, cache, xb, yb, key):
    """``(gradient, per-step output)`` of one contender's step on a prepared batch."""
    from funcnn import per_example as pe
    from funcnn.mlp import backward, loss_from_cache

    if kind.endswith("plain"):
        return backward(net, params, cache, yb), loss_from_cache(net, cache, yb)
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

    from funcnn.mlp import apply, loss_from_cache

    no_masks = (None,) * (net.n_layers - 1)

    def one(p, xi, yi):  # the loss of one example, on the same net
        return loss_from_cache(net, apply(net, p, xi[None], no_masks), yi[None])

    per = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, xb, yb)
    leaves = jax.tree.leaves(per)
    norms = jnp.sqrt(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in leaves))
    if kind == "vmap-grad-norms":  # the update from jax.grad of the batch, as usual
        batch = jax.grad(lambda p: loss_from_cache(net, apply(net, p, xb, no_masks), yb))
        return batch(params), norms
    scale = DP_MAX_NORM / jnp.maximum(norms, DP_MAX_NORM)
    keys = iter(jax.random.split(key, len(leaves)))

    def clip_sum_noise(g):
        total = jnp.einsum("m,m...->...", scale, g)
        noise = jax.random.normal(next(keys), total.shape, total.dtype)
        return (total + DP_NOISE * DP_MAX_NORM * noise) / xb.shape[0]

    return jax.tree.map(clip_sum_noise, per), norms


def build_per_example(kind: str, cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    if "numpy" in kind:
        return _per_example_numpy(kind, cfg, x, y)
    import jax
    import jax.numpy as jnp

    from funcnn.mlp import apply

    funcnn, net, params, opt = _funcnn(cfg, "jax")
    xd, yd = jax_data(cfg, x, y)
    bs, steps = cfg.batch_size, cfg.samples // cfg.batch_size
    no_masks = (None,) * (net.n_layers - 1)

    def run_epoch(params, state, xd, yd, perm, keys):
        def body(carry, batch):
            p, s = carry
            xb, yb, key = batch
            cache = apply(net, p, xb, no_masks)
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
    from funcnn.mlp import apply

    funcnn, net, params, opt = _funcnn(cfg, "numpy")
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
            cache = apply(net, p, xs[idx], no_masks)
            grads, _ = _per_example_grad(kind, net, p, cache, None, y[idx], keys[k])
            p, s = opt.update(p, grads, s)
        carry[:] = [p, s]

    held = nbytes(xs, y, *(leaf for layer in params for leaf in layer))
    return Contender(epoch, cfg.dtype, steps, held, "tracemalloc", PER_EXAMPLE[kind])


CONTENDERS: dict[str, Callable[[Config, np.ndarray, np.ndarray], Contender]] = {
    **BASELINES,
    "funcnn-numpy": build_funcnn_numpy,
    "funcnn-jax-scan": build_funcnn_jax_scan,
    "funcnn-jax-step": build_funcnn_jax_step,
    "jax-example": build_jax_example,
    **{kind: partial(build_per_example, kind) for kind in PER_EXAMPLE},
}


# --------------------------------------------------------------------------- measuring


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_rss_growth(run: Callable[[], T]) -> tuple[int | None, T]:
    """``run()``'s result and the bytes by which the resident set peaked above its size before.

    Resets the kernel's high-water mark (``VmHWM``) through ``/proc/self/clear_refs``
    first; the bytes are ``None`` where that is not possible.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
    except (OSError, KeyError):
        return None, run()
    result = run()
    return max(0, _status_kib("VmHWM") - before) * 1024, result


def peak_traced(run: Callable[[], object]) -> int:
    """Peak bytes allocated through tracemalloc (NumPy reports its buffers) during ``run()``."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


SETTLE_S = 0.3  # OpenBLAS's and torch's idle threads spin ~0.1 s after their last call


def timed(epoch: Callable[[int], float | None], i: int) -> tuple[float, float | None]:
    """Seconds of one epoch (and its last loss), after a pause in which the thread pools
    of the contender before have gone to sleep: a spinning pool takes the cores from
    whichever contender comes next (a jax epoch after a NumPy one ran ~10 % slower)."""
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    loss = epoch(i)
    return time.perf_counter() - start, loss


def _reason(e: Exception, prefix: str = "") -> str:
    return f"{prefix}{type(e).__name__}: {e}".splitlines()[0][:160]


def run_config(cfg: Config, names: list[str], x: np.ndarray, y: np.ndarray, budget: float):
    """Rows of results for ``names`` on one configuration.

    Every contender is built and warmed up first; then the timed epochs run in
    rounds, one epoch of each contender per round, so that load from outside
    falls on all of them alike. A contender sits out further rounds once its
    next epoch would take its timed epochs past ``budget`` seconds.
    """
    rows = {name: {"name": name} for name in names}
    live: dict[str, Contender] = {}
    for name in names:
        print(f"[{cfg.name}] warm-up {name} ...", end=" ", flush=True)
        try:
            c = CONTENDERS[name](cfg, x, y)
        except Exception as e:  # a missing library or a funcnn API that is not there yet
            rows[name]["skipped"] = _reason(e)
        else:
            try:
                rows[name].update(first_epoch_s=timed(c.epoch, 0)[0], times_s=[], peak_bytes=None)
                live[name] = c
            except Exception as e:
                traceback.print_exc()
                rows[name]["skipped"] = _reason(e, "failed: ")
        print(rows[name].get("skipped") or f"{rows[name]['first_epoch_s']:.3f} s", flush=True)

    def run(name: str, measure: Callable) -> None:
        try:
            measure(rows[name], live[name])
        except Exception as e:
            traceback.print_exc()
            rows[name] = {"name": name, "skipped": _reason(e, "failed: ")}
            del live[name]

    def timed_epoch(row: dict, c: Contender) -> None:
        epoch = partial(timed, c.epoch, len(row["times_s"]) + 1)
        if c.memory == "rss" and not row["times_s"]:  # free to measure: the first timed epoch
            row["peak_bytes"], (t, row["last_loss"]) = peak_rss_growth(epoch)
        else:
            t, row["last_loss"] = epoch()
        row["times_s"].append(t)

    def traced_epoch(row: dict, c: Contender) -> None:  # tracing slows allocation: not timed
        row["peak_bytes"] = peak_traced(partial(c.epoch, len(row["times_s"]) + 1))

    for r in range(cfg.repeats):
        print(f"[{cfg.name}] round {r + 1}/{cfg.repeats}:", end="", flush=True)
        for name in list(live):
            times = rows[name]["times_s"]
            if not times or sum(times) + times[-1] <= budget:
                run(name, timed_epoch)
                print(f" {name} {rows[name].get('times_s', [0])[-1]:.3f}", end="", flush=True)
        print()
    for name, c in list(live.items()):
        if c.memory == "tracemalloc":
            run(name, traced_epoch)
    for name, c in live.items():
        row, times = rows[name], rows[name]["times_s"]
        note = c.note
        if len(times) < cfg.repeats:
            note = f"{len(times)}/{cfg.repeats} repeats (budget {budget:g} s); {note}"
        row.update(
            dtype=c.dtype() if callable(c.dtype) else c.dtype,
            steps=c.steps,
            median_s=statistics.median(times),
            min_s=min(times),
            repeats=len(times),
            memory_kind=c.memory,
            data_params_bytes=c.nbytes,
            note=note.strip("; "),
        )
    floor = rows.get(FLOOR, {}).get("median_s")
    for row in rows.values():
        row["ratio"] = row["median_s"] / floor if floor and "median_s" in row else None
    return list(rows.values())


# --------------------------------------------------------------------------- data parallel

# (name, processes, devices per process); each runs in a subprocess of its own
PARALLEL = (("dp-1-device", 1, 1), ("dp-2-devices", 1, 2), ("dp-4-devices", 1, 4),
            ("dp-2-processes", 2, 1))


def parallel_worker(spec: dict) -> None:
    """In the subprocess: time ``fit`` on one device and data-parallel on every device
    of every process, one epoch of each per round; process 0 writes the times. With
    several processes, process 0 alone trains on one device while the others wait."""
    import funcnn

    funcnn.parallel.initialize()
    import jax
    from jax.experimental.multihost_utils import sync_global_devices

    cfg = Config(**{**spec["config"], "sizes": tuple(spec["config"]["sizes"])})
    _, net, params, opt = _funcnn(cfg, "jax")
    x, y = jax_data(cfg, *load_data(cfg, spec["data"]))
    mesh = funcnn.parallel.data_mesh()
    modes = {"data-parallel": (funcnn.parallel.replicate((x, y), mesh), mesh),
             "one device": ((x, y), None)}
    carry = {name: [params, None] for name in modes}

    def epoch(name: str, i: int) -> None:
        if modes[name][1] is None and jax.process_count() > 1:
            if funcnn.parallel.is_main_process():
                epoch_alone(i)
            sync_global_devices(f"one-device epoch {i}")
            return
        epoch_alone(i, name)

    def epoch_alone(i: int, name: str = "one device") -> None:
        (xm, ym), devices = modes[name]
        p, s, _ = funcnn.fit(net, carry[name][0], opt, xm, ym, epochs=1, devices=devices,
                             batch_size=cfg.batch_size, key=cfg.seed * 1_000_003 + i,
                             opt_state=carry[name][1], progress=False)
        carry[name][:] = jax.block_until_ready([p, s])

    result = {name: {"first_epoch_s": timed(partial(epoch, name), 0)[0], "times_s": []}
              for name in modes}
    for name in modes:  # a second warm-up: fit's private copies of sharded inputs compile
        epoch(name, 0)
    for r in range(cfg.repeats):
        for name in modes:
            result[name]["times_s"].append(timed(partial(epoch, name), r + 1)[0])
    if funcnn.parallel.is_main_process():
        Path(spec["out"]).write_text(json.dumps(result))


def run_parallel(cfg: Config, data_dir: str | None, timeout: float) -> list[dict]:
    """Rows of data-parallel ``fit`` timings; ``x one device`` divides by ``fit`` on one
    device, timed in the same subprocess (in process 0)."""
    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name, processes, devices in PARALLEL:
        print(f"[{cfg.name}] {name} ...", end=" ", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            spec = {"config": cfg._asdict(), "data": data_dir, "out": f"{tmp}/out.json"}
            command = [sys.executable, __file__, "--parallel-worker", json.dumps(spec)]
            if processes > 1:
                command = [sys.executable, "-m", "funcnn.launch", "--processes",
                           str(processes), "--timeout", str(timeout), "--", *command]
            flags = f"--xla_force_host_platform_device_count={devices}"
            try:
                subprocess.run(command, env={**env, "XLA_FLAGS": flags}, check=True,
                               timeout=timeout + 30, capture_output=True, text=True)
                result = json.loads(Path(spec["out"]).read_text())
            except (subprocess.SubprocessError, OSError) as e:
                tail = (getattr(e, "stderr", None) or "").strip().splitlines()[-1:]
                rows.append({"name": name, "skipped": _reason(e, "failed: ") + " ".join(tail)})
                print(rows[-1]["skipped"], flush=True)
                continue
        dp = result["data-parallel"]
        one = result["one device"]["times_s"]
        row = {"name": name, "processes": processes, "devices": processes * devices,
               "first_epoch_s": dp["first_epoch_s"], "median_s": statistics.median(dp["times_s"]),
               "min_s": min(dp["times_s"]), "repeats": len(dp["times_s"]),
               "one_device_median_s": statistics.median(one)}
        row["ratio"] = row["median_s"] / row["one_device_median_s"]
        rows.append(row)
        print(f"{row['median_s']:.3f} s", flush=True)
    return rows


def print_parallel_table(cfg: Config, rows: list[dict]) -> None:
    sizes = "-".join(map(str, cfg.sizes))
    print(f"\n[{cfg.name}] data-parallel fit, {sizes}, batch {cfg.batch_size}, "
          f"{cfg.samples} samples, {cfg.dtype} (each setting in its own subprocess)")
    fmt = "{:<16} {:>7} {:>8} {:>9} {:>8} {:>13} {:>13}"
    print(fmt.format("setting", "devices", "first_s", "median_s", "min_s", "1 device med",
                     "x one device"))
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:<16} skipped: {r['skipped']}")
            continue
        print(fmt.format(r["name"], r["devices"], f"{r['first_epoch_s']:.3f}",
                         f"{r['median_s']:.3f}", f"{r['min_s']:.3f}",
                         f"{r['one_device_median_s']:.3f}", f"{r['ratio']:.2f}"))


# --------------------------------------------------------------------------- data and machine


def load_data(cfg: Config, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``cfg.samples`` rows of float32 inputs in [0, 1) and integer labels."""
    if data_dir is None:
        rng = np.random.default_rng(cfg.seed)
        x = rng.random((cfg.samples, cfg.sizes[0]), dtype=np.float32)
        return x, rng.integers(0, cfg.sizes[-1], cfg.samples)
    try:
        from funcnn.data import load_mnist
    except ImportError as e:
        raise SystemExit(f"--data needs funcnn.data.load_mnist: {e}") from None
    mnist = load_mnist(data_dir)  # float32 (60000, 784) in [0, 1], int64 labels
    x, y = mnist.x_train, mnist.y_train
    if x.shape[1] != cfg.sizes[0] or len(x) < cfg.samples:
        raise SystemExit(f"--data gives {x.shape}, need {cfg.samples} rows of {cfg.sizes[0]}")
    return x[: cfg.samples], y[: cfg.samples]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("numpy", "jax", "jaxlib", "torch", "scikit-learn")},
    }
    try:
        from threadpoolctl import threadpool_info

        keys = ("internal_api", "prefix", "version", "num_threads", "architecture")
        info["threadpools"] = [{k: p.get(k) for k in keys} for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = None
    return info


# --------------------------------------------------------------------------- report


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}MB"


def print_table(cfg: Config, rows: list[dict]) -> None:
    sizes = "-".join(map(str, cfg.sizes))
    print(f"\n[{cfg.name}] {sizes}, batch {cfg.batch_size}, {cfg.samples} samples, {cfg.dtype}")
    head = ("contender", "dtype", "steps", "first_s", "median_s", "min_s", "x floor", "peak mem")
    fmt = "{:<16} {:<8} {:>6} {:>8} {:>9} {:>8} {:>8}  {:<32} {}"
    print(fmt.format(*head, "note"))
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:<16} skipped: {r['skipped']}")
            continue
        ratio = "n/a" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        if r["memory_kind"] == "tracemalloc":
            mem = f"{_mb(r['peak_bytes'])} (data+params {_mb(r['data_params_bytes'])})"
        else:
            mem = f"+{_mb(r['peak_bytes'])} RSS"
        first, median, least = (f"{r[k]:.3f}" for k in ("first_epoch_s", "median_s", "min_s"))
        cells = (r["name"], r["dtype"], r["steps"], first, median, least, ratio, mem, r["note"])
        print(fmt.format(*cells))


def print_machine(m: dict) -> None:
    print(f"CPU: {m['cpu']} ({m['cores']} cores, {m['usable_cores']} usable)")
    print(f"Python {m['python']} on {m['platform']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v))
    for p in m["threadpools"] or []:
        extra = " ".join(str(p[k]) for k in ("version", "architecture") if p[k])
        print(f"threads: {p['prefix']} ({p['internal_api']} {extra}): {p['num_threads']} threads")


# --------------------------------------------------------------------------- cost model


def copy_bandwidth(nbytes: int = 64 * 2**20, repeats: int = 5) -> float:
    """Bytes per second that one ``np.copyto`` moves (read + write) on a 64 MiB array, best of 5:
    the speed an element-wise pass over arrays much larger than the caches cannot beat."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = min(timed(lambda _: np.copyto(dst, src), 0)[0] for _ in range(repeats))
    return 2 * nbytes / best


def step_cost(cfg: Config) -> dict:
    """FLOPs and bytes of one training step of ``cfg`` (the bytes an ideal step must move).

    FLOPs: the matrix products of :func:`_baselines.build_gemm_floor`, 2 per multiply-add.
    Bytes: the weights read forward and backward and the gradient written (``3 P``); the
    optimizer reading ``p, g`` and writing ``p`` (SGD, ``3 P``) or reading ``p, g, m, v``
    and writing ``p, m, v`` (Adam, ``7 P``); every activation and delta written once and
    read once; the input batch read once.
    """
    item, b, sizes = np.dtype(cfg.dtype).itemsize, cfg.batch_size, cfg.sizes
    mn = [m * n for m, n in zip(sizes[:-1], sizes[1:], strict=True)]
    params = sum(mn) + sum(sizes[1:])
    return {
        "params": params,
        "flops": 2 * b * (2 * sum(mn) + sum(mn[1:])),
        "gemm_bytes": 3 * params * item,
        "optimizer_bytes": (3 if cfg.optimizer == "sgd" else 7) * params * item,
        "activation_bytes": (4 * b * sum(sizes[1:]) + b * sizes[0]) * item,
    }


def cost_table(report: dict) -> str:
    """A Markdown table of the cost model of every configuration in ``report`` (the JSON).

    Per step: the FLOPs and bytes of :func:`step_cost`; the measured GEMM floors (NumPy and
    XLA, with the GFLOP/s they reach); the element-wise bound, i.e. the optimizer's and the
    activations' bytes at the measured copy bandwidth; then what funcnn's paths cost above
    their floor.
    """
    bw = report.get("copy_bandwidth")
    head = ("config", "params", "GFLOP/step", "MB/step: weights+grads / optimizer / activations",
            "NumPy GEMM floor µs (GFLOP/s)", "XLA GEMM floor µs (GFLOP/s)",
            "element-wise bound µs", "funcnn-jax-scan µs (above XLA floor)",
            "funcnn-numpy µs (above NumPy floor)")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for entry in report["configs"]:
        if "results" not in entry:
            continue
        cfg = Config(**{**entry["config"], "sizes": tuple(entry["config"]["sizes"])})
        cost = step_cost(cfg)
        per_step = {r["name"]: r["median_s"] / r["steps"] * 1e6
                    for r in entry["results"] if "median_s" in r}

        def floor_cell(name, cost=cost, per_step=per_step):
            t = per_step.get(name)
            return "n/a" if t is None else f"{t:.0f} ({cost['flops'] / t / 1e3:.0f})"

        def above(name, floor, per_step=per_step):
            t, f = per_step.get(name), per_step.get(floor)
            return "n/a" if t is None or f is None else f"{t:.0f} (+{t - f:.0f})"

        mb = "{:.2f} / {:.2f} / {:.2f}".format(*(cost[k] / 1e6 for k in (
            "gemm_bytes", "optimizer_bytes", "activation_bytes")))
        elementwise = "n/a" if not bw else \
            f"{(cost['optimizer_bytes'] + cost['activation_bytes']) / bw * 1e6:.0f}"
        cells = (f"{cfg.name}: {'-'.join(map(str, cfg.sizes))}, {cfg.activation}, "
                 f"{cfg.optimizer}, batch {cfg.batch_size}", f"{cost['params']:,}",
                 f"{cost['flops'] / 1e9:.3f}", mb, floor_cell(FLOOR), floor_cell("jax-gemm-floor"),
                 elementwise, above("funcnn-jax-scan", "jax-gemm-floor"),
                 above("funcnn-numpy", FLOOR))
        lines.append("| " + " | ".join(cells) + " |")
    note = f"copy bandwidth {bw / 1e9:.1f} GB/s" if bw else "copy bandwidth not measured"
    return "\n".join(lines) + f"\n\nMedians per step of one run; {note}."


# --------------------------------------------------------------------------- command line


def markdown(report: dict) -> str:
    """The results and targets of every configuration of a saved run, as Markdown tables
    (what docs/performance.md quotes)."""
    out = []
    for entry in report["configs"]:
        if "results" not in entry:
            continue
        c = entry["config"]
        out.append(f"### {c['name']}: {'-'.join(map(str, c['sizes']))}, {c['activation']}, "
                   f"{c['optimizer']}, batch {c['batch_size']}, {c['samples']} rows\n")
        out.append("| contender | median s | min s | repeats | × GEMM floor (median) "
                   "| first epoch s |\n| --- | --- | --- | --- | --- | --- |")
        skipped = []
        for r in sorted((r for r in entry["results"] if "median_s" in r),
                        key=lambda r: r["median_s"]):
            name = f"**{r['name']}**" if r["name"].startswith("funcnn") else r["name"]
            ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}"
            out.append(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['repeats']} "
                       f"| {ratio} | {r['first_epoch_s']:.2f} |")
        skipped = [f"{r['name']} ({r['skipped']})" for r in entry["results"] if "skipped" in r]
        if skipped:
            out.append("\nSkipped: " + "; ".join(skipped) + ".")
        out.append("\n| target | measured | met? |\n| --- | --- | --- |")
        for label, measured, met in entry.get("targets", []):
            mark = {True: "yes", False: "**no**", None: ""}[met]
            out.append(f"| {label} | {measured} | {mark} |")
        out.append("")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", help="layer sizes of the main config, e.g. 784,256,128,10")
    p.add_argument("--batch-size", type=int, help="batch size of the main config (128)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--samples", type=int, default=60000)
    p.add_argument("--repeats", type=int, help="timed epochs after the warm-up (5; 1 with --tiny)")
    p.add_argument(
        "--budget",
        type=float,
        default=15.0,
        help="seconds of timed epochs per contender before repeats are cut",
    )
    p.add_argument("--only", help="comma-separated contenders (gemm-floor always runs)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--small", action="store_true", help="only the small config")
    which.add_argument("--no-small", action="store_true", help="only the main config")
    which.add_argument("--tiny", action="store_true", help="a seconds-long config for CI")
    which.add_argument("--wide-only", action="store_true", help="only the two wide configs")
    p.add_argument("--wide", action="store_true",
                   help="also the wide configs: 784-1024-1024-10, tanh, SGD and Adam")
    p.add_argument("--data", metavar="DIR", help="real MNIST via funcnn.data.load_mnist(DIR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write everything as JSON")
    p.add_argument("--plot", metavar="PNG", help="also draw the ratios (needs matplotlib)")
    p.add_argument("--parallel", action="store_true",
                   help="time data-parallel fit on 1, 2, 4 devices and 2 processes instead")
    p.add_argument("--parallel-worker", metavar="JSON", help=argparse.SUPPRESS)
    p.add_argument("--cost-table", metavar="JSON",
                   help="print the cost model of a saved run (Markdown) and stop")
    p.add_argument("--markdown", metavar="JSON",
                   help="print the results and targets of a saved run (Markdown) and stop")
    p.add_argument("--no-extras", action="store_true",
                   help="skip what a full run of the main config adds: the NumPy step's pieces "
                        "against their own GEMMs (numpy_breakdown.py) and the compile times in "
                        "fresh processes (compile_time.py)")
    return p.parse_args(argv)


def configs(args: argparse.Namespace) -> list[Config]:
    common = dict(dtype=args.dtype, samples=args.samples, repeats=5, seed=args.seed)
    main = dict(MAIN)
    if args.sizes:
        main["sizes"] = tuple(int(s) for s in args.sizes.split(","))
    if args.batch_size:
        main["batch_size"] = args.batch_size
    if args.tiny:
        chosen = [TINY]
    elif args.small:
        chosen = [SMALL]
    elif args.no_small or args.sizes or args.batch_size:
        chosen = [main]
    else:
        chosen = [main, SMALL]
    if args.wide_only:
        chosen = []
    if args.wide or args.wide_only:
        chosen += [{"repeats": 3, **c} for c in WIDE]  # 3 timed epochs unless --repeats
    repeats = {} if args.repeats is None else {"repeats": args.repeats}
    return [Config(**{**common, **c, **repeats}) for c in chosen]


def targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    """The speed targets, checked on the main configuration's rows: ``(target, measured,
    met)``; ``met`` is None for context rows and when a contender is missing. Issue 12's
    come first, then the earlier ones that still hold."""
    by = {r["name"]: r for r in rows if "median_s" in r}

    def med(name):
        return by[name]["median_s"] if name in by else None

    def ratio(a, b, limit, label, key="median_s"):
        x, y = by.get(a, {}).get(key), by.get(b, {}).get(key)
        if x is None or y is None:
            return (label, "not measured", None)
        return (label, f"{x / y:.2f} x", None if limit is None else x / y <= limit)

    out = [
        ratio("funcnn-jax-scan", "jax-scan-ref", 1.2,
              "first funcnn-jax-scan epoch <= 1.2 x jax-scan-ref's", "first_epoch_s"),
        ratio("funcnn-jax-scan", "jax-gemm-floor", 1.25,
              "funcnn-jax-scan <= 1.25 x jax-gemm-floor"),
        ratio("funcnn-numpy", FLOOR, 2.0, "funcnn-numpy <= 2.0 x gemm-floor"),
        ratio("funcnn-numpy", "torch-eager", 0.6, "funcnn-numpy <= 0.6 x torch-eager"),
        ratio("funcnn-numpy", "torch-eager-ftz", None,
              "(context) funcnn-numpy vs torch-eager-ftz"),
        ratio("funcnn-jax-scan", FLOOR, 1.3, "funcnn-jax-scan <= 1.3 x gemm-floor"),
        ratio("funcnn-jax-scan", "funcnn-jax-step", 1.0, "funcnn-jax-scan <= funcnn-jax-step"),
        ratio("funcnn-jax-scan", "jax-step-ref", 1.0, "funcnn-jax-scan <= jax-step-ref"),
        ratio("funcnn-numpy", "sklearn", 0.6, "funcnn-numpy <= 0.6 x sklearn"),
    ]
    numpy_row = by.get("funcnn-numpy", {})
    if numpy_row.get("peak_bytes") is not None:
        peak, held = numpy_row["peak_bytes"], numpy_row["data_params_bytes"]
        out.append(("funcnn-numpy peak memory < 2 x (data + params)",
                    f"{peak / 2**20:.1f} MB vs {held / 2**20:.1f} MB", peak < 2 * held))
    if med("jax-gemm-floor") is not None and med(FLOOR) is not None:
        out.append(("(context) XLA's matmuls alone vs gemm-floor",
                    f"{med('jax-gemm-floor') / med(FLOOR):.2f} x", None))
    for name, base in (("pe-norms", "pe-plain"), ("pe-clip", "pe-plain"),
                       ("pe-dp", "pe-plain"), ("vmap-grad-norms", "pe-plain"),
                       ("vmap-grad-dp", "pe-plain"), ("vmap-grad-norms", "pe-norms"),
                       ("vmap-grad-dp", "pe-dp"), ("pe-numpy-dp", "pe-numpy-plain")):
        if med(name) is not None and med(base) is not None:  # per-example gradients
            out.append((f"(context) {name} vs {base}", f"{med(name) / med(base):.2f} x", None))
    return out


FLOORS = (FLOOR, "jax-gemm-floor")


def wide_targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    """On a wide configuration: funcnn-jax-scan faster than every contender but the floors."""
    by = {r["name"]: r["median_s"] for r in rows if "median_s" in r}
    if "funcnn-jax-scan" not in by:
        return [("funcnn-jax-scan faster than every other contender", "not measured", None)]
    ours = by["funcnn-jax-scan"]
    return [(f"funcnn-jax-scan < {name}", f"{ours:.3f} s vs {t:.3f} s", ours < t)
            for name, t in sorted(by.items(), key=lambda kv: kv[1])
            if name not in (*FLOORS, "funcnn-jax-scan")]


def extras(cfg: Config) -> dict:
    """The NumPy step's pieces against their own GEMMs, in this process, and the compile
    times of fit and jax-scan-ref in fresh processes (the main configuration's shapes)."""
    import compile_time
    import numpy_breakdown

    print(f"\n[{cfg.name}] NumPy step, piece by piece (numpy_breakdown.py) ...", flush=True)
    pieces = numpy_breakdown.measure(cfg.sizes, cfg.batch_size, cfg.samples, repeats=3)
    print(f"[{cfg.name}] compile times in fresh processes (compile_time.py) ...", flush=True)
    argv = ["--sizes", ",".join(map(str, cfg.sizes)), "--batch-size", str(cfg.batch_size),
            "--samples", str(cfg.samples)]
    compiled = compile_time.main(argv)
    return {"numpy_pieces": pieces, "compile_time": compiled,
            "targets": numpy_breakdown.targets(pieces) + compiled["targets"][1:]}


def print_targets(cfg: Config, found: list[tuple]) -> None:
    print(f"\ntargets, {cfg.name} config (medians of this run; see docs/performance.md for "
          "why the unmet ones are not met)")
    for label, measured, met in found:
        mark = {True: "met", False: "NOT met", None: ""}[met]
        print(f"  {label:48s} {measured:24s} {mark}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.parallel_worker:
        parallel_worker(json.loads(args.parallel_worker))
        return {}
    if args.cost_table:
        print(cost_table(json.loads(Path(args.cost_table).read_text())))
        return {}
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return {}
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    names = [n for n in CONTENDERS if n not in PER_EXAMPLE]  # those only on request
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(CONTENDERS))
        if unknown:
            raise SystemExit(f"unknown contender(s) {unknown}; choose from {list(CONTENDERS)}")
        names = [n for n in CONTENDERS if n == FLOOR or n in wanted]
    start = time.perf_counter()
    report = {"configs": [], "load_before": os.getloadavg()}
    for cfg in configs(args):
        if args.parallel:
            report["configs"].append({"config": cfg._asdict(), "data": args.data or "synthetic",
                                      "parallel": run_parallel(cfg, args.data, 600.0)})
            continue
        x, y = load_data(cfg, args.data)
        rows = run_config(cfg, names, x, y, args.budget)
        report["configs"].append(
            {"config": cfg._asdict(), "data": args.data or "synthetic", "results": rows}
        )
    main_cfg = next((Config(**e["config"]) for e in report["configs"]
                     if e["config"]["name"] == "main" and "results" in e), None)
    if main_cfg is not None and not (args.no_extras or args.only):
        report["extras"] = extras(main_cfg)
    report["machine"] = machine()  # after the runs, so every loaded thread pool shows
    report["copy_bandwidth"] = copy_bandwidth()
    report["total_s"] = time.perf_counter() - start
    print()
    print_machine(report["machine"])
    if report["load_before"][0] >= 1.0:
        print(
            f"warning: load average {report['load_before'][0]:.1f} before the run: other work "
            "competes for the cores and threaded BLAS on small matrices suffers most"
        )
    for entry in report["configs"]:
        if "parallel" in entry:
            print_parallel_table(Config(**entry["config"]), entry["parallel"])
        else:
            print_table(Config(**entry["config"]), entry["results"])
    for entry in report["configs"]:
        if entry["config"]["name"] == "main" and "results" in entry:
            entry["targets"] = targets(entry["results"]) + report.get("extras", {}).get(
                "targets", [])
            print_targets(Config(**entry["config"]), entry["targets"])
        if entry["config"]["name"].startswith("wide") and "results" in entry:
            entry["targets"] = wide_targets(entry["results"])
            print_targets(Config(**entry["config"]), entry["targets"])
    if not args.parallel:
        print("\ncost model (docs/performance.md keeps it from the JSON)")
        print(cost_table(report))
    print(f"\ntotal {report['total_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.plot and not args.parallel:
        from plot import plot_ratios

        plot_ratios(report, args.plot)
        print(f"wrote {args.plot}")
    return report


if __name__ == "__main__":
    main()
