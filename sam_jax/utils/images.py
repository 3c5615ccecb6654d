"""Reading images (host side): a file or its bytes -> (H, W, 3) uint8 RGB, EXIF orientation
applied (as cv2.imread, which the official scripts use, and as browsers display photos)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


def read_image(source: str | os.PathLike | bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file's path or bytes. Anything Pillow cannot decode is a
    ValueError that says why, in one line."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ValueError("could not decode the image: no bytes (send the image file's bytes)")
        stream, what = io.BytesIO(source), f"{len(source)} bytes"
    else:
        stream, what = Path(source), str(source)
    try:
        with Image.open(stream) as im:
            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError(f"could not decode the image: not an image format Pillow reads ({what})") from None
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated files (OSError), DecompressionBombError, bad headers (SyntaxError), ...
        raise ValueError(f"could not decode the image: {e.__class__.__name__}: {e}") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"could not decode the image: unexpected shape {rgb.shape}")
    return rgb
