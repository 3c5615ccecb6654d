"""Reading images (host side): a file or its bytes -> (H, W, 3) uint8 RGB, EXIF orientation
applied everywhere an image is read (training, evaluation, the predictor's examples, AMG, the
demo), as cv2.imread, which the official scripts use, and browsers do; sizes are compared after it.

8-bit images (and those Pillow converts to 8-bit RGB: palettes, greyscale, CMYK) are read as
OpenCV's `imread(path, IMREAD_COLOR)` reads them, alpha dropped. Images of more than 8 bits per
pixel (16-bit greyscale, Pillow's `I;16` modes; 32-bit integers, `I`; floating point, `F`: the
microscopy formats) are scaled to 8 bits by `to_uint8`, the percentile normalisation below, not by
dropping the low byte (12-bit data in 16 bits would keep 4 bits). 16-bit colour images, which Pillow
can only deliver as their high bytes, are refused rather than read at 4 bits of 12.

`to_uint8` (also what `SamPredictor.set_image` applies to an array of another dtype than uint8):
over all pixels and channels, lo and hi are the 0.5th and 99.5th percentiles of the finite values
(`np.percentile(..., method="inverted_cdf")`: the smallest value with at least that share of the
values at or below it, so a greyscale image and its three-channel copy scale alike), and each value
x becomes round(255 * clip((x - lo) / (hi - lo), 0, 1)) (NumPy's rint: halves to even); NaN
becomes 0, +inf 255, -inf 0. When hi == lo (a flat image, or one value in 99% of
the pixels) the extremes are used instead; when those are equal too, integers are scaled over
their type's whole range and floats are clipped to [0, 1].

`read_labels` reads an instance label image: one channel of integer ids, 0 the background.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PERCENTILES = (0.5, 99.5)  # to_uint8's lo and hi (MedSAM's preprocessing of non-CT images uses the same)
ORIENTATION = 0x0112  # the EXIF tag; values 5 to 8 turn the image by a quarter


def read_image(source: str | os.PathLike | bytes, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file's path or bytes. Anything Pillow cannot decode, or
    cannot decode faithfully, is a ValueError that says why, in one line. max_pixels: refuse
    larger images before decoding them (Pillow's own decompression-bomb limit applies anyway)."""
    with _opened(source, max_pixels) as im:
        rgb = _rgb(ImageOps.exif_transpose(im))
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"could not decode the image: unexpected shape {rgb.shape}")
    return rgb


class Header(NamedTuple):
    height: int  # as read_image returns the image: EXIF orientation applied
    width: int
    turned: bool  # the EXIF orientation turns the stored pixels by a quarter


