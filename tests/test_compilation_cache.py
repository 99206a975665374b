"""funcnn.train.enable_compilation_cache: a second process loads fit's programs from disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, logging, sys
import numpy as np
import funcnn
if sys.argv[2] == "on":
    funcnn.train.enable_compilation_cache(sys.argv[1])
import jax

messages = []
class Keep(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger().addHandler(Keep())
with jax.log_compiles(True):
    net = funcnn.MLP((4, 8, 3))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 3
    params = funcnn.init_params(net, 0, backend="jax")
    xd, yd = funcnn.to_backend((x, y), "jax")
    _, _, history = funcnn.fit(net, params, funcnn.optim.adam(1e-2), xd, yd, epochs=2,
                               batch_size=16, key=0, progress=False)
print(json.dumps({
    "hits": sum("Persistent compilation cache hit" in m for m in messages),
    "epoch_compiled": sum("Finished XLA compilation of jit(_epoch_scan)" in m
                          for m in messages),
    "loss": history["loss"]}))
'''


def _run(cache: Path, mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "FUNCNN_"))}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(cache), mode], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_reads_the_epoch_program_from_the_cache(tmp_path):
    cache = tmp_path / "jax-cache"
    first = _run(cache, "on")
    assert first["epoch_compiled"] == 1 and first["hits"] == 0
    written = sorted(p.name for p in cache.iterdir())
    assert any("epoch_scan" in name for name in written), written
    second = _run(cache, "on")
    assert second["hits"] >= 1  # the epoch program (and the few small ones) from disk
    assert second["loss"] == first["loss"]  # the same program: the same numbers, bit for bit
    assert sorted(p.name for p in cache.iterdir()) == written  # nothing new to store


@pytest.mark.slow
def test_the_cache_is_off_unless_asked_for(tmp_path):
    cache = tmp_path / "unused"
    cache.mkdir()
    result = _run(cache, "off")
    assert result["hits"] == 0 and result["epoch_compiled"] == 1
    assert list(cache.iterdir()) == []
