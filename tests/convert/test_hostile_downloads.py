"""Servers that lie or stall, on 127.0.0.1: a mirror that streams without end or announces another
size, a trickle that keeps every read inside the socket timeout, partial answers that start
elsewhere than asked, a redirect loop. Each ends in one line, within seconds, without more bytes
on disk than the file has, and leaves a partial file only where resuming it is right."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from sam_jax.convert import download as dl
from sam_jax.convert.download import DownloadError, download

BODY = np.random.default_rng(0).bytes(1 << 20)
DIGESTS = {"sha256": hashlib.sha256(BODY).hexdigest()}


class HostileServer(ThreadingHTTPServer):
    """`mode` picks the lie: "endless" (no Content-Length, bytes until the client leaves),
    "announce" (a Content-Length twice the file's), "trickle" (one byte every 0.2 s),
    "range_from_zero" / "range_elsewhere" (206 answers to a Range request starting at byte 0 /
    16 bytes after where asked), "loop" (302 to itself), "honest"."""

    daemon_threads = True

    def __init__(self, mode: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/sam.pth"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        mode, rng = self.server.mode, self.headers.get("Range")
        try:
            if mode == "loop":
                self.send_response(302)
                self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif mode == "endless":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                while True:
                    self.wfile.write(b"\0" * 65536)
            elif mode == "trickle":
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                for i in range(len(BODY)):
                    self.wfile.write(BODY[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
            elif mode.startswith("range_") and rng:
                start = 0 if mode == "range_from_zero" else int(rng.split("=")[1].rstrip("-")) + 16
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
                self.send_header("Content-Length", str(len(BODY) - start))
                self.end_headers()
                self.wfile.write(BODY[start:])
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(2 * len(BODY) if mode == "announce" else len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def serve():
    servers = []

    def start(mode: str) -> HostileServer:
        servers.append(HostileServer(mode))
        return servers[-1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _fails(url: str, dest: Path, match: str, **kwargs) -> str:
    t0 = time.perf_counter()
    with pytest.raises(DownloadError, match=match) as e:
        download(url, dest, DIGESTS, quiet=True, **kwargs)
    assert time.perf_counter() - t0 < 20
    assert "\n" not in str(e.value)
    return str(e.value)


def test_endless_stream_is_cut_at_the_files_size(serve, tmp_path):
    _fails(serve("endless").url, tmp_path / "sam.pth", "sent more than the file's 1048576 bytes", size=len(BODY))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sam.pth.lock"]  # the partial file deleted


def test_endless_stream_of_unknown_size_is_capped(serve, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "MAX_UNKNOWN_BYTES", 3 << 20)
    _fails(serve("endless").url, tmp_path / "sam.pth", "sent more than the file's 3145728 bytes")
    assert not (tmp_path / ".sam.pth.download").exists()


def test_another_announced_size_is_refused_before_writing(serve, tmp_path):
    message = _fails(serve("announce").url, tmp_path / "sam.pth", "announces 2097152 bytes, the file has 1048576", size=len(BODY))
    assert "wrong mirror" in message
    assert not (tmp_path / ".sam.pth.download").exists()


def test_a_trickle_stops_and_can_resume(serve, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "STALL_SECONDS", 1.5)
    monkeypatch.setattr(dl, "MIN_BYTES_PER_SECOND", 1000)
    _fails(serve("trickle").url, tmp_path / "sam.pth", r"too slow \(.* kB/s over .* s\).*run again to resume", size=len(BODY))
    assert 0 < (tmp_path / ".sam.pth.download").stat().st_size < 100  # kept: a later run resumes it


def test_a_partial_answer_from_byte_zero_restarts_the_file(serve, tmp_path):
    part = tmp_path / ".sam.pth.download"
    part.write_bytes(BODY[:1000])
    for _ in range(2):  # a rerun must not grow the partial file past the file's size
        dest = download(serve("range_from_zero").url, tmp_path / "sam.pth", DIGESTS, size=len(BODY), quiet=True)
    assert dest.read_bytes() == BODY and not part.exists()


def test_a_partial_answer_from_elsewhere_is_refused(serve, tmp_path):
    part = tmp_path / ".sam.pth.download"
    part.write_bytes(BODY[:1000])
    _fails(serve("range_elsewhere").url, tmp_path / "sam.pth", "asked for the bytes from 1000.*deleted, run again", size=len(BODY))
    assert not part.exists()
    assert download(serve("honest").url, tmp_path / "sam.pth", DIGESTS, size=len(BODY), quiet=True).read_bytes() == BODY


def test_a_partial_file_longer_than_the_file_starts_again(serve, tmp_path):
    (tmp_path / ".sam.pth.download").write_bytes(BODY + b"junk")
    assert download(serve("honest").url, tmp_path / "sam.pth", DIGESTS, size=len(BODY), quiet=True).read_bytes() == BODY


def test_a_redirect_loop_is_one_line(serve, tmp_path):
    _fails(serve("loop").url, tmp_path / "sam.pth", "cannot download .*: a redirect loop$", size=len(BODY))
