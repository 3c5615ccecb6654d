"""Every process of a multi-process run meets at the coordinator's address before
`jax.distributed.initialize` is called. JAX's own join has no failure a program can catch: a busy
port crashes process 0, an address that resolves nowhere hangs, and a missing peer or coordinator
ends every process with a C++ abort after `initialization_timeout` (five minutes by default). So
process 0 first holds the coordinator's port itself (which proves it free) and waits there for the
other processes to say who they are; each other process knocks until process 0 answers. Only when
all have met, within the join timeout, does process 0 let go of the port and everyone join JAX's
runtime. Every failure is a one-line ValueError (the address) or ConnectionError (who is missing).

The exchange, one line of ASCII each way: a process sends `sam-jax-join <index> <count>`; process
0 answers `go` once all have come, or a one-line reason to stop."""

from __future__ import annotations

import socket
import time

from ..options import JOIN_TIMEOUT_SECONDS
from ..runtime.progress import say

GREETING = "sam-jax-join"


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" (an IPv6 host in brackets); ValueError in one line when it is
    not of that form or the host does not resolve."""
    host, sep, port = str(address).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator address {address!r:.80} is not HOST:PORT with a port in 1..65535")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"coordinator address {address}: cannot resolve the host {host!r:.60} "
                         f"({getattr(e, 'strerror', None) or e})") from None
    return host, int(port)


def meet(address: str, count: int, index: int, timeout: float = JOIN_TIMEOUT_SECONDS, quiet: bool = False) -> None:
    """Returns once all `count` processes have met at `address` (see the module docstring)."""
    _, port = parse_address(address)
    if not timeout > 0:
        raise ValueError(f"the join timeout must be a positive number of seconds, got {timeout}")
    deadline = time.monotonic() + timeout
    if index == 0:
        _host(address, port, count, deadline, timeout, quiet)
    else:
        _knock(address, count, index, deadline, timeout, quiet)


def _host(address: str, port: int, count: int, deadline: float, timeout: float, quiet: bool) -> None:
    try:
        family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
        server = socket.create_server(("", port), family=family, dualstack_ipv6=family == socket.AF_INET6)
    except OSError as e:
        raise ValueError(f"coordinator address {address}: process 0 cannot listen on port {port} ({e.strerror or e}); "
                         "another program holds it: choose a free port") from None
    peers: dict[int, socket.socket] = {}
    try:
        with server:
            say(f"waiting for {count - 1} other process{'es' if count > 2 else ''} to join at {address} "
                f"(up to {timeout:.0f} s)", quiet)
            while len(peers) < count - 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [i for i in range(1, count) if i not in peers]
                    _tell(peers.values(), f"stop: process{'es' if len(missing) > 1 else ''} "
                                          f"{', '.join(map(str, missing))} did not join")
                    raise ConnectionError(
                        f"process{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {count} did not join "
                        f"the run at {address} within {timeout:.0f} s: start the same command in every process "
                        f"(--process-id 0..{count - 1}), or raise --join-timeout")
                server.settimeout(left)
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                _admit(conn, peers, count, deadline)
            _tell(peers.values(), "go")
    finally:
        for conn in peers.values():
            conn.close()


def _admit(conn: socket.socket, peers: dict[int, socket.socket], count: int, deadline: float) -> None:
    """Keeps `conn` as the process it says it is; answers and drops anything else."""
    conn.settimeout(max(0.1, min(10.0, deadline - time.monotonic())))
    try:
        words = _read_line(conn).split()
    except OSError:
        conn.close()
        return
    if len(words) != 3 or words[0] != GREETING or not (words[1].isdigit() and words[2].isdigit()):
        conn.close()  # not a sam-jax process: a port scanner, a stray client
        return
    index, theirs = int(words[1]), int(words[2])
    problem = (f"stop: it says the run has {theirs} processes, process 0 says {count}" if theirs != count
               else f"stop: process index {index} is outside 1..{count - 1}" if not 0 < index < count
               else f"stop: another process already joined as {index}" if index in peers else None)
    if problem:
        _tell([conn], problem)
        conn.close()
        return
    peers[index] = conn


def _knock(address: str, count: int, index: int, deadline: float, timeout: float, quiet: bool) -> None:
    host, port = parse_address(address)
    said = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConnectionError(f"nothing answered at {address} within {timeout:.0f} s: start process 0 with the same "
                                  "--coordinator-address (it listens there), or raise --join-timeout")
        try:
            conn = socket.create_connection((host, port), timeout=min(5.0, left))
        except OSError:
            if not said:
                say(f"process {index}: waiting for process 0 at {address} (up to {timeout:.0f} s)", quiet)
                said = True
            time.sleep(min(0.5, max(0.0, left)))
            continue
        with conn:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                conn.sendall(f"{GREETING} {index} {count}\n".encode())
                answer = _read_line(conn)
            except OSError:
                answer = ""
        if answer == "go":
            return
        if answer.startswith("stop: "):
            raise ConnectionError(f"process 0 at {address} stopped the run: {answer[6:]}")
        raise ConnectionError(f"{address} did not answer as process 0 of a sam-jax run ({answer[:60]!r}): "
                              "is it the right address, and is process 0 still waiting?")


def _tell(conns, message: str) -> None:
    for conn in conns:
        try:
            conn.sendall(f"{message}\n".encode())
        except OSError:
            pass


def _read_line(conn: socket.socket, limit: int = 256) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode("ascii", "replace").strip()
