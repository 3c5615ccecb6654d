"""`sam-jax demo`: load the checkpoint once, export the decoder, serve the page until Ctrl-C."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys

from ..demo.server import check_web_assets, make_server
from ..export.onnx import ONNX_HINT
from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    common.add_runtime_arguments(p)
    common.add_numerics_arguments(p)


def run(args: argparse.Namespace) -> int:
    check_web_assets()  # before loading a model: fail fast with the npm command
    if importlib.util.find_spec("onnx") is None:
        raise ValueError(f"onnx (to export the decoder) is not installed: {ONNX_HINT}")
    common.setup_runtime(args)
    print(f"loading {args.checkpoint} ...", file=sys.stderr)
    server = make_server(common.load_model(args), args.host, args.port)
    print(f"sam-jax demo: open {server.url} (Ctrl-C stops)", file=sys.stderr)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a plain `kill` also removes the exported decoder
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
