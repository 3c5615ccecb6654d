"""Reading images (host side): a file or its bytes -> (H, W, 3) uint8 RGB, EXIF orientation
applied (as cv2.imread, which the official scripts use, and as browsers display photos).

Pixels are read as OpenCV's `imread(path, IMREAD_COLOR)` reads them: 16-bit images (Pillow's
`I;16` modes; 16-bit RGB and RGBA arrive as 8-bit already) are scaled to 8 bits by dropping the
low byte (value >> 8), alpha is dropped, and 32-bit integer (`I`) or floating-point (`F`) images,
which have no standard 8-bit scaling (OpenCV refuses them too), are refused rather than clipped.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


def read_image(source: str | os.PathLike | bytes, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file's path or bytes. Anything Pillow cannot decode, or
    cannot decode faithfully, is a ValueError that says why, in one line. max_pixels: refuse
    larger images before decoding them (Pillow's own decompression-bomb limit applies anyway)."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ValueError("could not decode the image: no bytes (send the image file's bytes)")
        stream, what = io.BytesIO(source), f"{len(source)} bytes"
    else:
        stream, what = Path(source), str(source)
    try:
        with Image.open(stream) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ValueError(
                    f"the image is {im.width}x{im.height} ({im.width * im.height / 1e6:.1f} megapixels), "
                    f"more than the {max_pixels / 1e6:g} megapixels allowed"
                )
            rgb = _rgb(ImageOps.exif_transpose(im))
    except UnidentifiedImageError:
        raise ValueError(f"could not decode the image: not an image format Pillow reads ({what})") from None
    except FileNotFoundError:
        raise
    except ValueError as e:
        raise ValueError(f"could not read the image ({what}): {e}") from None
    except Exception as e:  # truncated files (OSError), DecompressionBombError, bad headers (SyntaxError), ...
        raise ValueError(f"could not decode the image: {e.__class__.__name__}: {e}") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"could not decode the image: unexpected shape {rgb.shape}")
    return rgb


def _rgb(im: Image.Image) -> np.ndarray:
    """The decoded image as OpenCV's IMREAD_COLOR gives it (in RGB order); see the module docstring."""
    if im.mode.startswith("I;16"):
        pixels = np.asarray(im)
        if pixels.dtype.kind != "u":
            raise ValueError(f"signed 16-bit pixels (mode {im.mode}) have no standard 8-bit scaling")
        grey = (pixels >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode in ("I", "F"):
        kind = "32-bit integer" if im.mode == "I" else "floating-point"
        raise ValueError(
            f"{kind} pixels (mode {im.mode}) have no standard 8-bit scaling (OpenCV refuses them too); "
            "save the image with 8 or 16 bits per channel"
        )
    return np.asarray(im.convert("RGB"))
