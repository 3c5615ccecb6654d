"""Hostile checkpoint files: each one is refused in under a second, with a one-line error, and
with memory bounded by the file rather than by what the file claims. The files are generated
here (a few MB at most on disk: large claims, sparse buffers, repeated deflate blocks).

The loads run in one fresh subprocess, which measures the peak RSS of each load above its RSS
before it (the CONVENTIONS memory bar) and caps its own address space, so that a regression
fails with a MemoryError here instead of exhausting the machine."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch

from sam_jax.convert.torch_pickle import MAX_PICKLE_BYTES

MAX_SECONDS = 1.0
MAX_PEAK_MB = 500


# ----------------------------------------------------------------------------------- file makers
def _zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip archive written by hand, so that headers may lie: (name, raw data as stored,
    method 0 stored / 8 deflated, CRC-32, declared uncompressed size) per member."""
    out, central = bytearray(), bytearray()
    for name, raw, method, crc, size in members:
        offset, n = len(out), name.encode()
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(raw), size, len(n), 0) + n + raw
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(raw), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))
    return path


def _deflate_repeated(head: bytes, block: bytes, count: int, tail: bytes) -> tuple[bytes, int, int]:
    """A raw deflate stream of head + block * count + tail without compressing count blocks: after
    a full flush the compressor forgets its history, so every block compresses to the same bytes.
    Returns (stream, CRC-32, uncompressed size)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    one = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(block) + c.flush(zlib.Z_FULL_FLUSH) == one
    last = c.compress(tail) + c.flush()
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    return first + one * count + last, zlib.crc32(tail, crc), len(head) + len(block) * count + len(tail)


def _torch_zip(path: Path, tensors: dict) -> Path:
    """What torch.save writes for `tensors`, with the storage records deflated (so that a file of
    zeros is small on disk; the reader accepts deflated records as torch's does)."""
    import io
    import zipfile

    buf = io.BytesIO()
    torch.save(tensors, buf)
    members = []
    with zipfile.ZipFile(buf) as z:
        for name in z.namelist():
            data = z.read(name)
            if "/data/" in name:
                c = zlib.compressobj(9, zlib.DEFLATED, -15)
                members.append((name, c.compress(data) + c.flush(), 8, zlib.crc32(data), len(data)))
            else:
                members.append(_stored(name, data))
    return _zip(path, members)


def _torch_pickle_of(tensors: dict) -> bytes:
    """The data.pkl that torch.save writes for `tensors` (archive prefix 'archive')."""
    import io
    import zipfile

    buf = io.BytesIO()
    torch.save(tensors, buf)
    with zipfile.ZipFile(buf) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def _stored(name: str, data: bytes) -> tuple:
    return name, data, 0, zlib.crc32(data), len(data)


def _safetensors(path: Path, header: bytes, buffer_size: int) -> Path:
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + buffer_size)  # sparse: no disk, reads as zeros
    return path


CASES = [  # (file, the refusal its error must contain; None: it loads what it declares)
    ("stride0_legacy.pth", "overlapping or stride-0 view"),
    ("stride0.pth", "overlapping or stride-0 view"),
    ("overlap.pth", "overlapping or stride-0 view"),
    ("shared64.pth", "more than 2 times"),
    ("inflating.pth", None),
    ("inflating_crc.pth", "Bad CRC-32"),
    ("opcodes.pth", f"more than the {MAX_PICKLE_BYTES}"),
    ("opcodes_small.pth", "Bad CRC-32"),
    ("memo.pth", "memo index 1073741824"),
    ("sets.pth", "builds a set"),
    ("long_legacy.pth", f"larger than the {MAX_PICKLE_BYTES}"),
    ("overlap.safetensors", "overlaps the tensor before it"),
    ("nested.safetensors", "nested too deeply"),
]