def read_header(path: str | os.PathLike) -> Header:
    """An image file's size as `read_image` returns it, from its header; a ValueError saying why
    when `read_image` would refuse the file. PNG files also have every chunk's checksum verified
    (a truncated PNG fails here); other formats' pixel data are decoded only when read."""
    with _opened(path, None) as im:
        width, height = im.size
        turned = im.getexif().get(ORIENTATION) in (5, 6, 7, 8)
        png = im.format == "PNG"
    if png:
        with _opened(path, None) as im:
            im.verify()  # reads every chunk, checking its CRC; only directly after opening
    return Header(width, height, True) if turned else Header(height, width, False)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file as `read_image` returns it (see `read_header`)."""
    return tuple(read_header(path)[:2])


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Any integer or floating-point array -> uint8 of the same shape by the percentile
    normalisation of the module docstring (uint8 is returned as it is)."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == bool or pixels.dtype.kind not in "iuf":
        raise ValueError(f"pixels must be integers or floating point, got dtype {pixels.dtype}")
    x = pixels.astype(np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        raise ValueError("the image has no finite pixel value")
    lo, hi = np.percentile(finite, PERCENTILES, method="inverted_cdf")
    if hi <= lo:
        lo, hi = finite.min(), finite.max()
    if hi <= lo:  # one value everywhere: keep its level within the type's range
        if pixels.dtype.kind == "f":
            lo, hi = 0.0, 1.0
        else:
            info = np.iinfo(pixels.dtype)
            lo, hi = float(info.min), float(info.max)
    scaled = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return np.rint(np.nan_to_num(scaled, nan=0.0) * 255).astype(np.uint8)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """(H, W) int64 instance ids of a label image (0: background), EXIF orientation applied as for
    its image. One channel of integers (8, 16 or 32 bits, a palette's indexes, or floats that are
    whole numbers); anything else (colour, negative or fractional ids) is a ValueError."""
    with _opened(path, None) as im:
        im = ImageOps.exif_transpose(im)
        mode = im.mode
        ids = np.asarray(im) if mode in ("1", "L", "P", "I", "F") or mode.startswith("I;16") else None
    if ids is None:
        raise ValueError(f"a label image has one channel of integer ids, got mode {mode} ({path})")
    if ids.dtype.kind == "f":
        if not (np.isfinite(ids).all() and (ids == np.round(ids)).all()):
            raise ValueError(f"a label image's ids are whole numbers, got fractional or non-finite values ({path})")
    if ids.size and ids.min() < 0:
        raise ValueError(f"a label image's ids are 0 (background) or positive, got {ids.min()} ({path})")
    return ids.astype(np.int64)


class _opened:
    """`with _opened(source, max_pixels) as im`: Pillow's image of a path or bytes, every failure
    to read it a one-line ValueError (a missing path stays a FileNotFoundError)."""

    def __init__(self, source, max_pixels: int | None):
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise ValueError("could not decode the image: no bytes (send the image file's bytes)")
            self.stream, self.what = io.BytesIO(source), f"{len(source)} bytes"
        else:
            self.stream, self.what = Path(source), str(source)
        self.max_pixels = max_pixels

    def __enter__(self) -> Image.Image:
        try:
            self.im = Image.open(self.stream)
        except Exception as e:
            self._reraise(e)
        im = self.im
        if self.max_pixels is not None and im.width * im.height > self.max_pixels:
            self.im.close()
            raise ValueError(
                f"the image is {im.width}x{im.height} ({im.width * im.height / 1e6:.1f} megapixels), "
                f"more than the {self.max_pixels / 1e6:g} megapixels allowed"
            )
        if _reduced_from_16_bits(im):
            self.im.close()
            raise ValueError(
                f"could not read the image ({self.what}): 16-bit colour (mode {im.mode} from {_rawmode(im)}) reaches "
                "Pillow as its high bytes only; save it as 8-bit colour or as 16-bit greyscale, or pass the "
                "16-bit array (cv2.imread(path, cv2.IMREAD_UNCHANGED), tifffile) to SamPredictor.set_image"
            )
        return im

    def __exit__(self, kind, error, traceback) -> None:
        self.im.close()
        if error is not None:  # Pillow's, while decoding: said in one line, with the file
            self._reraise(error)

    def _reraise(self, e: BaseException) -> None:
        if isinstance(e, FileNotFoundError):
            raise e
        if isinstance(e, UnidentifiedImageError):
            raise ValueError(f"could not decode the image: not an image format Pillow reads ({self.what})") from None
        if isinstance(e, ValueError):
            raise ValueError(f"could not read the image ({self.what}): {e}") from None
        # truncated files (OSError), DecompressionBombError, bad headers (SyntaxError), ...
        raise ValueError(f"could not decode the image ({self.what}): {e.__class__.__name__}: {e}") from None


def _rawmode(im: Image.Image) -> str:
    for tile in im.tile:
        args = tile.args
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            args = args[0]
        if isinstance(args, str):
            return args
    return ""


def _reduced_from_16_bits(im: Image.Image) -> bool:
    """Pillow decodes 16-bit colour (PNG, TIFF: raw modes such as RGB;16B) into an 8-bit mode."""
    return ";16" in _rawmode(im) and not im.mode.startswith("I")


def _rgb(im: Image.Image) -> np.ndarray:
    """The decoded image as (H, W, 3) uint8 RGB; see the module docstring."""
    if im.mode.startswith("I") or im.mode == "F":
        grey = to_uint8(np.asarray(im))
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))
