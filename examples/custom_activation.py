"""Your own activation, refereed: swish with its hand-written derivative.

Writes swish(z) = z * sigmoid(z) and its derivative, lets funcnn.testing check the
derivative against jax.grad (or finite differences without jax) at the hard points,
checks the whole backward pass of a net that uses it, then trains that net with fit.

    python examples/custom_activation.py                 # two-spirals data, 300 epochs
    python examples/custom_activation.py --epochs 20     # a quick look
"""

from __future__ import annotations

import argparse

import funcnn
from funcnn.activations import Activation, sigmoid


def swish(z):
    return z * sigmoid(z)


def swish_grad(z, a):
    # d/dz [z s(z)] = s(z) + z s(z) (1 - s(z)) = s + a (1 - s), with a = z s(z)
    s = sigmoid(z)
    return s + a * (1 - s)


SWISH = Activation("swish", swish, swish_grad)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    reference = "jax" if funcnn.backend.jax_available() else "finite_differences"
    for report in funcnn.testing.check_activation(SWISH, reference=reference):
        print(f"swish' against {reference}, {report.dtype}: worst error {report.error:.2g} "
              f"at {report.point}")

    net = funcnn.MLP((2, 32, 32, 2), hidden=SWISH)
    key_data, key_init, key_fit = funcnn.random.split(funcnn.random.key(args.seed), 3)
    x, y = funcnn.data.spirals(key_data, n=400, noise=0.1)
    params = funcnn.init_params(net, key_init)
    reports = funcnn.testing.check_grads(net, params, x[:32], y[:32], reference=reference)
    print(f"backprop of the swish net against {reference}: worst leaf error "
          f"{max(r.rel_error for r in reports):.2g}")

    params, _, history = funcnn.fit(net, params, funcnn.optim.adam(1e-2), x, y,
                                    epochs=args.epochs, batch_size=64, key=key_fit,
                                    progress=False)
    result = funcnn.evaluate(net, params, x, y)
    print(f"after {args.epochs} epochs: loss {result['loss']:.4f}, "
          f"accuracy {result['accuracy']:.3f}")
    return result


if __name__ == "__main__":
    main()
