"""`sam-jax demo`: load the checkpoint once, export the decoder, serve the page until Ctrl-C. The
first start after a plain `pip install` also installs the page's onnxruntime-web (demo/assets.py)."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys

from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_checkpoint_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    common.add_runtime_arguments(p)
    common.add_quiet_argument(p)
    common.add_numerics_arguments(p)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("onnx") is None:
        hint = common.deferred(".export.onnx").ONNX_HINT
        raise ValueError(f"onnx (to export the decoder) is not installed: {hint}")
    assets, server_module = common.deferred(".demo.assets"), common.deferred(".demo.server")
    if assets.find_dist() is None:  # a plain pip install: fetch the browser runtime once, before loading a model
        assets.install(args.quiet)
    common.setup_runtime(args)
    model = common.load_model(args)
    with common.deferred(".runtime.progress").status("exporting the decoder, compiling the image encoder", args.quiet):
        server = server_module.make_server(model, args.host, args.port, verbose=not args.quiet)
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
