"""``funcnn gradcheck``: the hand-written backward pass against a reference, leaf by leaf."""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

import funcnn
from funcnn.activations import ACTIVATIONS, OUTPUTS
from funcnn.cli._common import (
    CommandError,
    describe_net,
    drops_units,
    fraction,
    positive_float,
    seed,
    width,
    widths,
)
from funcnn.losses import LOSSES
from funcnn.testing import GradientMismatch
from funcnn.tree import tree_paths

__all__ = ["add_parser", "run"]

DEFAULT_RTOL = {"jax": 1e-7, "finite_differences": 1e-5}
REFERENCE_NAME = {"jax": "jax.grad", "finite_differences": "finite differences"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "gradcheck", help="hand-written gradients against jax.grad, leaf by leaf",
        description="Draw a small random network and batch, compute the gradient of the loss "
                    "with funcnn's hand-written backward pass and compare every leaf with "
                    "jax.grad (or finite differences), all in float64. Exit code 1 on a "
                    "mismatch.",
    )
    p.add_argument("--hidden", type=widths, default=(16, 8), metavar="W,W",
                   help="hidden widths, comma-separated; 'none' for no hidden layer "
                        "(default: 16,8)")
    p.add_argument("--activation", default="relu", choices=tuple(ACTIVATIONS), metavar="NAME",
                   help=f"hidden activation: {', '.join(ACTIVATIONS)} (default: relu)")
    p.add_argument("--output", default="softmax", choices=OUTPUTS, metavar="NAME",
                   help="output activation: softmax or any hidden one (default: softmax)")
    p.add_argument("--loss", default=None, choices=tuple(LOSSES), metavar="NAME",
                   help=f"{', '.join(LOSSES)} (default: cross_entropy for softmax, "
                        "binary_cross_entropy for sigmoid, mse otherwise)")
    p.add_argument("--dropout", type=fraction, default=0.0, metavar="P",
                   help="dropout probability; the masks are drawn from the seed (default: 0)")
    p.add_argument("--n-in", type=width, default=6, metavar="N",
                   help="input width (default: 6)")
    p.add_argument("--n-out", type=width, default=4, metavar="N",
                   help="output width (default: 4)")
    p.add_argument("--rows", type=width, default=8, metavar="N",
                   help="rows in the batch (default: 8)")
    p.add_argument("--reference", default="jax", choices=tuple(DEFAULT_RTOL), metavar="NAME",
                   help="jax (jax.grad) or finite_differences; without jax installed, "
                        "finite differences are used, and said so (default: jax)")
    p.add_argument("--rtol", type=positive_float, default=None, metavar="R",
                   help="largest relative error that passes (default: 1e-7 against jax, "
                        "1e-5 against finite differences)")
    p.add_argument("--dtype", default="float64", choices=("float32", "float64"),
                   metavar="NAME", help="float32 or float64: the dtype the params and data "
                   "are drawn in; the check itself computes in float64 (default: float64)")
    p.add_argument("--seed", type=seed, default=0, metavar="N",
                   help="seed of the network, the batch and the dropout masks (default: 0)")
    p.set_defaults(run=run)
    return p


def random_problem(net: funcnn.MLP, rows: int, dtype: str, seed: int):
    """Params with random (nonzero) biases, inputs and targets that suit the loss."""
    k_params, k_bias, k_x, k_y = funcnn.random.split(funcnn.random.key(seed), 4)
    params = funcnn.init_params(net, k_params, dtype=dtype)
    bias_keys = funcnn.random.split(k_bias, net.n_layers)
    params = tuple(
        funcnn.Dense(layer.W, 0.5 * funcnn.random.normal(k, layer.b.shape, dtype))
        for layer, k in zip(params, bias_keys, strict=True)
    )
    x = funcnn.random.normal(k_x, (rows, net.sizes[0]), dtype)
    k = net.sizes[-1]
    if net.loss == "cross_entropy":
        y = np.asarray(funcnn.random.permutation(k_y, rows * k)) % k
        y = y[:rows].astype(np.int64)
    elif net.loss == "binary_cross_entropy":
        y = np.asarray(funcnn.random.bernoulli(k_y, 0.5, (rows, k))).astype(dtype)
    else:
        y = funcnn.random.normal(k_y, (rows, k), dtype)
    return params, x, y


def run(args: argparse.Namespace) -> int:
    try:
        net = funcnn.MLP((args.n_in, *args.hidden, args.n_out), hidden=args.activation,
                         output=args.output, loss=args.loss, dropout=args.dropout)
    except ValueError as err:
        raise CommandError(str(err), code=2) from None
    reference = args.reference
    if reference == "jax" and not funcnn.backend.jax_available():
        print("jax is not installed: checking against finite differences instead of jax.grad "
              "(pip install 'funcnn[jax]' for the exact reference)", file=sys.stderr)
        reference = "finite_differences"
    rtol = DEFAULT_RTOL[reference] if args.rtol is None else args.rtol
    params, x, y = random_problem(net, args.rows, args.dtype, args.seed)
    train = drops_units(net)  # no hidden layer: nothing to drop
    try:  # rtol=inf: every leaf is reported; the verdict is made below, with the table
        reports = funcnn.testing.check_grads(net, params, x, y, key=args.seed + 1, train=train,
                                             reference=reference, rtol=math.inf)
    except GradientMismatch as err:  # only a non-finite gradient gets here
        raise CommandError(f"gradient check failed: {str(err).splitlines()[0]}") from None
    shapes = [np.shape(leaf) for _, leaf in tree_paths(params)]
    ok = [r.rel_error <= rtol for r in reports]

    ref_name = REFERENCE_NAME[reference]
    print(f"gradient check: {describe_net(net)}, {net.loss} loss"
          f"{', dropout masks from the seed' if train else ''}")
    print(f"{args.rows} random rows, {args.dtype} params (seed {args.seed}); reference: "
          f"{ref_name}, in float64; a leaf passes with relative error <= {rtol:g}\n")
    print(f"{'leaf':<14}{'shape':<12}{'max abs error':>15}{'max rel error':>15}  result")
    for r, shape, passed in zip(reports, shapes, ok, strict=True):
        print(f"{r.path:<14}{str(shape):<12}{r.max_abs_error:>15.3g}{r.rel_error:>15.3g}  "
              f"{'pass' if passed else 'FAIL'}")
    skipped = sum(r.skipped for r in reports)
    if skipped:
        print(f"({skipped} sampled elements skipped: their +-eps step crosses a kink of "
              f"{net.hidden}, where finite differences see no derivative)")
    n_bad = len(ok) - sum(ok)
    print(f"\n{'OK' if not n_bad else 'MISMATCH'}: {len(ok) - n_bad} of {len(ok)} leaves agree "
          f"with {ref_name}")
    print(json.dumps({
        "ok": not n_bad, "reference": reference, "rtol": rtol, "sizes": list(net.sizes),
        "leaves": [{"leaf": r.path, "shape": list(s), "max_abs_error": r.max_abs_error,
                    "max_rel_error": r.rel_error, "ok": p}
                   for r, s, p in zip(reports, shapes, ok, strict=True)],
    }))
    if n_bad:
        bad = ", ".join(r.path for r, p in zip(reports, ok, strict=True) if not p)
        print(f"funcnn gradcheck: error: the gradient of {bad} disagrees with {ref_name}",
              file=sys.stderr)
        return 1
    return 0
