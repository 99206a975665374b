"""Baseline contenders for ``mlp_epoch.py``: everything that is not funcnn.

Each ``build_*`` function takes a :class:`Config` and the training data and
returns a :class:`Contender`, whose ``epoch(i)`` trains for one epoch (epoch
``i`` uses permutation ``i``) and returns when the work is done (jax outputs
blocked on), giving the loss of the last batch or ``None``. Setup such as
casting the data or moving it to a device happens in ``build_*`` and is not
timed. A missing optional library raises ``ImportError``, which the runner
reports as a skip.

All contenders except ``sklearn`` (which shuffles and batches by itself) use
``n // batch_size`` full batches per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import numpy as np

B1, B2, EPS = 0.9, 0.999, 1e-8


class Config(NamedTuple):
    name: str
    sizes: tuple[int, ...]
    batch_size: int
    dtype: str
    samples: int
    repeats: int
    lr: float = 1e-3
    seed: int = 0
    activation: str = "relu"  # of the hidden layers: "relu" or "tanh"
    optimizer: str = "adam"  # "adam" or "sgd" (plain, no momentum)


class Contender(NamedTuple):
    epoch: Callable[[int], float | None]
    dtype: str | Callable[[], str]  # what it computes in (a callable: known after a fit)
    steps: int  # optimizer steps per epoch
    nbytes: int  # bytes of data + params held by the contender
    memory: str  # "tracemalloc" (NumPy allocations) or "rss"
    note: str = ""


def permutation(cfg: Config, epoch: int) -> np.ndarray:
    """The sample order of ``epoch``; the same for every contender."""
    return np.random.default_rng((cfg.seed, epoch)).permutation(cfg.samples)


def init_weights(sizes: tuple[int, ...], seed: int, dtype: Any) -> list[tuple[np.ndarray, ...]]:
    """He-normal weights ``W[i]`` of shape (fan_in, fan_out) and zero biases."""
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((m, n)) * np.sqrt(2.0 / m)).astype(dtype),
            np.zeros(n, dtype=dtype),
        )
        for m, n in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def nbytes(*arrays: Any) -> int:
    return sum(int(a.nbytes) for a in arrays)


# --------------------------------------------------------------------------- gemm-floor


def build_gemm_floor(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    """The matrix products of one training step and nothing else.

    Per batch: forward ``a[i+1] = a[i] @ W[i]``; backward ``dW[i] = a[i].T @ dz[i]``
    and ``da[i] = dz[i] @ W[i].T`` for every layer but the first (no training
    loop needs the gradient with respect to the input). No bias, activation,
    loss or optimizer; every output is preallocated and batches are views.
    """
    dt, bs = np.dtype(cfg.dtype), cfg.batch_size
    xs = np.ascontiguousarray(x, dtype=dt)
    ws = [w for w, _ in init_weights(cfg.sizes, cfg.seed, dt)]
    acts = [np.empty((bs, n), dt) for n in cfg.sizes[1:]]
    dzs = [np.full((bs, n), 1e-3, dt) for n in cfg.sizes[1:]]
    dws = [np.empty_like(w) for w in ws]
    das = [np.empty((bs, n), dt) for n in cfg.sizes[1:-1]]
    steps = cfg.samples // bs

    def epoch(_: int) -> None:
        for s in range(steps):
            a = xs[s * bs : (s + 1) * bs]
            ins = [a]
            for w, out in zip(ws, acts, strict=True):
                np.matmul(ins[-1], w, out=out)
                ins.append(out)
            for i in reversed(range(len(ws))):
                np.matmul(ins[i].T, dzs[i], out=dws[i])
                if i > 0:
                    np.matmul(dzs[i], ws[i].T, out=das[i - 1])

    return Contender(epoch, dt.name, steps, nbytes(xs, *ws), "tracemalloc")


def build_jax_gemm_floor(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    """The products of :func:`build_gemm_floor`, but run by XLA in one jitted ``lax.scan``.

    Shows how fast XLA's own CPU matmuls are on these shapes: a jax training loop
    cannot beat this. Each step's products feed a scalar so that none is dropped.
    """
    import jax
    import jax.numpy as jnp

    dt, bs = np.dtype(cfg.dtype), cfg.batch_size
    steps = cfg.samples // bs
    xd = jnp.asarray(np.ascontiguousarray(x[: steps * bs], dtype=dt)).reshape(steps, bs, -1)
    ws = [jnp.asarray(w) for w, _ in init_weights(cfg.sizes, cfg.seed, dt)]
    dzs = [jnp.full((bs, n), 1e-3, dt) for n in cfg.sizes[1:]]

    @jax.jit
    def run_epoch(ws, dzs, xd):
        def body(total, a):
            ins = [a]
            for w in ws:
                ins.append(ins[-1] @ w)
            for i in reversed(range(len(ws))):
                total = total + jnp.sum(ins[i].T @ dzs[i])
                if i > 0:
                    total = total + jnp.sum(dzs[i] @ ws[i].T)
            return total + jnp.sum(ins[-1]), None

        return jax.lax.scan(body, jnp.zeros((), dt), xd)[0]

    def epoch(_: int) -> None:
        run_epoch(ws, dzs, xd).block_until_ready()

    return Contender(epoch, dt.name, steps, nbytes(np.asarray(xd), *map(np.asarray, ws)), "rss",
                     "XLA's matmuls alone, one lax.scan")


# --------------------------------------------------------------------------- numpy-naive


class NaiveMLP:
    """A from-scratch network as it is usually written: state lives on the object.

    Deliberately conventional (float64, cache dict, Adam moments as attributes),
    as a reference for what a typical hand-written NumPy MLP costs.
    """

    def __init__(self, sizes, lr=1e-3, seed=0):
        layers = init_weights(tuple(sizes), seed, np.float64)
        self.weights = [w for w, _ in layers]
        self.biases = [b for _, b in layers]
        self.lr = lr
        self.t = 0
        self.m_w = [np.zeros_like(w) for w in self.weights]
        self.v_w = [np.zeros_like(w) for w in self.weights]
        self.m_b = [np.zeros_like(b) for b in self.biases]
        self.v_b = [np.zeros_like(b) for b in self.biases]
        self.cache = {}

    def forward(self, x):
        self.cache["a0"] = x
        a = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            z = a @ w + b
            self.cache[f"z{i + 1}"] = z
            if i < last:
                a = np.maximum(z, 0)
            else:
                e = np.exp(z - z.max(axis=1, keepdims=True))
                a = e / e.sum(axis=1, keepdims=True)
            self.cache[f"a{i + 1}"] = a
        return a

    def backward(self, y_onehot):
        n = len(self.weights)
        m = y_onehot.shape[0]
        probs = self.cache[f"a{n}"]
        loss = -np.mean(np.sum(y_onehot * np.log(probs + 1e-12), axis=1))
        dz = (probs - y_onehot) / m
        self.grads_w, self.grads_b = [None] * n, [None] * n
        for i in reversed(range(n)):
            self.grads_w[i] = self.cache[f"a{i}"].T @ dz
            self.grads_b[i] = dz.sum(axis=0)
            if i > 0:
                dz = (dz @ self.weights[i].T) * (self.cache[f"z{i}"] > 0)
        return loss

    def adam_step(self):
        self.t += 1
        for i in range(len(self.weights)):
            for p, g, m, v in (
                (self.weights[i], self.grads_w[i], self.m_w[i], self.v_w[i]),
                (self.biases[i], self.grads_b[i], self.m_b[i], self.v_b[i]),
            ):
                m[...] = B1 * m + (1 - B1) * g
                v[...] = B2 * v + (1 - B2) * g**2
                m_hat = m / (1 - B1**self.t)
                v_hat = v / (1 - B2**self.t)
                p -= self.lr * m_hat / (np.sqrt(v_hat) + EPS)


def build_numpy_naive(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    if (cfg.activation, cfg.optimizer) != ("relu", "adam"):
        raise NotImplementedError("written for ReLU + Adam only")
    x64 = x.astype(np.float64)
    y64 = np.eye(cfg.sizes[-1])[y]
    net = NaiveMLP(cfg.sizes, cfg.lr, cfg.seed)
    bs, steps = cfg.batch_size, cfg.samples // cfg.batch_size

    def epoch(i: int) -> float:
        perm = permutation(cfg, i)
        for s in range(steps):
            idx = perm[s * bs : (s + 1) * bs]
            net.forward(x64[idx])
            loss = net.backward(y64[idx])
            net.adam_step()
        return float(loss)

    held = nbytes(x64, y64, *net.weights, *net.biases)
    return Contender(epoch, "float64", steps, held, "tracemalloc", "float64 by design")


# --------------------------------------------------------------------------- torch-eager


def build_torch_eager(cfg: Config, x: np.ndarray, y: np.ndarray, flush: bool = False
                      ) -> Contender:
    """PyTorch eager, out of the box; with ``flush``, subnormals flushed to zero during its
    epochs (``torch.set_flush_denormal``), as funcnn's fit does on NumPy and XLA on CPU:
    dead ReLU units make Adam's first moments subnormal, which costs torch ~40% here."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    dt = getattr(torch, cfg.dtype)
    layers: list[torch.nn.Module] = []
    for i, (m, n) in enumerate(zip(cfg.sizes[:-1], cfg.sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(m, n, dtype=dt))
        if i < len(cfg.sizes) - 2:
            layers.append(torch.nn.Tanh() if cfg.activation == "tanh" else torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    loss_fn = torch.nn.CrossEntropyLoss()
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(B1, B2), eps=EPS)
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(dt)
    yt = torch.from_numpy(y.astype(np.int64))
    bs, steps = cfg.batch_size, cfg.samples // cfg.batch_size

    def epoch(i: int) -> float:
        flushing = flush and torch.set_flush_denormal(True)
        try:
            perm = torch.from_numpy(permutation(cfg, i))
            for s in range(steps):
                idx = perm[s * bs : (s + 1) * bs]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
        finally:
            if flushing:
                torch.set_flush_denormal(False)
        return loss.item()

    held = nbytes(xt, yt) + sum(p.nbytes for p in model.parameters())
    note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    note += ", subnormals flushed" if flush else ""
    return Contender(epoch, cfg.dtype, steps, held, "rss", note)


# --------------------------------------------------------------------------- sklearn


def build_sklearn(cfg: Config, x: np.ndarray, y: np.ndarray) -> Contender:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    xs = np.ascontiguousarray(x, dtype=cfg.dtype)
    classes = np.arange(cfg.sizes[-1])
    clf = MLPClassifier(
        hidden_layer_sizes=cfg.sizes[1:-1],
        activation=cfg.activation,
        solver=cfg.optimizer,
        momentum=0.0,  # used by solver="sgd" only: plain SGD
        nesterovs_momentum=False,
        alpha=0.0,
        batch_size=cfg.batch_size,
        learning_rate_init=cfg.lr,
        beta_1=B1,
        beta_2=B2,
        epsilon=EPS,
        max_iter=1,
        shuffle=True,
        tol=0.0,
        n_iter_no_change=10**9,
        random_state=cfg.seed,
    )

    def epoch(_: int) -> float:
        # one partial_fit call is one pass over the data, shuffled by sklearn
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.partial_fit(xs, y, classes=classes)
        return float(clf.loss_)

    def dtype_after_fit() -> str:
        return clf.coefs_[0].dtype.name if hasattr(clf, "coefs_") else "?"

    steps = -(-cfg.samples // cfg.batch_size)
    return Contender(epoch, dtype_after_fit, steps, nbytes(xs, y), "rss", "partial_fit")


# --------------------------------------------------------------------------- jax references


def jax_data(cfg: Config, x: np.ndarray, y: np.ndarray):
    """Inputs in ``cfg.dtype`` and int32 labels, on the jax device (x64 enabled for float64)."""
    import jax

    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    data = (jax.device_put(np.ascontiguousarray(x, dtype=cfg.dtype)),
            jax.device_put(y.astype(np.int32)))
    return jax.block_until_ready(data)  # placed before any epoch is timed


def _jax_reference(cfg: Config, x: np.ndarray, y: np.ndarray):
    """What the two JAX references share: one Adam step, initial state, device data."""
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
    step, params, state, xd, yd, held = _jax_reference(cfg, x, y)
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

    step, params, state, xd, yd, held = _jax_reference(cfg, x, y)
    bs, steps = cfg.batch_size, cfg.samples // cfg.batch_size
    run_epoch = scan_ref_program(step, steps, bs)
    carry = [params, state]

    def epoch(i: int) -> float:
        perm = jnp.asarray(permutation(cfg, i)[: steps * bs])
        p, s, losses = run_epoch(*carry, xd, yd, perm)
        carry[:] = [p, s]
        return float(losses[-1].block_until_ready())

    return Contender(epoch, cfg.dtype, steps, held, "rss", "one jitted lax.scan per epoch")


BASELINES = {
    "gemm-floor": build_gemm_floor,
    "jax-gemm-floor": build_jax_gemm_floor,
    "numpy-naive": build_numpy_naive,
    "torch-eager": build_torch_eager,
    "torch-eager-ftz": partial(build_torch_eager, flush=True),
    "sklearn": build_sklearn,
    "jax-scan-ref": build_jax_scan_ref,
    "jax-step-ref": build_jax_step_ref,
}
