"""The web demo's server (`sam-jax demo`): an interactive web page in the style of the official SAM demo.

The server (standard library only) computes the image embedding with sam-jax once per image; the
browser runs the exported prompt decoder (`decoder.onnx`, from `sam_jax.export.onnx.export_onnx`) with
onnxruntime-web for every mouse move and click, so a prompt costs no round trip.

Routes (nothing else is served):

    GET  /, /index.html, /app.js, /style.css   the page (sam_jax/demo/web/)
    GET  /ort/<ort*.mjs | *.wasm>                onnxruntime-web's dist files (node_modules or the cache: assets.py)
    GET  /decoder.onnx                           the decoder exported at start (return_single_mask=True)
    GET  /api/info                               JSON: image_size, embedding shape
    POST /api/embedding                          body: the image file's bytes

The embedding response body is the float32 little-endian embedding, shape (1, C, h, w), and its
`X-SAM-Embedding` header is JSON: shape, original_size [H, W], input_size [h, w] (the image resized
so that its longest side is image_size), image_size and scale = image_size / max(H, W). A path
with `..`, a backslash, an empty segment or a NUL is refused with 403; any other unknown path is
404; an undecodable image is 400 with a JSON {"error": ...} message.

Bounds. An upload is at most MAX_UPLOAD_BYTES (64 MiB) and MAX_IMAGE_PIXELS (50 megapixels,
refused from its header before decoding); at most MAX_UPLOADS_IN_FLIGHT bodies are read at once
(later ones wait, then get 503), and images are decoded and embedded one at a time, under the
model's lock, so memory stays at about one decoded image whatever the browsers send. A
Content-Length that is not a decimal number is 400 (none: 411). A request whose Host header names
another site is refused with 403 (DNS rebinding: a page of evil.example whose name resolves to
127.0.0.1 would otherwise reach this server): only IP addresses, `localhost` and the `--host`
name are accepted, with the server's port. Errors of the server itself are a 500 that says no
more; the details go to its log.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import sys
import tempfile
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from ..export.onnx import export_onnx
from ..predictor import SamPredictor
from ..io.images import read_image
from ..runtime.progress import status
from .assets import WEB_DIR, find_dist
PAGE_FILES = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
ORT_NAME = re.compile(r"^(ort[A-Za-z0-9_.-]*\.mjs|[A-Za-z0-9_.-]+\.wasm)$")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
}
MAX_UPLOAD_BYTES = 64 << 20
MAX_IMAGE_PIXELS = 50_000_000  # a 48-megapixel phone photo fits; decoded, about 150 MB of RGB
MAX_UPLOADS_IN_FLIGHT = 2
UPLOAD_WAIT_SECONDS = 60
DIGITS = re.compile(r"^[0-9]{1,12}$")  # str.isdigit() also accepts '²', which int() refuses


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_web_assets() -> Path:
    """The folder of onnxruntime-web's files; FileNotFoundError saying how to get them otherwise."""
    dist = find_dist()
    if dist is None:
        raise FileNotFoundError(
            "the web demo's onnxruntime-web is not installed: `sam-jax demo` installs it on its first start "
            f"(the network is needed once), or run `npm ci --prefix {WEB_DIR}`"
        )
    return dist


class DemoApp:
    """The model side: one SamPredictor, its encoder compiled once at start, used under a lock."""

    def __init__(self, model, decoder_path: Path) -> None:
        self.predictor = SamPredictor(model)
        self.image_size = model.config.image_size
        self.decoder_path = decoder_path
        self.lock = threading.Lock()
        # Every image is padded to image_size x image_size: this is the only encoder compilation.
        features = self.predictor.embed_images([np.zeros((self.image_size, self.image_size, 3), np.uint8)]).features
        self.embedding_shape = tuple(int(d) for d in features.shape)

    def embed(self, data: bytes) -> tuple[dict, bytes]:
        """The embedding of an image file's bytes; decoded under the lock, so that only one
        decoded image is alive at a time."""
        with self.lock:
            image = read_image(data, max_pixels=MAX_IMAGE_PIXELS)
            emb = self.predictor.embed_images([image])
            features = np.asarray(emb.features, dtype="<f4")
            del image
        H, W = emb.original_sizes[0]
        meta = {
            "shape": list(features.shape),
            "dtype": "float32",
            "original_size": [int(H), int(W)],
            "input_size": [int(s) for s in emb.input_sizes[0]],
            "image_size": self.image_size,
            "scale": self.image_size / max(H, W),
        }
        return meta, np.ascontiguousarray(features).tobytes()

    def info(self) -> dict:
        return {"image_size": self.image_size, "embedding_shape": list(self.embedding_shape), "decoder": "decoder.onnx"}


