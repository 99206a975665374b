"""Train a small convolutional net with funcnn and with baselines, side by side in one run.

    python benchmarks/conv_epoch.py                  # 30 steps a run, the epoch extrapolated
    python benchmarks/conv_epoch.py --steps 0        # whole epochs of 60000 rows (slow on NumPy)
    python benchmarks/conv_epoch.py --tiny           # a few seconds, for CI
    python benchmarks/conv_epoch.py --only funcnn-jax,torch-eager --json out.json

The net is issue 20's (3x3 conv 32, relu, 2x2 max-pool, 3x3 conv 64, relu, 2x2 max-pool,
dense 128, relu, dense 10; softmax + cross-entropy, Adam, batch 128, float32) on uniform
random 28x28 images (``--data DIR``: MNIST). The contenders (funcnn's hand-written backward
pass on jax and NumPy, ``jax.grad`` of the same patch form and of ``lax.conv_general_dilated``,
PyTorch eager, the matrix products alone) are described in ``benchmarks/README.md``;
``docs/performance.md`` shows and explains a run.
"""

from harness.conv_cli import conv_epoch_main

if __name__ == "__main__":
    conv_epoch_main()
