"""Bar chart of epoch time over the GEMM floor, from the JSON of ``mlp_epoch.py``.

    python benchmarks/plot.py results.json ratios.png
"""

from harness.cli import plot_main

if __name__ == "__main__":
    plot_main()
