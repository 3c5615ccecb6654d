"""Joining a multi-process run when something is wrong: an address that is not HOST:PORT or does
not resolve, a busy port, a missing peer, a missing coordinator, processes that disagree on the
count. JAX's own join crashes (SIGSEGV), hangs or aborts with a C++ stack after five minutes for
these; here each process ends within the join timeout with one line naming the problem. The
commands run as real `sam-jax` processes (the join happens before anything else is read)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from tests.reference.multiprocess import free_port

SECONDS = 3


def _sam_jax(*flags: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    argv = [sys.executable, "-m", "sam_jax.cli", "amg", "--checkpoint", "nowhere", "--input", "nowhere", "--output", "out",
            "--join-timeout", str(SECONDS), *flags]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_line_failure(proc: subprocess.Popen, started: float) -> str:
    _, err = proc.communicate(timeout=120)
    # The status lines ("sam-jax: waiting for ...") say what is awaited; the failure is one line.
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("sam-jax: ")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert time.perf_counter() - started < SECONDS + 60  # bounded by the join timeout (and start-up), not minutes
    return lines[0]


def test_a_bad_address_is_one_line():
    expected = {"notahost:abc": "is not HOST:PORT", "127.0.0.1:70000": "is not HOST:PORT",
                "host.invalid:1234": "cannot resolve the host 'host.invalid'"}
    t0 = time.perf_counter()
    procs = {a: _sam_jax("--coordinator-address", a, "--num-processes", "2", "--process-id", "1") for a in expected}
    for address, proc in procs.items():  # all at once: each start-up imports JAX
        assert expected[address] in _one_line_failure(proc, t0)


def test_processes_that_do_not_meet_are_named():
    busy = socket.create_server(("127.0.0.1", 0))
    port, absent = busy.getsockname()[1], free_port()
    t0 = time.perf_counter()
    procs = {
        "busy port": _sam_jax("--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "0"),
        "no peer": _sam_jax("--coordinator-address", f"127.0.0.1:{absent}", "--num-processes", "3", "--process-id", "0"),
        "no coordinator": _sam_jax("--coordinator-address", f"127.0.0.1:{free_port()}", "--num-processes", "2",
                                   "--process-id", "1"),
    }
    lines = {name: _one_line_failure(p, t0) for name, p in procs.items()}
    busy.close()
    assert f"process 0 cannot listen on port {port}" in lines["busy port"] and "choose a free port" in lines["busy port"]
    assert f"processes 1, 2 of 3 did not join the run at 127.0.0.1:{absent} within {SECONDS} s" in lines["no peer"]
    assert "nothing answered at" in lines["no coordinator"] and "start process 0" in lines["no coordinator"]


def test_processes_that_disagree_on_the_count_stop_together():
    address = f"127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    first = _sam_jax("--coordinator-address", address, "--num-processes", "2", "--process-id", "0")
    second = _sam_jax("--coordinator-address", address, "--num-processes", "3", "--process-id", "1")
    assert "it says the run has 3 processes, process 0 says 2" in _one_line_failure(second, t0)
    assert "process 1 of 2 did not join" in _one_line_failure(first, t0)
