"""Start a multi-process run on this machine: ``python -m funcnn.launch``.

::

    python -m funcnn.launch --processes 2 --devices-per-process 2 -- python train.py --epochs 5

starts the command ``--processes`` times. Process ``i`` gets ``$FUNCNN_PROCESS_ID=i``,
``$FUNCNN_NUM_PROCESSES`` and ``$FUNCNN_COORDINATOR=localhost:PORT`` (a free port,
or ``--port``), which :func:`funcnn.parallel.initialize` reads; with
``--devices-per-process D`` its ``XLA_FLAGS`` also ask for ``D`` CPU devices. The
processes share this terminal. When one of them fails, the launcher stops the others
and exits with the code of the process that failed first (1 when it was killed by a
signal): the others often fail only because it did, when they wait for it. After
``--timeout`` seconds it stops them all and exits with 124. It exits 0 when all did.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from funcnn.parallel import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID

__all__ = ["free_port", "launch", "main", "worker_env"]

_DEVICE_FLAG = "--xla_force_host_platform_device_count"
TIMED_OUT = 124  # as coreutils' timeout
_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


def free_port(host: str = "localhost") -> int:
    """A TCP port that was free a moment ago on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def worker_env(base: dict, process_id: int, processes: int, coordinator: str,
               devices_per_process: int | None) -> dict:
    """The environment of process ``process_id``: ``base`` plus the run's variables."""
    env = dict(base)
    env.update({ENV_COORDINATOR: coordinator, ENV_NUM_PROCESSES: str(processes),
                ENV_PROCESS_ID: str(process_id)})
    if devices_per_process is not None:
        flags = re.sub(rf"{_DEVICE_FLAG}=\S*", "", env.get("XLA_FLAGS", "")).split()
        env["XLA_FLAGS"] = " ".join([*flags, f"{_DEVICE_FLAG}={devices_per_process}"])
    return env


# Run before the command, in the child: Linux SIGKILLs it when the launcher dies (even by
# SIGKILL), a setting kept across exec; it exits at once if the launcher is gone already.
_DIE_WITH_LAUNCHER = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None).prctl(1, int(signal.SIGKILL)); "  # 1 = PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(1); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def _worker_command(command: Sequence[str]) -> list[str]:
    """``command``, on Linux behind the one-line guard above (no fork of this process,
    which may be running jax's threads)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-c", _DIE_WITH_LAUNCHER, str(os.getpid()), *command]


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # through launch's clean-up, which stops the workers


def _say(message: str) -> None:
    print(f"funcnn.launch: {message}", file=sys.stderr, flush=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to every running process group, SIGKILL to those alive after a grace period."""
    for sig, wait in ((signal.SIGTERM, _GRACE), (signal.SIGKILL, _GRACE)):
        live = [p for p in procs if p.poll() is None]
        for p in live:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        for p in live:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def _watch(procs: list[subprocess.Popen]) -> queue.SimpleQueue:
    """A queue that receives ``(index, exit code)`` of each process as it exits.

    One thread per process waits for it, so the exits arrive in the order they happen,
    however close together: a process that fails because another one died (a collective
    that waits for it) comes after the one that died.
    """
    exits: queue.SimpleQueue = queue.SimpleQueue()
    for i, p in enumerate(procs):
        threading.Thread(target=lambda i=i, p=p: exits.put((i, p.wait())), daemon=True,
                         name=f"funcnn.launch: wait for process {i}").start()
    return exits


def _how(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def launch(command: Sequence[str], processes: int, *, devices_per_process: int | None = None,
           port: int | None = None, timeout: float = 86_400.0, poll: float = 0.05) -> int:
    """Run ``command`` as ``processes`` local processes of one run; return the exit code.

    Each process runs in its own process group, so stopping it stops its children too;
    SIGTERM to the launcher stops them all, and on Linux they die with the launcher.
    The code is 0 when every process exits 0; else that of the process that failed
    first (in time, not by index; 1 when a signal killed it), or 124 after ``timeout``
    seconds. ``poll`` is how often, in seconds, the timeout is checked.
    """
    if not command:
        raise ValueError("no command to launch: put it after `--`, e.g. "
                         "python -m funcnn.launch --processes 2 -- python train.py")
    if type(processes) is not int or processes < 1:
        raise ValueError(f"processes must be a positive integer; got {processes!r}")
    if devices_per_process is not None and (type(devices_per_process) is not int
                                            or devices_per_process < 1):
        raise ValueError(f"devices_per_process must be a positive integer; "
                         f"got {devices_per_process!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive seconds; got {timeout!r}")
    if port is not None and (type(port) is not int or not 0 < port < 65536):
        raise ValueError(f"port must be an integer in [1, 65535]; got {port!r}")
    if shutil.which(command[0]) is None:
        raise ValueError(f"command not found: {command[0]!r}")
    coordinator = f"localhost:{free_port() if port is None else port}"
    procs: list[subprocess.Popen] = []
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        for i in range(processes):
            env = worker_env(os.environ, i, processes, coordinator, devices_per_process)
            procs.append(subprocess.Popen(_worker_command(command), env=env,
                                          start_new_session=True))
        exits = _watch(procs)
        deadline = time.monotonic() + timeout
        done: dict[int, int] = {}
        while len(done) < processes:
            try:
                i, code = exits.get(timeout=poll)
            except queue.Empty:
                if time.monotonic() <= deadline:
                    continue
                running = [j for j in range(processes) if j not in done]
                _say(f"timed out after {timeout:g} s with process(es) {running} still running; "
                     "stopping them")
                _stop(procs)
                return TIMED_OUT
            done[i] = code
            if code != 0:
                running = processes - len(done)
                _say(f"process {i} of {processes} {_how(code)}, the first to fail; stopping "
                     f"the other {running} running process(es)")
                _stop(procs)
                return code if code > 0 else 1
        return 0
    except KeyboardInterrupt:
        _say("interrupted; stopping every process")
        _stop(procs)
        return 130
    except BaseException:
        _stop(procs)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(
        prog="python -m funcnn.launch",
        description="Run COMMAND as several local processes of one jax.distributed run "
                    "(funcnn.parallel.initialize() reads the settings).",
        usage="%(prog)s --processes N [--devices-per-process D] [--port P] [--timeout S] "
              "-- COMMAND ...")
    p.add_argument("--processes", type=int, required=True, help="how many processes")
    p.add_argument("--devices-per-process", type=int, metavar="D",
                   help="CPU devices of each process (sets XLA_FLAGS)")
    p.add_argument("--port", type=int, help="the coordinator's port (default: a free one)")
    p.add_argument("--timeout", type=float, default=86_400.0,
                   help="stop everything after this many seconds (default 86400)")
    args = p.parse_args(argv)
    if not command:
        p.error("no command: put it after `--`, e.g. -- python train.py")
    try:
        return launch(command, args.processes, devices_per_process=args.devices_per_process,
                      port=args.port, timeout=args.timeout)
    except (ValueError, OSError) as err:
        _say(str(err))
        return 2


if __name__ == "__main__":
    sys.exit(main())
