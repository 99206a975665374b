"""funcnn.testing catching the two classic bugs of a hand-written network.

    python examples/catch_the_bug.py                      # jax.grad as the referee
    python examples/catch_the_bug.py --reference finite_differences

1. An Adam update that divides by the second moment instead of its square root.
   ``check_optimizer`` runs it next to ``funcnn.optim.adam`` on the same random
   gradients and names the step and the leaf where they part.
2. A sigmoid + binary-cross-entropy backward pass that does not match its loss:
   the output delta of squared error, ``(p - y) p (1 - p)``, or the right delta
   without the ``1/m`` of the mean. ``check_grads`` compares it with the
   gradient of ``funcnn.loss`` and names the leaves that are off.

The fixed versions are checked the same way and pass. Exits 0 when every bug
is caught and every fix passes, 1 otherwise; the last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import numpy as np

import funcnn
from funcnn.testing import GradientMismatch, check_grads, check_optimizer
from funcnn.tree import tree_map

LR = 1e-3


# ---------------------------------------------------------------------------- 1. Adam


def adam_by_hand(params, grads, state, *, lr=LR, b1=0.9, b2=0.999, eps=1e-8, sqrt=True):
    """Adam written out, with the textbook bias corrections; ``sqrt=False`` is the bug."""
    t = state.count + 1
    mu = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)

    def step(p, m, v):
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        scale = np.sqrt(v_hat) if sqrt else v_hat  # the bug: v_hat is a squared gradient
        return p - lr * m_hat / (scale + eps)

    return tree_map(step, params, mu, nu), funcnn.AdamState(t, mu, nu)


# ---------------------------------------------------------------------------- 2. sigmoid + BCE

# The output delta dL/dz of the mean binary cross-entropy L = -mean(y log p + (1-y) log(1-p))
# with p = sigmoid(z) is (p - y) / m: the sigmoid's derivative p (1 - p) cancels.
DELTAS = {
    "mse_delta": lambda p, y, m: (p - y) * p * (1 - p) / m,  # bug: squared error's delta
    "no_mean": lambda p, y, m: p - y,  # bug: forgets the 1/m of the mean
    "fixed": lambda p, y, m: (p - y) / m,
}


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def bce_backprop(net, params, x, y, *, delta):
    """Forward and backward pass of a tanh -> sigmoid net with one hidden layer, by hand."""
    hidden, out = params
    y = np.reshape(y, (-1, 1)).astype(x.dtype)
    m = x.shape[0]
    h = np.tanh(x @ hidden.W + hidden.b)  # (m, n_hidden)
    p = sigmoid(h @ out.W + out.b)  # (m, 1)
    dz2 = delta(p, y, m)  # dL/dz of the output layer
    dz1 = (dz2 @ out.W.T) * (1 - h * h)  # tanh'(z) = 1 - tanh(z)^2
    return (funcnn.Dense(x.T @ dz1, dz1.sum(axis=0)), funcnn.Dense(h.T @ dz2, dz2.sum(axis=0)))


# ---------------------------------------------------------------------------- the checks


def run_check(title, check, expect_bug):
    """Run ``check()``; print what it found. True when it behaved as expected."""
    print(f"--- {title}")
    try:
        check()
    except GradientMismatch as err:
        print(("caught: " if expect_bug else "UNEXPECTED mismatch: ") + str(err))
        return expect_bug
    print("passes" if not expect_bug else "NOT CAUGHT: the check passed")
    return not expect_bug


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", choices=("jax", "finite_differences"),
                   default="jax" if funcnn.backend.jax_available() else "finite_differences",
                   help="what check_grads compares the backward pass with")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    reference_adam = funcnn.optim.adam(LR)
    optimizer_checks = {
        "adam_no_sqrt": functools.partial(adam_by_hand, sqrt=False),
        "adam_fixed": adam_by_hand,
    }
    net = funcnn.MLP((2, 8, 1), hidden="tanh", output="sigmoid")  # binary cross-entropy
    x, y = funcnn.data.xor(args.seed, n=64)
    params = funcnn.init_params(net, args.seed, dtype="float64")

    results = {}
    for name, update in optimizer_checks.items():
        results[name] = run_check(
            f"{name}: check_optimizer(..., reference=funcnn.optim.adam({LR:g}))",
            lambda update=update: check_optimizer(update, reference=reference_adam,
                                                  key=args.seed),
            expect_bug=name != "adam_fixed",
        )
    for name, delta in DELTAS.items():
        grad_fn = functools.partial(bce_backprop, delta=delta)
        results[f"bce_{name}"] = run_check(
            f"bce_{name}: check_grads(net, params, x, y, grad_fn=..., "
            f"reference={args.reference!r})",
            lambda grad_fn=grad_fn: check_grads(net, params, x, y, grad_fn=grad_fn,
                                                reference=args.reference),
            expect_bug=name != "fixed",
        )

    ok = all(results.values())
    print(f"--- {'every bug caught and every fix passed' if ok else 'FAILED'}")
    print(json.dumps({"ok": ok, "reference": args.reference, "as_expected": results}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
