"""Weights by name against a local HTTP server on 127.0.0.1 serving a small official-structure
checkpoint (the test_tiny case): first use (download, verify, convert, cache), cached use with the
server gone, an interrupted download resumed with an HTTP Range request, a server ignoring ranges,
wrong digests (the bad file deleted), the server down, the CLI, and Hugging Face ids through
huggingface_hub against a local HF_ENDPOINT."""

from __future__ import annotations

import filecmp
import hashlib
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from flax import nnx

import sam_jax
from sam_jax.convert import weights
from sam_jax.build_sam import build_sam_from_config
from sam_jax.convert import fetch
from sam_jax.cli import build_parser
from sam_jax.cli import main as cli
from sam_jax.cli.common import model_spec
from sam_jax.convert import read_state_dict
from sam_jax.runtime.paths import cache_dir
from sam_jax.convert.hf import official_to_hf
from sam_jax.convert.download import DownloadError, download

HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FileServer(ThreadingHTTPServer):
    """Serves `files` ({url path: bytes}) with HTTP Range support, and answers the Hugging Face
    resolve route (HEAD and GET /<repo>/resolve/<revision>/<file>) like the Hub does for a plain
    file. `cut_after`: the next GET sends only that many bytes, then closes the connection.
    `ignore_range`: answer every GET with the whole file. `requests`: (method, path, Range header)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut_after: int | None = None
        self.ignore_range = False
        self.delay = 0.0  # seconds before each response
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FileServer

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        rng = self.headers.get("Range")
        self.server.requests.append((self.command, self.path, rng))
        time.sleep(self.server.delay)
        path = re.sub(r"/resolve/[^/]+/", "/resolve/main/", self.path)
        body = self.server.files.get(path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not self.server.ignore_range:
            start = int(m[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("X-Repo-Commit", HF_COMMIT)
        self.end_headers()
        if head:
            return
        data = body[start:]
        if self.server.cut_after is not None:
            data, self.server.cut_after = data[: self.server.cut_after], None
            self.wfile.write(data)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_params(model, reference) -> None:
    ours = dict(nnx.to_flat_state(nnx.state(model)))
    ref = dict(nnx.to_flat_state(nnx.state(reference)))
    assert ours.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(np.asarray(ours[k][...]), np.asarray(ref[k][...]), err_msg=str(k))


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.stop()


@pytest.fixture
def entry(tiny, server, tmp_path, monkeypatch):
    """The tiny official-structure checkpoint, published under an official-style name (its MD5
    prefix as suffix) on the local server, as the model name "test_tiny"."""
    body = tiny.pth.read_bytes()
    w = weights.OfficialWeights("test_tiny", f"sam_test_tiny_{hashlib.md5(body).hexdigest()[:6]}.pth",
                                hashlib.sha256(body).hexdigest(), len(body))
    server.files[f"/{w.file}"] = body
    monkeypatch.setitem(weights.OFFICIAL, w.file, w)
    monkeypatch.setitem(weights.ALIASES, "test_tiny", w.file)
    monkeypatch.setenv("SAM_JAX_WEIGHTS_URL", server.url + "/")
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "cache"))
    return w


def _cache_files(tmp_path) -> list[str]:
    """The cache's files, but the (empty, permanent) lock files."""
    root = tmp_path / "cache"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    return [f for f in files if not f.endswith(".lock")]


def test_published_table():
    for file, w in weights.OFFICIAL.items():
        # The official names end in the first six hex digits of the file's MD5; downloads check both digests.
        assert re.fullmatch(rf"sam_{w.model_type}_[0-9a-f]{{6}}\.pth", file), file
        assert re.fullmatch(r"[0-9a-f]{64}", w.sha256), file
        assert sam_jax.get_config(w.model_type).encoder_depth > 0
        assert w.size > 4 * 90e6, file  # the download cap: at least the float32 bytes of 90 M parameters
    assert len({w.sha256 for w in weights.OFFICIAL.values()}) == 3
    for name in weights.known_names():
        if name in weights.BUNDLED:
            continue
        src = weights.source(name)
        assert src.model_type in ("vit_b", "vit_l", "vit_h") or src.family is not None, name
        assert sam_jax.get_config(src.model_type)  # every name has its shipped config
    assert weights.source("default") == weights.source("vit_h") == weights.source("sam_vit_h_4b8939.pth")
    assert weights.official_url(weights.OFFICIAL["sam_vit_b_01ec64.pth"]) == \
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    with pytest.raises(FileNotFoundError) as e:
        sam_jax.load("vit_x")
    assert "vit_x" in str(e.value) and "vit_b" in str(e.value) and "facebook/sam-vit-base" in str(e.value)
    assert "\n" not in str(e.value)


