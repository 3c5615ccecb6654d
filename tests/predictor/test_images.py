"""Reading images as the official scripts' cv2.imread(IMREAD_COLOR) does for 8-bit images, 16-bit
greyscale by the documented percentile normalisation, refusing what Pillow cannot read faithfully
(16-bit colour), and bad files (decompression bombs included) failing alone."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sam_jax.cli import main as cli
from sam_jax.io.images import read_image, to_uint8

AMG = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--cache-dir", ""]


def _cv2_rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def test_mid_grey_16_bit_is_mid_grey(tmp_path):
    """The reported case: convert("RGB") clipped 32768 to 255 (near-white)."""
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 10), 32768, np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    assert (read_image(path) == 128).all()


@pytest.mark.parametrize("kind", ["grey8.png", "palette.png", "rgb8.jpg"])
def test_8_bit_pixels_equal_cv2_imread(tmp_path, kind):
    r = np.random.default_rng(0)
    path = tmp_path / kind
    if kind == "grey8.png":
        Image.fromarray(r.integers(0, 256, (7, 9), dtype=np.uint8)).save(path)
    elif kind == "palette.png":
        Image.fromarray(r.integers(0, 256, (7, 9, 3), dtype=np.uint8)).convert("P").save(path)
    else:
        cv2.imwrite(str(path), r.integers(0, 256, (7, 9, 3), dtype=np.uint8))
    ours = read_image(path)
    assert ours.dtype == np.uint8 and ours.shape == (7, 9, 3)
    np.testing.assert_array_equal(ours, _cv2_rgb(path))
    np.testing.assert_array_equal(read_image(path.read_bytes()), ours)


def _percentile_scaled(raw: np.ndarray) -> np.ndarray:
    """The documented normalisation, written out: 0.5th and 99.5th percentiles to 0 and 255."""
    lo, hi = np.percentile(raw.astype(np.float64), [0.5, 99.5], method="inverted_cdf")
    return np.rint(np.clip((raw - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["grey12.png", "grey12.tif", "grey16_be.tif", "int32.tif", "float.tif"])
def test_deep_pixels_are_percentile_normalised(tmp_path, kind):
    """12-bit microscopy in 16 bits (max 4095) used to keep its high byte (max 15 of 255)."""
    r = np.random.default_rng(1)
    path = tmp_path / kind
    raw = r.integers(0, 4096, (40, 50)).astype(np.uint16)
    if kind == "grey12.png":
        cv2.imwrite(str(path), raw)
    elif kind == "grey12.tif":
        Image.fromarray(raw).save(path)
    elif kind == "grey16_be.tif":  # Pillow mode I;16B
        raw = r.integers(0, 65536, (40, 50)).astype(np.uint16)
        Image.frombytes("I;16B", (50, 40), raw.astype(">u2").tobytes()).save(path)
        assert Image.open(path).mode == "I;16B"
    elif kind == "int32.tif":
        raw = r.integers(-70000, 70000, (40, 50)).astype(np.int32)
        Image.fromarray(raw, "I").save(path)
    else:
        raw = r.normal(0.3, 0.1, (40, 50)).astype(np.float32)
        Image.fromarray(raw, "F").save(path)
    ours = read_image(path)
    assert ours.shape == (40, 50, 3) and (ours[..., 0] == ours[..., 2]).all()
    np.testing.assert_array_equal(ours[..., 0], _percentile_scaled(raw))
    assert ours.min() == 0 and ours.max() == 255  # the whole range used, whatever the bit depth
    np.testing.assert_array_equal(read_image(path.read_bytes()), ours)


def test_normalisation_edges():
    flat = np.full((4, 5, 3), 1000, np.uint16)
    assert (to_uint8(flat) == 4).all()  # one value: its level within the type's range (1000 / 65535)
    x = np.linspace(0, 1, 1000, dtype=np.float64).reshape(10, 100)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    y = to_uint8(x)
    assert y[0, :3].tolist() == [0, 255, 0]  # NaN, +inf, -inf
    finite = y.ravel()[3:]
    assert finite[0] == 0 and finite[-1] == 255 and (np.diff(finite.astype(int)) >= 0).all()
    with pytest.raises(ValueError, match="no finite pixel"):
        to_uint8(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="dtype bool"):
        to_uint8(np.zeros((2, 2), bool))


@pytest.mark.parametrize("kind", ["rgb16.png", "rgba16.png", "rgb16.tif"])
def test_16_bit_colour_refused_not_cut_to_its_high_byte(tmp_path, kind):
    """Pillow decodes 16-bit colour into 8 bits by the high byte: 12-bit data would keep 4 bits."""
    path = tmp_path / kind
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 4096, (7, 9, 4 if "rgba" in kind else 3), dtype=np.uint16))
    for source in (path, path.read_bytes()):
        with pytest.raises(ValueError, match="16-bit colour") as info:
            read_image(source)
        assert "\n" not in str(info.value)


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
