"""Data-parallel ``fit`` on 4 virtual devices and on 2 processes x 2 devices, and the launcher.

jax fixes its device count when it starts, so every multi-device run happens in a
subprocess of ``sys.executable`` that gets ``XLA_FLAGS`` before it imports jax: one
runs :data:`DEVICES_SCRIPT` (4 devices), and ``python -m funcnn.launch`` runs
:data:`PROCESS_SCRIPT` as 2 processes of 2 devices each. The scripts write what they
found to JSON/npz files; the assertions are here, against a single-device ``fit`` of
the same problem run in this process. Every subprocess has a timeout, and a failure
shows its stderr.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import funcnn
from funcnn import launch, parallel

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 150  # seconds for one subprocess (or one launched run); normal runs take < 30

# The problem every run trains: float64, dropout, shuffling, a short last batch of 4 rows
# (92 = 11 x 8 + 4, and 4 divides among 4 devices), a validation set.
PROBLEM = r'''
import numpy as np
import funcnn

def problem():
    net = funcnn.MLP((5, 16, 8, 3), hidden="tanh", output="softmax", dropout=0.25)
    rng = np.random.default_rng(11)
    x, xv = rng.normal(size=(92, 5)), rng.normal(size=(20, 5))
    y, yv = rng.integers(0, 3, 92), rng.integers(0, 3, 20)
    params = funcnn.init_params(net, 5, backend="jax", dtype="float64")
    kwargs = dict(epochs=2, batch_size=8, key=3, validation=(xv, yv), progress=False)
    return net, params, funcnn.optim.adam(1e-2), x, y, kwargs
'''

SETUP = r'''
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
'''

DEVICES_SCRIPT = SETUP + PROBLEM + r'''
from funcnn import parallel
from funcnn.batching import split_batches
from funcnn.train import _jax_programs

out = {"devices": len(jax.devices())}
net, params, opt, x, y, kw = problem()
def leaves(tree):
    return [np.asarray(a).tolist() for a in jax.tree.leaves(tree)]
def error(**changes):
    try:
        funcnn.fit(net, changes.pop("params", params), changes.pop("opt", opt),
                   changes.pop("x", x),
                   changes.pop("y", y), **{**kw, **changes})
    except (ValueError, TypeError) as err:
        return f"{type(err).__name__}: {err}"
    return None

epoch = _jax_programs()[0]
p4, s4, h4 = funcnn.fit(net, params, opt, x, y, devices=jax.devices(), **kw)
compiled = epoch._cache_size()
again = funcnn.fit(net, params, opt, x, y, devices=parallel.data_mesh(), **kw)
out.update(compiled_before=compiled, compiled_after=epoch._cache_size())
rows = funcnn.fit(net, params, opt, *parallel.shard_batch((x, y), parallel.data_mesh()),
                  devices=jax.devices(), **kw)  # data split by rows stay split
out.update(sharded=leaves(p4), sharded_history=h4, rows=leaves(rows[0]), rows_history=rows[2],
           sharded_opt=leaves(s4), again=leaves(again[0]))
out["shardings"] = [(list(a.sharding.spec), a.sharding.is_fully_replicated,
                     len(a.sharding.device_set)) for a in jax.tree.leaves((p4, s4))]
out["errors"] = {
    "batch": error(devices=jax.devices(), batch_size=6),
    "tail": error(devices=jax.devices(), x=x[:90], y=y[:90]),
    "full_batch": error(devices=jax.devices(), batch_size=None, x=x[:90], y=y[:90]),
    "axis": error(devices=jax.sharding.Mesh(np.array(jax.devices()), ("rows",))),
    "numpy": error(devices=jax.devices(), params=funcnn.to_backend(params, "numpy")),
    "not_devices": error(devices=[0, 1]),
}
# 90 = 11 x 8 + 2: the 2-row last batch, padded to 8 rows, splits over the 4 devices too
out["tail90"] = leaves(funcnn.fit(net, params, opt, x[:90], y[:90], devices=jax.devices(),
                                  **kw)[0])
out["tail90_one"] = leaves(funcnn.fit(net, params, opt, x[:90], y[:90], **kw)[0])
mesh = parallel.fit_mesh(jax.devices(), split_batches(90, 8, drop_last=True), 90, "jax")
out["drop_last_mesh"] = dict(mesh.shape)
# DP-SGD pads the 2-row last batch too, its padding out of the clipping and the sum
dp = funcnn.per_example.dp_grad(1.0, 0.5)
out["tail90_dp"] = leaves(funcnn.fit(net, params, opt, x[:90], y[:90], devices=jax.devices(),
                                     grad_fn=dp, **kw)[0])
out["tail90_dp_one"] = leaves(funcnn.fit(net, params, opt, x[:90], y[:90], grad_fn=dp, **kw)[0])

# a hand-written loop: shard_batch + replicate + a jitted make_train_step
mesh = parallel.data_mesh()
step = jax.jit(funcnn.make_train_step(net, opt))
dkey = funcnn.random.key(9, backend="jax")
ps, ss, loss = step(*parallel.replicate((params, opt.init(params)), mesh),
                    *parallel.shard_batch((x[:8], y[:8]), mesh), dkey)
pr, sr, lossr = step(params, opt.init(params), x[:8], y[:8], dkey)
xs = parallel.shard_batch(x[:8], mesh)
out.update(step=leaves(ps), step_single=leaves(pr), step_loss=[float(loss), float(lossr)],
           batch_spec=list(xs.sharding.spec),
           batch_rows=sorted(s.data.shape[0] for s in xs.addressable_shards))
try:
    parallel.shard_batch(x[:6], mesh)
except ValueError as err:
    out["shard_error"] = str(err)
json.dump(out, open(sys.argv[1], "w"))
'''

PROCESS_SCRIPT = r'''
from funcnn import parallel
joined = parallel.initialize()
''' + SETUP + PROBLEM + r'''
import io
from jax.experimental import multihost_utils
import funcnn.callbacks

folder = sys.argv[1]
pid = jax.process_index()
writes = []
save = funcnn.callbacks.save_fit_state
def counting_save(*args, **kwargs):
    writes.append(1)
    save(*args, **kwargs)
funcnn.callbacks.save_fit_state = counting_save

net, params, opt, x, y, kw = problem()
path = f"{folder}/run.ckpt"
printed = io.StringIO()
full = funcnn.fit(net, params, opt, x, y, devices=jax.devices(),
                  callbacks=[funcnn.callbacks.print_epochs(printed)], **kw)
multihost_utils.sync_global_devices("full run done")
# go on from what fit returned (arrays spread over both processes): one more epoch
more = funcnn.fit(net, full[0], opt, x, y, devices=jax.devices(), opt_state=full[1],
                  initial_epoch=2, **{**kw, "epochs": 3})
first = funcnn.fit(net, params, opt, x, y, devices=jax.devices(),
                   callbacks=[funcnn.callbacks.checkpoint(path)], **{**kw, "epochs": 1})
multihost_utils.sync_global_devices("checkpoint written")
resumed = funcnn.fit(net, params, opt, x, y, devices=jax.devices(),
                     callbacks=[funcnn.callbacks.checkpoint(path, resume=True)], **kw)
try:
    funcnn.fit(net, params, opt, x + pid, y, devices=jax.devices(), **kw)
    mismatch = None
except ValueError as err:
    mismatch = str(err)
np.savez(f"{folder}/params_{pid}.npz", *[np.asarray(a) for a in jax.tree.leaves(full[0])])
np.savez(f"{folder}/resumed_{pid}.npz", *[np.asarray(a) for a in jax.tree.leaves(resumed[0])])
np.savez(f"{folder}/more_{pid}.npz", *[np.asarray(a) for a in jax.tree.leaves(more[0])])
json.dump({"joined": joined, "processes": jax.process_count(), "devices": len(jax.devices()),
           "main": parallel.is_main_process(), "writes": len(writes),
           "printed": printed.getvalue(), "history": full[2], "resumed_history": resumed[2],
           "mismatch": mismatch}, open(f"{folder}/report_{pid}.json", "w"))
'''


# ---------------------------------------------------------------------------- helpers


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCNN_BACKEND", "XLA_FLAGS") and not k.startswith("FUNCNN_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["JAX_PLATFORMS"] = "cpu"
    return {**env, **extra}


def _run(args: list[str], what: str, *, timeout: float = TIMEOUT, cwd: Path | None = None,
         **env: str) -> subprocess.CompletedProcess:
    """Run ``args``; fail the test (with its stderr) on a timeout, never hang."""
    try:
        return subprocess.run(args, env=_env(**env), cwd=cwd or ROOT, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode() if isinstance(err.stderr, bytes) else err.stderr or ""
        pytest.fail(f"{what} did not finish within {timeout} s; its stderr ends:\n"
                    f"{stderr[-3000:]}")


def _check_ok(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        pytest.fail(f"{what} failed with exit code {proc.returncode}; its stderr ends:\n"
                    f"{proc.stderr[-4000:]}")


def _problem():
    namespace: dict = {}
    exec(PROBLEM, namespace)
    return namespace["problem"]()


def _max_diff(got: list, want) -> float:
    """Largest difference between the leaves listed in ``got`` and those of tree ``want``."""
    want = want if isinstance(want, list) else jax.tree.leaves(want)
    assert len(got) == len(want), (len(got), len(want))
    return max(float(np.max(np.abs(np.asarray(g, dtype=np.float64) - np.asarray(w))))
               for g, w in zip(got, want, strict=True))


def _assert_same_history(got: dict, want: dict, tol: float = 1e-6) -> None:
    assert set(got) == set(want), (sorted(got), sorted(want))
    for name in want:
        if name == "seconds":
            assert len(got[name]) == len(want[name])
            continue
        g = np.asarray(got[name], dtype=np.float64)
        w = np.asarray(want[name], dtype=np.float64)
        assert g.shape == w.shape, f"history[{name!r}]: {g.shape} vs {w.shape}"
        assert np.allclose(g, w, rtol=0, atol=tol), f"history[{name!r}]: {g} vs {w}"


@pytest.fixture(scope="module")
def reference():
    """The single-device fit of the problem, in this process."""
    net, params, opt, x, y, kw = _problem()
    return funcnn.fit(net, params, opt, x, y, **kw)


# ---------------------------------------------------------------------------- 4 devices


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    folder = tmp_path_factory.mktemp("devices")
    script, report = folder / "devices.py", folder / "report.json"
    script.write_text(DEVICES_SCRIPT)
    dump = folder / "hlo"  # XLA writes the compiled epoch program here
    flags = f"--xla_force_host_platform_device_count=4 --xla_dump_to={dump} " \
            "--xla_dump_hlo_module_re=.*epoch.*"
    proc = _run([sys.executable, str(script), str(report)], "the 4-device script",
                XLA_FLAGS=flags)
    _check_ok(proc, "the 4-device script")
    out = json.loads(report.read_text())
    out["hlo"] = [p.read_text() for p in sorted(dump.glob("*epoch*.cpu_after_optimizations.txt"))]
    return out


@pytest.mark.slow
def test_four_devices_equal_one_device(four_devices, reference):
    out = four_devices
    assert out["devices"] == 4
    params, _, history = reference
    assert _max_diff(out["sharded"], params) < 1e-6
    assert _max_diff(out["again"], params) < 1e-6
    _assert_same_history(out["sharded_history"], history)
    assert _max_diff(out["rows"], params) < 1e-6  # the training set split by rows
    _assert_same_history(out["rows_history"], history)
    assert len(history["loss"]) == 2 * 12  # 11 full batches and the short one, twice


@pytest.mark.slow
def test_four_devices_outputs_are_replicated(four_devices):
    shardings = four_devices["shardings"]
    assert len(shardings) == 6 + 1 + 6 + 6  # params, Adam's count, mu, nu
    for spec, replicated, devices in shardings:
        assert (spec, replicated, devices) == ([], True, 4)


@pytest.mark.slow
def test_fit_again_does_not_recompile(four_devices):
    assert four_devices["compiled_before"] >= 1
    assert four_devices["compiled_after"] == four_devices["compiled_before"]


def _collectives(hlo: str) -> list[tuple[str, str]]:
    """(result type, operation) of every cross-device operation of a compiled program."""
    pattern = r"= (\(.*?\)|\S+) (all-reduce|all-gather|all-to-all|collective-permute)\("
    return re.findall(pattern, hlo)


@pytest.mark.slow
def test_only_gradients_and_indices_cross_devices(four_devices):
    """With the data replicated, the epoch program sums the gradients across devices with
    an all-reduce inside its loop; the data never move, only integer row indices, and in
    the short last batch (padded into the loop) the logits and labels of its 4 rows,
    which its loss is taken over. With the data split by rows, each batch also crosses
    devices."""
    # one program per placement of the data (replicated, then split by rows), then the
    # 90-row runs (4 devices, 1 device), plain and DP-SGD: fitting again compiled nothing
    assert len(four_devices["hlo"]) == 6, "the epoch program was compiled again"
    collectives = _collectives(four_devices["hlo"][0])
    gradient_sums = [t for t, op in collectives if op == "all-reduce" and "f64[5,16]" in t]
    assert len(gradient_sums) == 1, collectives  # in the scanned loop, the short batch too
    moves = [(t, op) for t, op in collectives if op != "all-reduce"]
    short_batch_rows = re.compile(r"(f64\[[1-4],3\]|s64\[[1-4]\])")  # 4 rows, 3 classes
    assert all(t.startswith("s32[") or short_batch_rows.match(t) for t, _ in moves), moves
    batch_moves = [t for t, _ in _collectives(four_devices["hlo"][1]) if "f64[8,5]" in t]
    assert batch_moves, "data split by rows, yet no batch crosses devices"


@pytest.mark.slow
def test_batches_must_divide_among_devices(four_devices):
    errors = four_devices["errors"]
    assert errors["batch"].startswith("ValueError: batch_size 6 ")
    assert "4 devices" in errors["batch"] and "multiple of 4" in errors["batch"]
    # fit pads a short last batch to a full one: any 2 rows train on 4 devices ...
    assert errors["tail"] is None
    assert _max_diff(four_devices["tail90"], four_devices["tail90_one"]) < 1e-6
    assert "batch_size=None" in errors["full_batch"] and "90 % 4 = 2" in errors["full_batch"]
    assert "('rows',)" in errors["axis"] and "'data'" in errors["axis"]
    assert errors["numpy"] is not None and "jax" in errors["numpy"]
    assert errors["not_devices"].startswith("TypeError: devices must be")
    assert four_devices["drop_last_mesh"] == {"data": 4}  # no short batch: nothing to split


@pytest.mark.slow
def test_dp_sgd_on_four_devices_equals_one_device(four_devices):
    """DP-SGD with a 2-row short batch (90 = 11 x 8 + 2), which no longer needs to divide
    among the devices: the same noise, clipping and params as on one device."""
    got, want = four_devices["tail90_dp"], four_devices["tail90_dp_one"]
    assert _max_diff(got, want) < 1e-6
    assert _max_diff(got, four_devices["tail90"]) > 1e-3  # clipped and noised, not plain


@pytest.mark.slow
def test_hand_written_loop_on_sharded_batches(four_devices):
    out = four_devices
    assert _max_diff(out["step"], out["step_single"]) < 1e-12
    assert abs(out["step_loss"][0] - out["step_loss"][1]) < 1e-12
    assert out["batch_spec"] == ["data"]
    assert out["batch_rows"] == [2, 2, 2, 2]
    assert "6 rows" in out["shard_error"] and "4 devices" in out["shard_error"]


# ---------------------------------------------------------------------------- 2 processes


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processes")
    script = folder / "worker.py"
    script.write_text(PROCESS_SCRIPT)
    command = [sys.executable, "-m", "funcnn.launch", "--processes", "2",
               "--devices-per-process", "2", "--timeout", str(TIMEOUT - 10), "--",
               sys.executable, str(script), str(folder)]
    proc = _run(command, "the 2-process run")
    _check_ok(proc, "the 2-process run")
    reports = [json.loads((folder / f"report_{i}.json").read_text()) for i in range(2)]
    params = [list(np.load(folder / f"params_{i}.npz").values()) for i in range(2)]
    resumed = [list(np.load(folder / f"resumed_{i}.npz").values()) for i in range(2)]
    more = [list(np.load(folder / f"more_{i}.npz").values()) for i in range(2)]
    return reports, params, resumed, more


@pytest.mark.slow
def test_two_processes_equal_one_process(two_processes, reference):
    reports, params, _, _ = two_processes
    for i, report in enumerate(reports):
        assert (report["joined"], report["processes"], report["devices"]) == (True, 2, 4), i
        assert _max_diff(params[i], reference[0]) < 1e-6
        _assert_same_history(report["history"], reference[2])
    # bit for bit: after the all-reduce every process holds the same replicated values
    assert all(np.array_equal(a, b) for a, b in zip(params[0], params[1], strict=True))


@pytest.mark.slow
def test_two_processes_resume_from_one_checkpoint(two_processes, reference):
    reports, _, resumed, _ = two_processes
    for i in range(2):
        assert _max_diff(resumed[i], reference[0]) < 1e-6
        _assert_same_history(reports[i]["resumed_history"], reference[2])


@pytest.mark.slow
def test_two_processes_go_on_from_what_fit_returned(two_processes):
    """A third epoch from the params and optimizer state fit returned (arrays that span
    both processes) equals 3 epochs in a row on one device."""
    net, params, opt, x, y, kw = _problem()
    three = funcnn.fit(net, params, opt, x, y, **{**kw, "epochs": 3})
    for more in two_processes[3]:
        assert _max_diff(more, three[0]) < 1e-6


@pytest.mark.slow
def test_only_the_main_process_writes(two_processes):
    reports = two_processes[0]
    assert [r["main"] for r in reports] == [True, False]
    assert reports[0]["writes"] == 2 and reports[1]["writes"] == 0  # epochs 1 and 2
    assert reports[0]["printed"].count("epoch ") == 2 and reports[1]["printed"] == ""


@pytest.mark.slow
def test_processes_must_pass_the_same_data(two_processes):
    for report in two_processes[0]:
        assert report["mismatch"] is not None
        assert report["mismatch"].startswith("data differs between process 0 and process 1")


# ---------------------------------------------------------------------------- launcher


WORKER = r'''
import os, sys, time
pid = int(os.environ["FUNCNN_PROCESS_ID"])
with open(f"{sys.argv[1]}/pid_{pid}", "w") as f:
    f.write(str(os.getpid()))
mode = sys.argv[2]
if mode == "env":
    keys = ("FUNCNN_COORDINATOR", "FUNCNN_NUM_PROCESSES", "FUNCNN_PROCESS_ID", "XLA_FLAGS")
    with open(f"{sys.argv[1]}/env_{pid}", "w") as f:
        f.write("\n".join(os.environ.get(k, "") for k in keys))
elif mode == "one fails" and pid == 1:
    sys.exit(3)
else:
    time.sleep(120)
'''


def _launch(tmp_path: Path, mode: str, *options: str) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "funcnn.launch", *options, "--",
               sys.executable, str(script), str(tmp_path), mode]
    flags = "--xla_cpu_use_thunk_runtime=true --xla_force_host_platform_device_count=7"
    return _run(command, f"the launcher ({mode})", timeout=60, XLA_FLAGS=flags)


def _gone(pid_file: Path) -> bool:
    """True when the process whose pid is in ``pid_file`` has ended (a zombie has too)."""
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_launcher_sets_each_process_up(tmp_path):
    proc = _launch(tmp_path, "env", "--processes", "3", "--devices-per-process", "2")
    _check_ok(proc, "the launcher")
    seen = [(tmp_path / f"env_{i}").read_text().split("\n") for i in range(3)]
    coordinators = {s[0] for s in seen}
    assert len(coordinators) == 1 and coordinators.pop().startswith("localhost:")
    assert [s[1:3] for s in seen] == [["3", str(i)] for i in range(3)]
    for s in seen:  # the device count replaced, other flags kept
        assert s[3].split() == ["--xla_cpu_use_thunk_runtime=true",
                                "--xla_force_host_platform_device_count=2"]


@pytest.mark.slow
def test_launcher_stops_the_rest_when_one_fails(tmp_path):
    proc = _launch(tmp_path, "one fails", "--processes", "2")
    assert proc.returncode == 3, proc.stderr
    assert "process 1 of 2 exited with code 3" in proc.stderr
    assert "stopping the other 1 running process(es)" in proc.stderr
    assert _gone(tmp_path / "pid_0")


# Process FIRST exits with code 3; the others wait until it is gone (its lock on a file
# is released when it exits, as a peer's connection closes) and then fail with code 1,
# as jax.distributed workers do when a peer dies.
DIES_FIRST = r'''
import fcntl, os, sys, time
folder, first = sys.argv[1], int(sys.argv[2])
lock = open(f"{folder}/lock", "a")
if int(os.environ["FUNCNN_PROCESS_ID"]) == first:
    fcntl.flock(lock, fcntl.LOCK_EX)
    open(f"{folder}/ready", "w").close()
    time.sleep(0.3)
    os._exit(3)
while not os.path.exists(f"{folder}/ready"):
    time.sleep(0.005)
fcntl.flock(lock, fcntl.LOCK_SH)  # returns once process FIRST has exited
time.sleep(0.3)  # noticing a dead peer takes a moment
os._exit(1)
'''


@pytest.mark.slow
@pytest.mark.parametrize("first", [2, 1, 0])
def test_launcher_blames_the_process_that_failed_first(tmp_path, capfd, first):
    """Process FIRST fails, the others fail after it because it did: the launcher names
    FIRST and returns its code, whatever its index. poll=5: all exits happen between two
    looks at the clock, so the order can only come from when each process exited."""
    script = tmp_path / "worker.py"
    script.write_text(DIES_FIRST)
    code = launch.launch([sys.executable, str(script), str(tmp_path), str(first)], 3, poll=5.0)
    err = capfd.readouterr().err
    assert code == 3, err
    assert f"process {first} of 3 exited with code 3, the first to fail" in err
    assert err.count("funcnn.launch:") == 1, err


@pytest.mark.slow
def test_launcher_times_out(tmp_path):
    proc = _launch(tmp_path, "sleep", "--processes", "2", "--timeout", "1")
    assert proc.returncode == launch.TIMED_OUT, proc.stderr
    assert "timed out after 1 s with process(es) [0, 1] still running" in proc.stderr
    assert _gone(tmp_path / "pid_0") and _gone(tmp_path / "pid_1")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_worker_outlives_the_launcher(tmp_path, sig):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "funcnn.launch", "--processes", "2", "--", sys.executable,
         str(script), str(tmp_path), "sleep"], env=_env(), cwd=ROOT, stderr=subprocess.PIPE)
    pid_files = [tmp_path / f"pid_{i}" for i in range(2)]
    try:
        assert _wait_for(lambda: all(f.exists() and f.read_text() for f in pid_files)), \
            "the workers did not start"
        launcher.send_signal(sig)
        launcher.wait(timeout=30)
        assert _wait_for(lambda: all(_gone(f) for f in pid_files)), \
            f"a worker outlived a launcher stopped by {sig.name}"
    finally:
        launcher.kill()
        launcher.communicate(timeout=30)
        for f in pid_files:  # never leave a sleeping worker behind, even when failing
            if f.exists() and f.read_text() and not _gone(f):
                os.kill(int(f.read_text()), signal.SIGKILL)


def _wait_for(condition, seconds: float = 30.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_launcher_refuses_bad_arguments():
    with pytest.raises(ValueError, match="no command to launch"):
        launch.launch([], 2)
    with pytest.raises(ValueError, match="processes must be a positive integer; got 0"):
        launch.launch(["true"], 0)
    with pytest.raises(ValueError, match="devices_per_process must be a positive integer"):
        launch.launch(["true"], 1, devices_per_process=0)
    for port in (0, -1, 65536, 10**9):
        with pytest.raises(ValueError, match=rf"port must be .* \[1, 65535\]; got {port}"):
            launch.launch(["true"], 1, port=port)
    with pytest.raises(ValueError, match="timeout must be positive seconds; got nan"):
        launch.launch(["true"], 1, timeout=float("nan"))
    with pytest.raises(ValueError, match="command not found: 'no-such-program-here'"):
        launch.launch(["no-such-program-here"], 1)
    assert launch.main(["--processes", "1", "--", sys.executable, "-c", "pass"]) == 0
    assert launch.main(["--processes", "1", "--", sys.executable, "-c", "exit(5)"]) == 5


# ---------------------------------------------------------------------------- in process


def test_initialize_alone_does_nothing(monkeypatch):
    for name in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize() is False
    assert parallel.initialize("localhost:1234", 1, 0) is False
    assert parallel.is_main_process()


def test_initialize_refuses_incomplete_settings(monkeypatch):
    monkeypatch.setenv(parallel.ENV_COORDINATOR, "localhost:1234")
    monkeypatch.delenv(parallel.ENV_NUM_PROCESSES, raising=False)
    monkeypatch.delenv(parallel.ENV_PROCESS_ID, raising=False)
    with pytest.raises(ValueError, match=r"\['num_processes', 'process_id'\] missing"):
        parallel.initialize()
    with pytest.raises(ValueError, match=r"process_id must be an integer in \[0, 2\); got 2"):
        parallel.initialize(num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="coordinator_address must be 'host:port'"):
        parallel.initialize("localhost", 2, 0)
    monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="FUNCNN_NUM_PROCESSES='two' is not an integer"):
        parallel.initialize()


def test_is_main_process_reads_the_launcher(monkeypatch):
    monkeypatch.setenv(parallel.ENV_PROCESS_ID, "1")
    assert not parallel.is_main_process()
    monkeypatch.setenv(parallel.ENV_PROCESS_ID, "0")
    assert parallel.is_main_process()


def test_mesh_on_one_device():
    mesh = parallel.data_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == len(jax.devices())
    assert parallel.data_mesh(mesh) is mesh
    assert tuple(parallel.batch_sharding(mesh).spec) == ("data",)
    assert parallel.replicated(mesh).is_fully_replicated
    with pytest.raises(ValueError, match="lists a device twice"):
        parallel.data_mesh([jax.devices()[0]] * 2)
    with pytest.raises(TypeError, match="devices must be None, a non-empty sequence"):
        parallel.data_mesh([])
    x = np.arange(12.0).reshape(4, 3)
    placed = parallel.replicate({"x": x}, mesh)["x"]
    assert placed.sharding.is_fully_replicated and np.allclose(np.asarray(placed), x)


@pytest.mark.slow
def test_imports_without_jax():
    code = ("import sys, funcnn.parallel, funcnn.launch; "
            "assert 'jax' not in sys.modules, 'jax was imported'")
    _check_ok(_run([sys.executable, "-c", code], "import without jax", timeout=60),
              "import without jax")
