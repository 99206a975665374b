"""Time one training epoch of an MLP with funcnn and with baselines, in one process.

    python benchmarks/mlp_epoch.py                       # main + small config, all contenders
    python benchmarks/mlp_epoch.py --tiny                # a few seconds, for CI
    python benchmarks/mlp_epoch.py --only gemm-floor,torch-eager --json out.json --plot out.png
    python benchmarks/mlp_epoch.py --parallel --no-small  # data-parallel fit, in subprocesses
    python benchmarks/mlp_epoch.py --markdown out.json   # the result tables of a saved run
    python benchmarks/mlp_epoch.py --cost-table out.json # its cost model

The network is ``sizes`` (default 784-256-128-10) with ReLU hidden layers and a
softmax + cross-entropy output, trained by Adam (lr 1e-3) on mini-batches, on 60000
uniform random "images" with random labels (``--data DIR``: real MNIST). Every contender
gets one warm-up epoch, then ``--repeats`` timed epochs; the ratio column divides the
median by the ``gemm-floor`` median of the same configuration, i.e. by the cost of the
matrix products alone. The harness lives in ``benchmarks/harness/``;
``benchmarks/README.md`` describes it.
"""

from harness.cli import mlp_epoch_main

if __name__ == "__main__":
    mlp_epoch_main()
