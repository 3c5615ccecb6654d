"""Where a profiled program's time went: a summary of a `jax.profiler.trace` perfetto trace."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def trace_summary(trace_dir: str) -> tuple[dict[str, float], str]:
    """Total microseconds per operation name in a perfetto trace: the device's events (GPU
    streams, or a TPU's "XLA Ops" line), or on a CPU the XLA threads' events."""
    [path] = Path(trace_dir).rglob("perfetto_trace.json.gz")
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    meta = lambda kind: {(e["pid"], e.get("tid")) if kind == "thread_name" else e["pid"]: e["args"]["name"]
                         for e in events if e.get("ph") == "M" and e.get("name") == kind}
    processes, threads = meta("process_name"), meta("thread_name")
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    if devices:
        xla_ops = {key for key, name in threads.items() if key[0] in devices and name == "XLA Ops"}
        keep = lambda e: (e["pid"], e["tid"]) in xla_ops if xla_ops else e["pid"] in devices
        where = "device: XLA Ops" if xla_ops else "device"
    else:
        keep = lambda e: (threads.get((e["pid"], e["tid"]), "").startswith("tf_XLA")  # not Python frames ($...)
                          and not e["name"].startswith("$") and "::" not in e["name"])  # nor runtime scopes around the ops
        where = "host XLA threads"
    ops: dict[str, float] = {}
    for e in events:
        if e.get("ph") == "X" and keep(e):
            ops[e["name"]] = ops.get(e["name"], 0.0) + e.get("dur", 0.0)
    return ops, where
