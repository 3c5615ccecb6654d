"""Reading images as the official scripts' cv2.imread(IMREAD_COLOR) does, refusing what it cannot
read faithfully, and bad files (decompression bombs included) failing alone."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sam_jax.cli import main as cli
from sam_jax.io.images import read_image

AMG = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--cache-dir", ""]


def _cv2_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def test_mid_grey_16_bit_is_mid_grey(tmp_path):
    """The reported case: convert("RGB") clipped 32768 to 255 (near-white)."""
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 10), 32768, np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    assert (read_image(path) == 128).all()


@pytest.mark.parametrize("kind", ["grey16.png", "rgb16.png", "rgba16.png", "grey16_be.tif", "grey8.png", "palette.png"])
def test_pixels_equal_cv2_imread(tmp_path, kind):
    r = np.random.default_rng(0)
    path = tmp_path / kind
    if kind == "grey16.png":
        cv2.imwrite(str(path), r.integers(0, 65536, (7, 9), dtype=np.uint16))
    elif kind == "rgb16.png":
        cv2.imwrite(str(path), r.integers(0, 65536, (7, 9, 3), dtype=np.uint16))
    elif kind == "rgba16.png":
        cv2.imwrite(str(path), r.integers(0, 65536, (7, 9, 4), dtype=np.uint16))
    elif kind == "grey16_be.tif":  # Pillow mode I;16B
        data = r.integers(0, 65536, (7, 9), dtype=np.uint16)
        Image.frombytes("I;16B", (9, 7), data.astype(">u2").tobytes()).save(path)
        assert Image.open(path).mode == "I;16B"
    elif kind == "grey8.png":
        Image.fromarray(r.integers(0, 256, (7, 9), dtype=np.uint8)).save(path)
    else:
        Image.fromarray(r.integers(0, 256, (7, 9, 3), dtype=np.uint8)).convert("P").save(path)
    ours = read_image(path)
    assert ours.dtype == np.uint8 and ours.shape == (7, 9, 3)
    np.testing.assert_array_equal(ours, _cv2_rgb(path))
    np.testing.assert_array_equal(read_image(path.read_bytes()), ours)


@pytest.mark.parametrize(("mode", "data"), [("I", np.arange(20, dtype=np.int32) * 10000), ("F", np.linspace(-1, 3, 20, dtype=np.float32))])
def test_32_bit_modes_refused_not_clipped(tmp_path, mode, data):
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(data.reshape(4, 5), mode).save(path)
    assert cv2.imread(str(path), cv2.IMREAD_COLOR) is None  # OpenCV cannot read them either
    with pytest.raises(ValueError, match=f"mode {mode}") as info:
        read_image(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def _bomb(path: Path, side: int = 30000) -> Path:
    """A 30000x30000 PNG header over a few bytes of data: Pillow refuses it on open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))
    return path


def test_pixel_cap_and_bomb(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 300, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"300x100 \(0.0 megapixels\), more than the 0.01 megapixels allowed"):
        read_image(path, max_pixels=10_000)
    with pytest.raises(ValueError, match="DecompressionBombError") as info:
        read_image(_bomb(tmp_path / "bomb.png"))
    assert "\n" not in str(info.value)


def test_bomb_is_one_bad_file_among_others(tiny, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _bomb(photos / "bomb.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(photos / "good.png")
    Image.fromarray(np.full((40, 60), 40000, np.uint16)).save(photos / "grey16.png")
    out = tmp_path / "out"
    assert cli(["amg", "--checkpoint", str(tiny.model_dir), "--input", str(photos), "--output", str(out), *AMG]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "bomb.png" in line and "DecompressionBombError" in line]
    assert (out / "good" / "metadata.csv").is_file() and (out / "grey16" / "metadata.csv").is_file()
    assert "1 of 3 inputs failed" in err
    embed = ["embed", "--checkpoint", str(tiny.model_dir), "--image", str(photos / "bomb.png"), "--output", str(tmp_path / "e.npy"), "--cache-dir", ""]
    assert cli(embed) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DecompressionBombError" in err and not (tmp_path / "e.npy").exists()
