"""Where the first jax epoch of ``funcnn.fit`` spends its time, and what the cache saves.

    python benchmarks/compile_time.py                 # main config: stages, first epochs, cache
    python benchmarks/compile_time.py --sizes 784,1024,1024,10 --json out.json

Every measurement runs in a fresh Python process (this script again); what each one
measures is described in ``benchmarks/harness/compile_time.py``.
"""

from harness.cli import compile_time_main

if __name__ == "__main__":
    compile_time_main()
