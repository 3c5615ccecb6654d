"""Input checks for the predictor: each bad input gets a ValueError that names the argument and
what was expected, before anything reaches the device."""

from __future__ import annotations

import numpy as np

from .io.images import to_uint8


class ImageNotSetError(RuntimeError, ValueError):
    """predict() before set_image(). A RuntimeError like the official one, and a ValueError."""


def check_image(image, name: str = "image") -> np.ndarray:
    """Returns the image as a C-contiguous (H, W, 3) uint8 array, or raises ValueError. Other
    integer and floating-point dtypes (16-bit microscopy, floats) are scaled to uint8 by
    `sam_jax.io.images.to_uint8` (percentile normalisation; see there)."""
    if not isinstance(image, np.ndarray):
        try:
            image = np.asarray(image)
        except Exception:
            raise ValueError(f"{name} must be an HxWx3 uint8 NumPy array, got {type(image).__name__}") from None
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise ValueError(
            f"{name} must be HxWx3 RGB, got grayscale shape {image.shape}; convert it with "
            "np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2) or PIL's .convert('RGB')"
        )
    if image.ndim == 3 and image.shape[2] == 4:
        raise ValueError(
            f"{name} must be HxWx3 RGB, got RGBA shape {image.shape}; drop alpha with img[..., :3] "
            "or composite it onto a background with PIL's .convert('RGB')"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be an HxWx3 array, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    if image.dtype != np.uint8:
        if image.dtype == bool or image.dtype.kind not in "iuf":
            raise ValueError(f"{name} must have dtype uint8 (pixel values 0..255), or another integer or float "
                             f"dtype to normalise, got {image.dtype}")
        try:
            image = to_uint8(image)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return np.ascontiguousarray(image)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float32(a: np.ndarray, name: str) -> None:
    """ValueError unless every value is finite as a float32 (the model computes in float32: a
    coordinate of 1e39 would become inf there, and the scores NaN)."""
    bad = a[~(np.abs(a) <= FLOAT32_MAX)]  # NaN compares False too
    if bad.size:
        value = float(bad.flat[0])
        what = "NaN" if np.isnan(value) else "an infinite value" if np.isinf(value) else f"{value:g}, beyond float32"
        raise ValueError(f"{name} contains {what}: values must be finite float32 numbers (|x| <= {FLOAT32_MAX:.3g})")


POINT_LABELS = (-1, 0, 1, 2, 3)
MAX_MASK_LOGIT = 1e4


def check_points(coords, labels, batch: int | None) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """coords (N, 2) / labels (N,), or (B, N, 2) / (B, N) when `batch` is not None (B == batch if > 0)."""
    if coords is None and labels is None:
        return None, None
    if coords is None or labels is None:
        raise ValueError("point_labels must be supplied with point_coords (and point_coords with point_labels)")
    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(labels)
    lead = 1 if batch is None else 2
    shape_c = "(N, 2)" if batch is None else "(B, N, 2)"
    if coords.ndim != lead + 1 or coords.shape[-1] != 2:
        raise ValueError(f"point_coords must have shape {shape_c} (xy pixels), got {coords.shape}")
    if labels.shape != coords.shape[:-1]:
        raise ValueError(f"point_labels must have shape {coords.shape[:-1]} to match point_coords, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.number) or not np.all(np.isin(labels, POINT_LABELS)):
        raise ValueError(
            "point_labels must be 1 (foreground), 0 (background), -1 (ignored), or 2 / 3 (accepted as the "
            "official predictor accepts them: a point with no label embedding)"
        )
    check_float32(coords, "point_coords")
    return coords, labels.astype(np.int32)


def check_boxes(boxes, batch: int | None) -> np.ndarray | None:
    """One xyxy box (4,) (or (1, 4)), or (B, 4) boxes when batched; x1 >= x0 and y1 >= y0."""
    if boxes is None:
        return None
    boxes = np.asarray(boxes, dtype=np.float64)
    if batch is None:
        if boxes.shape not in ((4,), (1, 4)):
            raise ValueError(f"box must have shape (4,) as x0, y0, x1, y1 pixels, got {boxes.shape}")
        boxes = boxes.reshape(1, 4)
    elif boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (B, 4) as x0, y0, x1, y1 pixels, got {boxes.shape}")
    check_float32(boxes, "box")
    bad = np.nonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0]
    if bad.size:
        raise ValueError(f"box {bad[0]} is {boxes[bad[0]].tolist()}: expected x0, y0, x1, y1 with x1 >= x0 and y1 >= y0")
    return boxes


def check_mask_input(mask_input, size: int, batch: int | None) -> np.ndarray | None:
    """(1, size, size) low-res logits, or (B, 1, size, size) when batched."""
    if mask_input is None:
        return None
    mask_input = np.asarray(mask_input)
    expected = (1, size, size) if batch is None else (mask_input.shape[0] if mask_input.ndim else -1, 1, size, size)
    if mask_input.shape != expected:
        want = f"(1, {size}, {size})" if batch is None else f"(B, 1, {size}, {size})"
        raise ValueError(f"mask_input must have shape {want} (low-res logits from a previous predict), got {mask_input.shape}")
    if not np.issubdtype(mask_input.dtype, np.floating):
        raise ValueError(f"mask_input must be float logits, got dtype {mask_input.dtype}")
    check_float32(mask_input, "mask_input")
    # Logits this large saturate the mask encoder's convolutions and LayerNorms into NaN scores
    # and empty masks, silently; a previous predict's low-res logits stay within a few hundred.
    peak = float(np.abs(mask_input).max(initial=0.0))
    if peak > MAX_MASK_LOGIT:
        raise ValueError(f"mask_input holds logits up to {peak:.3g} in magnitude, beyond the {MAX_MASK_LOGIT:g} the "
                         "model can use; pass the low-res logits of a previous predict (or clip them)")
    return mask_input.astype(np.float32)


def batch_size(*arrays) -> int:
    """The common leading size of the given prompt arrays (None ignored), or ValueError."""
    sizes = {a.shape[0] for a in arrays if a is not None}
    if len(sizes) > 1:
        raise ValueError(f"prompt arrays disagree on the batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else 1
