"""Ways to write Adam's element-wise update on NumPy, timed side by side in one process.

    python benchmarks/numpy_optimizer.py [--sizes 784,256,128,10] [--steps 300] [--rounds 5]

Prints the median milliseconds per step of each form and its ratio to the textbook
expressions; the forms are described in ``benchmarks/harness/adam_forms.py``.
"""

from harness.cli import numpy_optimizer_main

if __name__ == "__main__":
    numpy_optimizer_main()