def test_family_table():
    """Every family name has one source (a URL, a Hugging Face file or a package's asset), a
    SHA-256, where it was published and a license; EdgeSAM (non-commercial) is not offered."""
    assert set(weights.FAMILY) == {"vit_t", "sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny", "medsam_vit_b",
                                   "slimsam_50", "slimsam_77", "lite_medsam"}
    for name, w in weights.FAMILY.items():
        assert sum(x is not None for x in (w.url, w.repo_id, w.package)) == 1, name
        assert w.url is None or w.size, name  # every file sam-jax downloads itself has a cap
        assert re.fullmatch(r"[0-9a-f]{64}", w.sha256) and w.published and w.license.startswith("Apache-2.0"), name
        assert sam_jax.get_config(w.model_type) == sam_jax.get_config(name)
    assert len({w.sha256 for w in weights.FAMILY.values()}) == len(weights.FAMILY)
    for alias, name in [("mobile_sam", "vit_t"), ("sam_hq_vit_h.pth", "sam_hq_vit_h"), ("wanglab/medsam-vit-base", "medsam_vit_b"),
                        ("nielsr/slimsam-77-uniform", "slimsam_77")]:
        assert weights.source(alias) == weights.source(name)
    assert not any("edge" in n.lower() for n in weights.known_names())


def test_cache_layout(monkeypatch, tmp_path):
    monkeypatch.delenv("SAM_JAX_CACHE", raising=False)
    monkeypatch.delenv("SAM_JAX_XLA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("checkpoints") == tmp_path / "xdg" / "sam-jax" / "checkpoints"
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "root"))
    assert cache_dir("xla") == tmp_path / "root" / "xla"
    args = build_parser().parse_args(["amg", "--checkpoint", "x", "--input", "i", "--output", "o"])
    assert args.cache_dir == str(tmp_path / "root" / "xla")  # one root for the XLA cache too


def test_first_use_then_cached(tiny, entry, server, tmp_path, capsys):
    model = sam_jax.load("test_tiny")
    _assert_same_params(model, tiny.model)
    assert [r[0] for r in server.requests] == ["GET"] and server.requests[0][2] is None
    err = capsys.readouterr().err
    assert f"downloading {entry.file}" in err and "converting" in err
    # Only the converted checkpoint stays: no .pth, no partial file (the empty lock file stays).
    files = _cache_files(tmp_path)
    assert f"checkpoints/{entry.file[:-4]}/config.json" in files
    assert not any(f.startswith("downloads/") for f in files), files
    assert (tmp_path / "cache" / "downloads" / f".{entry.file}.lock").stat().st_size == 0

    server.stop()  # offline from now on
    assert fetch(entry.file, quiet=True) == fetch("test_tiny", quiet=True)  # the official file name is a name too
    # The official registry's builders take the file name as the official notebooks pass it.
    _assert_same_params(build_sam_from_config("test_tiny", entry.file), tiny.model)
    assert "downloading" not in capsys.readouterr().err
    # An existing path wins over a name.
    (tmp_path / "test_tiny").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a sam-jax checkpoint"):
        sam_jax.load(tmp_path / "test_tiny")


def test_concurrent_fetches_download_once(entry, server, tmp_path, capsys):
    server.delay = 1.0  # the first fetch still holds the lock when the second asks
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch("test_tiny"))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join(120)
    assert len(results) == 2 and results[0] == results[1] and len(server.requests) == 1
    assert "waiting for another process fetching test_tiny" in capsys.readouterr().err


def test_interrupted_download_resumes(tiny, entry, server, tmp_path):
    size = len(server.files[f"/{entry.file}"])
    server.cut_after = size // 3
    with pytest.raises(DownloadError, match="interrupted.*run again to resume") as e:
        sam_jax.load("test_tiny")
    assert "\n" not in str(e.value)
    part = tmp_path / "cache" / "downloads" / f".{entry.file}.download"
    assert part.stat().st_size == size // 3
    assert not (tmp_path / "cache" / "downloads" / entry.file).exists()  # never under the final name
    assert not any(f.startswith("checkpoints/") for f in _cache_files(tmp_path))

    model = sam_jax.load("test_tiny")
    assert server.requests[-1] == ("GET", f"/{entry.file}", f"bytes={size // 3}-")
    _assert_same_params(model, tiny.model)
    assert not part.exists()


