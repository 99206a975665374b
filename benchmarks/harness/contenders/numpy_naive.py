"""``numpy-naive``: a from-scratch NumPy network as it is usually written, state on the
object, float64."""

from __future__ import annotations

import numpy as np

from ..config import B1, B2, EPS, Config, Contender
from ..data import init_weights, nbytes, permutation

__all__ = ["NaiveMLP", "build_numpy_naive"]


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
