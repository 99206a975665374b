"""Where a NumPy training epoch of funcnn goes: gather, forward, loss, backward, optimizer.

    python benchmarks/numpy_breakdown.py [--sizes 784,256,128,10] [--batch-size 128]

Prints the median over ``--repeats`` epochs of each piece, in seconds per epoch, beside
the step's own matrix products and the optimizer alone (``benchmarks/harness/breakdown.py``).
"""

from harness.cli import numpy_breakdown_main

if __name__ == "__main__":
    numpy_breakdown_main()