def test_server_ignoring_ranges_sends_everything_again(server, tmp_path):
    body = np.random.default_rng(0).bytes(3 << 20)
    server.files["/blob"] = body
    digests = {"sha256": hashlib.sha256(body).hexdigest()}
    server.cut_after = len(body) // 2
    with pytest.raises(DownloadError, match="interrupted"):
        download(f"{server.url}/blob", tmp_path / "blob", digests, quiet=True)
    server.ignore_range = True
    assert download(f"{server.url}/blob", tmp_path / "blob", digests, quiet=True).read_bytes() == body
    assert server.requests[-1][2] == f"bytes={len(body) // 2}-"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".blob.lock", "blob"]


@pytest.mark.parametrize("wrong", ["sha256", "md5"])
def test_wrong_digest_deletes_the_file(entry, server, tmp_path, monkeypatch, wrong):
    if wrong == "sha256":
        bad = entry._replace(sha256="0" * 64)
    else:  # a file whose name does not carry its MD5 prefix
        bad = entry._replace(file="sam_test_tiny_000000.pth")
        server.files[f"/{bad.file}"] = server.files[f"/{entry.file}"]
    monkeypatch.setitem(weights.OFFICIAL, bad.file, bad)
    monkeypatch.setitem(weights.ALIASES, "test_tiny", bad.file)
    with pytest.raises(DownloadError, match=f"{wrong.upper()} .* differs from the published .*deleted") as e:
        sam_jax.load("test_tiny")
    assert "\n" not in str(e.value)
    assert _cache_files(tmp_path) == []  # nothing left