class Handler(BaseHTTPRequestHandler):
    server_version = "sam-jax-demo"
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a stalled client may hold a connection
    server: DemoServer

    # ------------------------------------------------------------------ routing
    def _route(self) -> Path | str:
        """The file to serve for a GET, or the name of an API route."""
        raw = self.path.split("?", 1)[0].split("#", 1)[0]
        path = unquote(raw)
        if not path.startswith("/"):
            raise HttpError(HTTPStatus.NOT_FOUND, "not found")
        if "\\" in path or "\x00" in path or "//" in path or ":" in path or any(s in (".", "..") for s in path.split("/")):
            raise HttpError(HTTPStatus.FORBIDDEN, "forbidden path")
        if path in PAGE_FILES:
            return WEB_DIR / PAGE_FILES[path]
        if path == "/decoder.onnx":
            return self.server.app.decoder_path
        if path.startswith("/api/"):
            return path
        if path.startswith("/ort/"):
            name = path[len("/ort/"):]
            if not ORT_NAME.match(name):
                raise HttpError(HTTPStatus.NOT_FOUND, "not found")
            dist = self.server.ort_dist
            file = (dist / name).resolve()
            if file.parent != dist.resolve() or not file.is_file():
                raise HttpError(HTTPStatus.NOT_FOUND, "not found")
            return file
        raise HttpError(HTTPStatus.NOT_FOUND, "not found")

    def _check_host(self) -> None:
        """403 unless the Host header names this server: an IP address, localhost or the --host
        name, with its port (a DNS-rebound name is none of these)."""
        host = self.headers.get("Host", "")
        if host.startswith("["):  # [IPv6]:port
            name, _, rest = host[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else rest
        else:
            name, _, port = host.partition(":")
        if (port or "80") != str(self.server.server_address[1]) or not self.server.host_allowed(name.lower()):
            raise HttpError(HTTPStatus.FORBIDDEN, f"forbidden host {host!r:.80}: use {self.server.url}")

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_POST(self) -> None:
        uploads = self.server.uploads
        acquired = False
        try:
            self._check_host()
            target = self._route()
            if target != "/api/embedding":
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED if isinstance(target, Path) or target == "/api/info"
                                else HTTPStatus.NOT_FOUND, "use POST only for /api/embedding")
            length = self._content_length()
            if not (acquired := uploads.acquire(timeout=UPLOAD_WAIT_SECONDS)):
                raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "busy with other uploads: try again")
            data = self._read_body(length)
            try:
                # Logged when it starts and ends: the first request compiles, and can take a minute on a CPU.
                with status(f"embedding an image of {len(data)} bytes for {self.client_address[0]}", not self.server.verbose):
                    meta, body = self.server.app.embed(data)
            except ValueError as e:  # undecodable, too large, or an image the predictor refuses (with its reason)
                raise HttpError(HTTPStatus.BAD_REQUEST, str(e)) from None
            finally:
                del data
            self._send(HTTPStatus.OK, body, "application/octet-stream", {"X-SAM-Embedding": json.dumps(meta)})
        except HttpError as e:
            self.close_connection = True  # the request body may be unread
            self._send_error(e)
        except Exception:  # a model failure: log it, say no more to the client, keep serving
            self.close_connection = True
            traceback.print_exc(file=sys.stderr)
            self._send_error(HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the server's log)"))
        finally:
            if acquired:
                uploads.release()

    def _handle(self, head: bool) -> None:
        try:
            self._check_host()
            target = self._route()
            if target == "/api/info":
                self._send(HTTPStatus.OK, json.dumps(self.server.app.info()).encode(), "application/json", head=head)
            elif isinstance(target, str):
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED if target == "/api/embedding" else HTTPStatus.NOT_FOUND,
                                "POST the image bytes to /api/embedding" if target == "/api/embedding" else "not found")
            else:
                self._send_file(target, head)
        except HttpError as e:
            self._send_error(e, head)

    # ------------------------------------------------------------------ I/O
    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send the image with a Content-Length, not chunked")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if len(values) > 1 or not DIGITS.match(values[0]):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"malformed Content-Length {', '.join(values)!r:.40}")
        n = int(values[0])
        if n > MAX_UPLOAD_BYTES:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"image larger than {MAX_UPLOAD_BYTES >> 20} MiB")
        return n

    def _read_body(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"the body ended after {len(data)} of {n} bytes")
        return data

    def _send_file(self, file: Path, head: bool) -> None:
        if not file.is_file():
            raise HttpError(HTTPStatus.NOT_FOUND, "not found")
        ctype = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(file.stat().st_size))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            with open(file, "rb") as f:
                shutil.copyfileobj(f, self.wfile)

    def _send(self, status, body: bytes, ctype: str, headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_error(self, e: HttpError, head: bool = False) -> None:
        self._send(e.status, json.dumps({"error": str(e)}).encode(), "application/json", head=head)

    def log_message(self, format: str, *args) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the listen backlog: a page load opens a burst of connections

    def __init__(self, address, app: DemoApp, ort_dist: Path, workdir: tempfile.TemporaryDirectory | None,
                 verbose: bool) -> None:
        super().__init__(address, Handler)
        self.app, self.ort_dist, self._workdir, self.verbose = app, ort_dist, workdir, verbose
        self.uploads = threading.BoundedSemaphore(MAX_UPLOADS_IN_FLIGHT)
        self.bound_name = str(address[0]).strip("[]").lower()

    def host_allowed(self, name: str) -> bool:
        """IP addresses cannot be rebound; of names, only localhost and the one the server was bound to."""
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return bool(name) and name in ("localhost", self.bound_name)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"

    def server_close(self) -> None:
        super().server_close()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def make_server(model, host: str = "127.0.0.1", port: int = 8000, *, verbose: bool = True) -> DemoServer:
    """Exports the decoder, compiles the encoder, and binds (port 0: a free port). Call
    `serve_forever()` on the result; `server_close()` also deletes the exported decoder."""
    if model.config.decoder == "hq":  # its graph also takes interm_embeddings, which the page never had
        raise ValueError("the web demo runs SAM's decoder graph; an HQ-SAM model's also needs its encoder's "
                         "interm_embeddings (export both with sam-jax export-onnx)")
    ort_dist = check_web_assets()
    workdir = tempfile.TemporaryDirectory(prefix="sam-jax-demo-")
    try:
        decoder = export_onnx(model, Path(workdir.name) / "decoder.onnx", return_single_mask=True)
        app = DemoApp(model, Path(decoder))
        return DemoServer((host, port), app, ort_dist, workdir, verbose)
    except BaseException:
        workdir.cleanup()
        raise