def _make_files(d: Path) -> None:
    """Writes every file of CASES into `d`."""
    # A 1-element storage viewed as 65536 x 65536 with stride 0 (16 GiB for the old reader).
    huge = torch.zeros(1).as_strided((65536, 65536), (0, 0))
    torch.save({"w": huge}, d / "stride0_legacy.pth", _use_new_zipfile_serialization=False)
    _torch_zip(d / "stride0.pth", {"w": huge})
    # A 4 MB storage viewed with strides (1, 1): its extent fits, its element count does not.
    _torch_zip(d / "overlap.pth", {"w": torch.zeros(1 << 20).as_strided((65536, 65536), (1, 1))})
    # 64 keys for one 16 MB tensor: 64 copies (1 GiB).
    base = torch.zeros(4 << 20)
    _torch_zip(d / "shared64.pth", {f"w{i}": base for i in range(64)})

    # A storage record that declares 16 bytes (and their CRC) but inflates to 2 GiB: only the
    # declared bytes are ever produced, so it loads, as the 4 zeros it declares.
    pkl = _torch_pickle_of({"w": torch.zeros(4)})
    stream, crc, _ = _deflate_repeated(b"", bytes(1 << 20), 2048, b"")
    _zip(d / "inflating.pth", [_stored("archive/data.pkl", pkl), ("archive/data/0", stream, 8, zlib.crc32(bytes(16)), 16)])
    # The same with the CRC of the whole stream: refused after the first 16 bytes.
    _zip(d / "inflating_crc.pth", [_stored("archive/data.pkl", pkl), ("archive/data/0", stream, 8, crc, 16)])

    # A deflated data.pkl of 128 M NONE opcodes (1 GiB of unpickler stack for the old reader).
    stream, crc, size = _deflate_repeated(b"\x80\x02", b"N" * (1 << 20), 128, b".")
    _zip(d / "opcodes.pth", [("archive/data.pkl", stream, 8, crc, size)])
    # The same pickle declared as 1000 bytes.
    _zip(d / "opcodes_small.pth", [("archive/data.pkl", stream, 8, crc, 1000)])
    # Six bytes that make the C unpickler's memo an array of 2^31 entries (16 GiB).
    _zip(d / "memo.pth", [_stored("archive/data.pkl", b"\x80\x02Nr" + struct.pack("<I", 1 << 30) + b".")])
    # Empty sets: 224 bytes of memory per pickle byte.
    _zip(d / "sets.pth", [_stored("archive/data.pkl", b"\x80\x04" + b"\x8f" * (MAX_PICKLE_BYTES - 3) + b".")])
    # A legacy file whose state-dict pickle does not end within the cap.
    with open(d / "long_legacy.pth", "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(b"\x80\x02" + b"N" * (4 * MAX_PICKLE_BYTES) + b".")

    # safetensors: 100 entries over the same 64 MiB (6.4 GB of copies for the old reader).
    n = 64 << 20
    entries = {f"t{i}": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]} for i in range(100)}
    _safetensors(d / "overlap.safetensors", json.dumps(entries).encode(), n)
    # A header nested 100000 deep.
    nested = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    _safetensors(d / "nested.safetensors", nested, 0)


_LOADER = textwrap.dedent(
    """
    import json, resource, sys, time
    from sam_jax.convert import read_state_dict

    def kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    # A regression must fail here (MemoryError), not exhaust the machine.
    resource.setrlimit(resource.RLIMIT_AS, ((kb("VmSize") + (2 << 20)) * 1024, resource.RLIM_INFINITY))
    for path in sys.argv[1:]:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak RSS
        before = kb("VmRSS")
        t0 = time.perf_counter()
        try:
            state = read_state_dict(path)
            error = None if all(not v.any() for v in state.values()) else "loaded nonzero data"
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - t0
        print(json.dumps({"path": path, "seconds": seconds, "peak_mb": (kb("VmHWM") - before) / 1024, "error": error}))
    """
)


@pytest.fixture(scope="module")
def loads(tmp_path_factory):
    """file name -> what loading it did (error, seconds, peak_mb), all in one fresh process."""
    d = tmp_path_factory.mktemp("hostile")
    _make_files(d)
    assert sorted(p.name for p in d.iterdir()) == sorted(f for f, _ in CASES)
    # The attack is in the claims, not in the size: no file takes more than 8 MB of disk.
    assert max(p.stat().st_blocks * 512 for p in d.iterdir()) < 8 << 20
    r = subprocess.run([sys.executable, "-c", _LOADER, *(str(d / f) for f, _ in CASES)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return {Path(res["path"]).name: res for res in map(json.loads, r.stdout.splitlines())}


@pytest.mark.parametrize(("file", "match"), CASES, ids=[f for f, _ in CASES])
def test_hostile_file_refused_fast_and_small(loads, file, match):
    result = loads[file]
    if match is None:
        assert result["error"] is None, f"{file}: {result['error']}"
    else:
        assert result["error"] is not None, f"{file}: loaded"
        assert match in result["error"] and "MemoryError" not in result["error"], f"{file}: {result['error']}"
        assert "\n" not in result["error"] and result["path"] in result["error"], result["error"]
    assert result["seconds"] < MAX_SECONDS, f"{file}: {result['seconds']:.2f} s"
    assert result["peak_mb"] < MAX_PEAK_MB, f"{file}: peak {result['peak_mb']:.0f} MB"
    print(f"{file}: {'loaded' if match is None else 'refused'} in {result['seconds'] * 1000:.0f} ms, "
          f"peak +{result['peak_mb']:.1f} MB")