def test_server_down(entry, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SAM_JAX_WEIGHTS_URL", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(DownloadError, match="cannot download .*offline") as e:
        sam_jax.load("test_tiny")
    assert "\n" not in str(e.value)
    assert _cache_files(tmp_path) == []
    # The CLI: one line, no traceback.
    assert cli(["convert", "--checkpoint", "test_tiny", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot download" in err and "Traceback" not in err


def test_cli_by_name(tiny, entry, server, tmp_path, monkeypatch, capsys):
    # `--checkpoint NAME --output DIR`: fetched into the cache, copied to DIR.
    out = tmp_path / "out"
    assert cli(["convert", "--checkpoint", "test_tiny", "--output", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # quiet
    cached = fetch("test_tiny")
    assert not filecmp.dircmp(out, cached).diff_files and sorted(os.listdir(out)) == sorted(os.listdir(cached))
    assert cli(["convert", "--checkpoint", "test_tiny", "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    # `--model-type vit_b` without --checkpoint: the official vit_b weights, cached (vit_b here
    # stands for the tiny file: only the name's resolution is under test).
    monkeypatch.setitem(weights.ALIASES, "vit_b", entry.file)
    assert cli(["convert", "--model-type", "vit_b"]) == 0
    assert f"cached {cached}" in capsys.readouterr().out
    assert len(server.requests) == 1  # the second and third commands used the cache
    # Every command that takes a checkpoint takes a name (or only --model-type) the same way.
    for command in ("amg", "embed", "export-onnx", "demo"):
        extra = {"amg": ["--input", "i", "--output", "o"], "embed": ["--image", "i", "--output", "o"],
                 "export-onnx": ["--output", "o"], "demo": []}[command]
        for flags in (["--checkpoint", "test_tiny"], ["--model-type", "vit_b"]):
            assert model_spec(build_parser().parse_args([command, *flags, *extra]), numerics=False).path() == cached
    assert cli(["export-onnx", "--checkpoint", "vit_q", "--output", str(tmp_path / "d.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nor a model name (" in err and " vit_b," in err


def test_hugging_face_id(tiny, server, tmp_path, monkeypatch):
    import huggingface_hub.constants
    from safetensors.numpy import save_file

    hf = official_to_hf(read_state_dict(tiny.pth))
    save_file({k: np.array(v, order="C") for k, v in hf.items()}, str(tmp_path / "model.safetensors"))
    server.files["/test/sam-tiny/resolve/main/model.safetensors"] = (tmp_path / "model.safetensors").read_bytes()
    monkeypatch.setitem(weights.HF_IDS, "test/sam-tiny", "test_tiny")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

    _assert_same_params(sam_jax.load("test/sam-tiny"), tiny.model)
    assert any(r[1].endswith("/resolve/main/model.safetensors") for r in server.requests)
    assert (tmp_path / "cache" / "checkpoints" / "test--sam-tiny" / "config.json").is_file()
    n = len(server.requests)
    server.stop()
    assert fetch("test/sam-tiny") == tmp_path / "cache" / "checkpoints" / "test--sam-tiny"  # from our cache
    assert len(server.requests) == n
    # Not cached and no network: one line. (huggingface_hub's offline mode; with the endpoint merely
    # down it retries five times, about 20 s, before the same error.)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setitem(weights.HF_IDS, "test/other", "test_tiny")
    with pytest.raises(DownloadError, match="cannot download test/other from the Hugging Face Hub") as e:
        sam_jax.load("test/other")
    assert "\n" not in str(e.value)


def test_family_url_entry(tiny, server, tmp_path, monkeypatch):
    """A family entry published at a URL: fetched through the mirror (SAM_JAX_WEIGHTS_URL holds
    files by name), verified, converted with the entry's config, the download removed; by its
    other names too."""
    body = tiny.pth.read_bytes()
    w = weights.FamilyWeights("test_tiny", "tiny_family.pt", hashlib.sha256(body).hexdigest(), len(body), "test", "Apache-2.0",
                              url="https://example.org/weights/tiny_family.pt")
    server.files["/tiny_family.pt"] = body
    monkeypatch.setitem(weights.FAMILY, "tiny_family", w)
    monkeypatch.setitem(weights.FAMILY_ALIASES, "tiny_family.pt", "tiny_family")
    monkeypatch.setenv("SAM_JAX_WEIGHTS_URL", server.url)
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "cache"))
    _assert_same_params(sam_jax.load("tiny_family.pt"), tiny.model)
    assert [r[1] for r in server.requests if r[0] == "GET"] == ["/tiny_family.pt"]
    files = _cache_files(tmp_path)
    assert "checkpoints/tiny_family/config.json" in files
    assert not any(f.startswith("downloads/") for f in files)  # converted, then removed
    # A changed file on the server: refused, deleted (it is sam-jax's own download), one line.
    monkeypatch.setitem(weights.FAMILY, "tiny_family", w._replace(sha256="0" * 64))
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(DownloadError, match="SHA256") as e:
        sam_jax.load("tiny_family")
    assert "\n" not in str(e.value) and not list((tmp_path / "cache2" / "downloads").glob("*.pt"))


def test_family_hub_entry(tiny, server, tmp_path, monkeypatch):
    """A family entry in a Hugging Face repository under another file name (MedSAM's repository
    holds pytorch_model.bin): fetched from HF_ENDPOINT, verified against the recorded digest, read
    with the entry's config; a file whose digest differs is refused in one line."""
    import huggingface_hub.constants

    hf = official_to_hf(read_state_dict(tiny.pth))
    torch.save({k: torch.from_numpy(np.array(v, order="C")) for k, v in hf.items()}, tmp_path / "pytorch_model.bin")
    body = (tmp_path / "pytorch_model.bin").read_bytes()
    server.files["/test/family-tiny/resolve/main/pytorch_model.bin"] = body
    w = weights.FamilyWeights("test_tiny", "pytorch_model.bin", hashlib.sha256(body).hexdigest(), None, "test", "Apache-2.0",
                              repo_id="test/family-tiny")
    monkeypatch.setitem(weights.FAMILY, "family_tiny", w)
    monkeypatch.setitem(weights.FAMILY_ALIASES, "test/family-tiny", "family_tiny")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    _assert_same_params(sam_jax.load("test/family-tiny"), tiny.model)
    assert any(r[1].endswith("/resolve/main/pytorch_model.bin") for r in server.requests)
    monkeypatch.setitem(weights.FAMILY, "family_tiny", w._replace(sha256="1" * 64))
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(DownloadError, match="differs from the published") as e:
        sam_jax.load("family_tiny")
    assert "\n" not in str(e.value)


def test_the_shipped_tiny_model_has_a_name(monkeypatch, tmp_path):
    """shapes_tiny: the model inside the package, by name, offline, nothing written to the cache."""
    monkeypatch.setenv("SAM_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SAM_JAX_WEIGHTS_URL", "http://127.0.0.1:9")
    assert fetch("shapes_tiny") == sam_jax.assets.SHAPES_TINY  # `import sam_jax` is enough for sam_jax.assets
    assert sam_jax.load("shapes_tiny").config == sam_jax.load(sam_jax.assets.SHAPES_TINY).config
    assert model_spec(build_parser().parse_args(["amg", "--checkpoint", "shapes_tiny", "--input", "i", "--output", "o"])).path() \
        == sam_jax.assets.SHAPES_TINY
    assert "shapes_tiny" in weights.known_names() and not (tmp_path / "cache").exists()
