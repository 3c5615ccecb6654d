"""SamPredictor: the official predictor's API over the jitted functions in `functional.py`.

Host side (here): validate, resize with Pillow, scale coordinates, pad prompts to buckets.
Device side (`functional.py`): embedding, prompt decoding, upsampling and thresholding.

Compilations. The encoder compiles once per image batch size (every image is padded to the model
input). The decoder compiles once per (prompt-batch bucket, point-count bucket, multimask): both
counts are padded up to a power of two, boxes are a runtime flag, and a mask input is one more
variant (without one, the image keys are shared by all prompts). Mask upsampling compiles once
per distinct original image size (its output shape). A session of single-image clicks with up to
8 points, a box and a fed-back mask therefore compiles the decoder at most 8 times per multimask
setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import validate
from .functional import decode_prompts_jit, embed_images_jit, pad_prompts, upscale_masks_jit
from .modeling import Sam, with_numerics
from .utils.transforms import ResizeLongestSide


@dataclass
class ImageEmbeddings:
    """Embeddings of a batch of images. features: (B, C, h, w) on device; sizes are (H, W)."""

    features: jax.Array
    original_sizes: list[tuple[int, int]]
    input_sizes: list[tuple[int, int]]


class SamPredictor:
    def __init__(self, sam_model: Sam, *, dtype=None, precision: str | None = None) -> None:
        """dtype ("float32", "bfloat16") and precision ("exact", "fast"): how to compute; None
        keeps the model's own setting (`sam_model.numerics`, from `sam_jax.load`)."""
        if dtype is not None or precision is not None:
            sam_model = with_numerics(sam_model, dtype=dtype, precision=precision)
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.config.image_size)
        # The split model that the compiled functions take (see functional.py).
        self.graphdef, self.params = nnx.split(sam_model)
        self.reset_image()

    # ----------------------------------------------------------------------------- images
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embeds one (H, W, 3) uint8 image; later predictions refer to it."""
        self.set_image_embedding(self.embed_images([image], image_format))

    def embed_images(self, images: list[np.ndarray], image_format: str = "RGB") -> ImageEmbeddings:
        """Embeds several (H, W, 3) uint8 images of any sizes in one device call."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        S = self.model.config.image_size
        batch = np.zeros((len(images), S, S, 3), np.uint8)
        original_sizes, input_sizes = [], []
        for i, image in enumerate(images):
            image = validate.check_image(image, f"images[{i}]" if len(images) > 1 else "image")
            if image_format != self.model.image_format:
                image = image[..., ::-1]
            resized = self.transform.apply_image(image)
            batch[i, : resized.shape[0], : resized.shape[1]] = resized
            original_sizes.append(image.shape[:2])
            input_sizes.append(resized.shape[:2])
        features = embed_images_jit(self.graphdef, self.params, jnp.asarray(batch), jnp.asarray(input_sizes, jnp.int32))
        return ImageEmbeddings(features, original_sizes, input_sizes)

    def set_image_embedding(self, embeddings: ImageEmbeddings, index: int = 0) -> None:
        """Makes image `index` of a batch from `embed_images` the current image, without recomputing."""
        self.features = embeddings.features[index : index + 1]
        self.original_size = tuple(embeddings.original_sizes[index])
        self.input_size = tuple(embeddings.input_sizes[index])
        self.is_image_set = True

    def get_image_embedding(self) -> jax.Array:
        """(1, C, h, w) embedding of the current image."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self.original_size = None
        self.input_size = None

    # ----------------------------------------------------------------------------- prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt on the current image, as the official `SamPredictor.predict`.

        point_coords: (N, 2) xy pixels in the original image (points outside the image are
        accepted, as the official model accepts them); point_labels: (N,) 1 foreground, 0
        background; box: (4,) xyxy pixels; mask_input: (1, 4h, 4w) low-res logits of an earlier
        call. Returns masks (C, H, W) bool (float logits if return_logits), iou_predictions (C,)
        and low_res_logits (C, 4h, 4w), C = 3 with multimask_output else 1.
        """
        self._require_image()
        coords, labels = validate.check_points(point_coords, point_labels, batch=None)
        boxes = validate.check_boxes(box, batch=None)
        masks = validate.check_mask_input(mask_input, self._mask_size, batch=None)
        masks, iou, low = self.predict_batch(
            None if coords is None else coords[None], None if labels is None else labels[None],
            boxes, None if masks is None else masks[None], multimask_output, return_logits,
        )
        return masks[0], iou[0], low[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B prompts on the current image in one call, coordinates in the original image.

        point_coords (B, N, 2), point_labels (B, N), boxes (B, 4), mask_input (B, 1, 4h, 4w).
        Returns NumPy masks (B, C, H, W), iou_predictions (B, C), low_res_logits (B, C, 4h, 4w).
        """
        self._require_image()
        coords, labels = validate.check_points(point_coords, point_labels, batch=0)
        boxes = validate.check_boxes(boxes, batch=0)
        masks = validate.check_mask_input(mask_input, self._mask_size, batch=0)
        validate.batch_size(coords, boxes, masks)
        if coords is not None:
            coords = self.transform.apply_coords(coords, self.original_size)
        if boxes is not None:
            boxes = self.transform.apply_boxes(boxes, self.original_size)
        out = self.predict_jax(coords, labels, boxes, masks, multimask_output, return_logits)
        return tuple(np.asarray(a) for a in out)

    def predict_jax(
        self,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The official `predict_torch`: B prompts with coordinates already in the resized-input
        frame (see `self.transform`); returns device arrays (B, C, H, W), (B, C), (B, C, 4h, 4w)."""
        self._require_image()
        B = validate.batch_size(point_coords, boxes, mask_input)
        prompts = pad_prompts(point_coords, point_labels, boxes, mask_input, B, self._mask_size)
        low_res, iou = decode_prompts_jit(self.graphdef, self.params, self.features, prompts, multimask_output)
        low_res, iou = low_res[:B], iou[:B]
        threshold = None if return_logits else self.model.mask_threshold
        masks = upscale_masks_jit(low_res, self.model.config, self.input_size, self.original_size, threshold)
        return masks, iou, low_res

    @property
    def device(self) -> jax.Device:
        """The model's device (the first device of its parameters)."""
        return self.model.device

    @property
    def _mask_size(self) -> int:
        return self.model.prompt_encoder.mask_input_size[0]

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise validate.ImageNotSetError("An image must be set with .set_image(...) before mask prediction.")
