"""Data-parallel ``fit(..., devices=...)`` on 1, 2 and 4 virtual CPU devices and on 2
processes of 1 device, each setting in a subprocess of its own (jax fixes its device count
when it starts), against ``fit`` on one device timed in the same subprocess."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import funcnn

from . import BENCHMARKS, child_env
from .config import Config
from .contenders.funcnn_fit import funcnn_setup
from .data import jax_data, load_data
from .timing import failure, timed

__all__ = ["PARALLEL", "WORKER", "parallel_worker", "run_parallel"]

WORKER = "--parallel-worker"  # the entry script's hidden flag: be one setting's subprocess
# (name, processes, devices per process); each runs in a subprocess of its own
PARALLEL = (("dp-1-device", 1, 1), ("dp-2-devices", 1, 2), ("dp-4-devices", 1, 4),
            ("dp-2-processes", 2, 1))


def parallel_worker(spec: dict) -> None:
    """In the subprocess: time ``fit`` on one device and data-parallel on every device
    of every process, one epoch of each per round; process 0 writes the times. With
    several processes, process 0 alone trains on one device while the others wait."""
    funcnn.parallel.initialize()
    import jax
    from jax.experimental.multihost_utils import sync_global_devices

    cfg = Config(**{**spec["config"], "sizes": tuple(spec["config"]["sizes"])})
    net, params, opt = funcnn_setup(cfg, "jax")
    x, y = jax_data(cfg, *load_data(cfg, spec["data"]))
    mesh = funcnn.parallel.data_mesh()
    modes = {"data-parallel": (funcnn.parallel.replicate((x, y), mesh), mesh),
             "one device": ((x, y), None)}
    carry = {name: [params, None] for name in modes}

    def epoch(name: str, i: int) -> None:
        if modes[name][1] is None and jax.process_count() > 1:
            if funcnn.parallel.is_main_process():
                epoch_alone(i)
            sync_global_devices(f"one-device epoch {i}")
            return
        epoch_alone(i, name)

    def epoch_alone(i: int, name: str = "one device") -> None:
        (xm, ym), devices = modes[name]
        p, s, _ = funcnn.fit(net, carry[name][0], opt, xm, ym, epochs=1, devices=devices,
                             batch_size=cfg.batch_size, key=cfg.seed * 1_000_003 + i,
                             opt_state=carry[name][1], progress=False)
        carry[name][:] = jax.block_until_ready([p, s])

    result = {name: {"first_epoch_s": timed(partial(epoch, name), 0)[0], "times_s": []}
              for name in modes}
    for name in modes:  # a second warm-up: fit's private copies of sharded inputs compile
        epoch(name, 0)
    for r in range(cfg.repeats):
        for name in modes:
            result[name]["times_s"].append(timed(partial(epoch, name), r + 1)[0])
    if funcnn.parallel.is_main_process():
        Path(spec["out"]).write_text(json.dumps(result))


def run_parallel(cfg: Config, data_dir: str | None, timeout: float) -> list[dict]:
    """Rows of data-parallel ``fit`` timings; ``ratio`` divides by ``fit`` on one device,
    timed in the same subprocess (in process 0)."""
    rows = []
    for name, processes, devices in PARALLEL:
        print(f"[{cfg.name}] {name} ...", end=" ", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            spec = {"config": cfg._asdict(), "data": data_dir, "out": f"{tmp}/out.json"}
            command = [sys.executable, str(BENCHMARKS / "mlp_epoch.py"), WORKER,
                       json.dumps(spec)]
            if processes > 1:
                command = [sys.executable, "-m", "funcnn.launch", "--processes",
                           str(processes), "--timeout", str(timeout), "--", *command]
            flags = f"--xla_force_host_platform_device_count={devices}"
            try:
                subprocess.run(command, env=child_env({"XLA_FLAGS": flags}), check=True,
                               timeout=timeout + 30, capture_output=True, text=True)
                result = json.loads(Path(spec["out"]).read_text())
            except (subprocess.SubprocessError, OSError) as e:
                tail = (getattr(e, "stderr", None) or "").strip().splitlines()[-1:]
                rows.append({"name": name, "skipped": failure(e, "failed: ") + " ".join(tail)})
                print(rows[-1]["skipped"], flush=True)
                continue
        dp = result["data-parallel"]
        one = result["one device"]["times_s"]
        row = {"name": name, "processes": processes, "devices": processes * devices,
               "first_epoch_s": dp["first_epoch_s"], "median_s": statistics.median(dp["times_s"]),
               "min_s": min(dp["times_s"]), "repeats": len(dp["times_s"]),
               "one_device_median_s": statistics.median(one)}
        row["ratio"] = row["median_s"] / row["one_device_median_s"]
        rows.append(row)
        print(f"{row['median_s']:.3f} s", flush=True)
    return rows
