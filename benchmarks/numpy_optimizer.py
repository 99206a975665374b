"""Ways to write Adam's element-wise update on NumPy, timed side by side in one process.

    python benchmarks/numpy_optimizer.py [--sizes 784,256,128,10] [--steps 300] [--rounds 5]
    python benchmarks/numpy_optimizer.py --jax   # funcnn's two Adam leaves in fit's jax epoch

Prints the median milliseconds per step of each form and its ratio to the textbook
expressions (``plain``); with ``--jax``, of fit's jax epoch program (60 000 random rows,
batch 128) compiled with the textbook leaf ``adam_leaf`` and with the fast path
``adam_leaf_folded``, and the ratio to the textbook leaf. The forms are described in
``benchmarks/harness/adam_forms.py``.
"""

from harness.cli import numpy_optimizer_main

if __name__ == "__main__":
    numpy_optimizer_main()
