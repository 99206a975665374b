"""CPU seconds of a one-thread epoch of the NumPy paths (pure, fused), the GEMM floor and
PyTorch, interleaved: what they cost on one core on a machine that is not idle.

    python benchmarks/numpy_cpu_time.py --wide

The harness lives in ``benchmarks/harness/`` (``cpu_time.py``).
"""

from harness.cpu_time import cpu_time_main

if __name__ == "__main__":
    cpu_time_main()
