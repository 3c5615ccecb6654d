"""SamPredictor: the official predictor's API over the compiled functions of `functional.predictor`.

Host side (here): validate, resize with Pillow, scale coordinates, pad prompts to buckets.
Device side (`functional/predictor.py`): embedding, prompt decoding, upsampling and thresholding.

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
from jax.sharding import Mesh

from . import validate
from .functional import Prompts, bind_model, bucket, decode_prompts, dense_pe, image_features, upscale_masks_jit
from .modeling import Sam, with_numerics
from .modeling.prompt_encoder import IGNORE_LABEL
from .parallel import batch_sharding, data_parallel_mesh, pad_batch, replicated
from .pillow_resize import resize_longest_side
from .transforms import ResizeLongestSide, transform_for


@dataclass
class ImageEmbeddings:
    """Embeddings of a batch of images. features: (B, C, h, w) on device; sizes are (H, W);
    hq_features: (B, 4h, 4w, C/8) for an HQ-SAM decoder, else None."""

    features: jax.Array
    original_sizes: list[tuple[int, int]]
    input_sizes: list[tuple[int, int]]
    hq_features: jax.Array | None = None


class SamPredictor:
    def __init__(self, sam_model: Sam, mesh: Mesh | None | str = "auto", *, dtype=None, precision: str | None = None,
                 resize: str = "host") -> None:
        """mesh: where batches of several images or prompts are split (data parallel, the model
        replicated): "auto" for all local devices of the model's platform when it has more than
        one, None for the model's device alone, or a `Mesh`. A single image or prompt always
        runs on the model's device. dtype ("float32", "bfloat16") and precision ("exact",
        "fast"): how to compute; None keeps the model's own setting (`sam_model.numerics`, from
        `sam_jax.load`). resize: where images are resized to the model input, "host" (Pillow, as
        the official) or "device" (the same bytes computed on the model's device,
        `sam_jax.pillow_resize`: only the photo crosses, as uint8)."""
        if resize not in ("host", "device"):
            raise ValueError(f"resize must be 'host' or 'device', got {resize!r}")
        self.resize = resize
        if dtype is not None or precision is not None:
            sam_model = with_numerics(sam_model, dtype=dtype, precision=precision)
        self.model = sam_model
        # The model's resize: the official longest side, or MedSAM's square (its preprocessing profile).
        self.transform = transform_for(sam_model.config)
        if resize == "device" and type(self.transform) is not ResizeLongestSide:
            raise ValueError(f"resize='device' resizes the longest side; this model's preprocessing "
                             f"({sam_model.config.preprocess}) resizes to a square: use resize='host'")
        # The split model that the compiled functions take (see functional/predictor.py).
        self.graphdef, self.params = nnx.split(sam_model)
        self._leaves, treedef = jax.tree.flatten(self.params)
        self._embed = bind_model(image_features, self.graphdef, treedef)
        self._decode = bind_model(decode_prompts, self.graphdef, treedef, ("multimask_output", "hq_token_only"))
        self._dense_pe = bind_model(dense_pe, self.graphdef, treedef)
        self._image_pe = None  # the model's dense_pe, made on the first prediction
        self.mesh = data_parallel_mesh(sam_model.device) if mesh == "auto" else mesh
        self._mesh_params = None  # params replicated over the mesh, made on first use
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
        original_sizes, input_sizes, canvases = [], [], []
        for i, image in enumerate(images):
            image = validate.check_image(image, f"images[{i}]" if len(images) > 1 else "image")
            if image_format != self.model.image_format:
                image = image[..., ::-1]
            if self.resize == "device":  # each image resized on device, the batch stacked there
                canvas, size = resize_longest_side(image, S, self.device)
                canvases.append(canvas)
            else:
                resized = self.transform.apply_image(image)
                batch[i, : resized.shape[0], : resized.shape[1]] = resized
                size = resized.shape[:2]
            original_sizes.append(image.shape[:2])
            input_sizes.append(size)
        if canvases:
            batch = jnp.stack(canvases)
        sizes = np.asarray(input_sizes, np.int32)
        if self.mesh is None or len(images) == 1:
            features = self._embed(self._leaves, jnp.asarray(batch), jnp.asarray(sizes))
        else:  # one slice of the batch per device, padded to a multiple of the device count
            n = self.mesh.size
            x = jax.device_put(pad_batch(batch, n), batch_sharding(self.mesh, 4))
            sizes = jax.device_put(pad_batch(sizes, n), batch_sharding(self.mesh, 2))
            features = jax.tree.map(lambda a: a[: len(images)], self._embed(self._replicated_params(), x, sizes))
        return ImageEmbeddings(features.embeddings, original_sizes, input_sizes, features.hq_features)

    def set_jax_image(self, transformed_image: jax.Array, original_image_size: tuple[int, int]) -> None:
        """The official `set_torch_image`: embeds a (1, 3, h, w) image already resized so that
        max(h, w) == image_size (e.g. by `transform.apply_image_jax`), pixel values 0..255, for
        prompts on an image of `original_image_size` (H, W). The model's preprocessing profile
        applies from there exactly as its reference's does (mean/std, or LiteMedSAM's and
        MedSAM's min-max over the resized image, then the zero padding)."""
        x = jnp.asarray(transformed_image)
        S = self.model.config.image_size
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3 or max(x.shape[2:]) != S:
            raise ValueError(f"set_jax_image input must be BCHW with B=1, C=3 and long side {S}, got shape {x.shape}")
        h, w = x.shape[2:]
        batch = jnp.zeros((1, S, S, 3), jnp.float32).at[:, :h, :w].set(jnp.transpose(x, (0, 2, 3, 1)))
        features = self._embed(self._leaves, batch, jnp.asarray([[h, w]], jnp.int32))
        self.set_image_embedding(ImageEmbeddings(features.embeddings, [tuple(int(v) for v in original_image_size)], [(h, w)],
                                                 features.hq_features))

    set_torch_image = set_jax_image  # the official name

    def set_image_embedding(self, embeddings: ImageEmbeddings, index: int = 0) -> None:
        """Makes image `index` of a batch from `embed_images` the current image, without recomputing."""
        self.features = jax.device_put(embeddings.features[index : index + 1], self._param_sharding)
        hq = embeddings.hq_features
        self.hq_features = None if hq is None else jax.device_put(hq[index : index + 1], self._param_sharding)
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
        self.hq_features = None
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
        hq_token_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt on the current image, as the official `SamPredictor.predict`.

        point_coords: (N, 2) xy pixels in the original image (points outside the image are
        accepted, as the official model accepts them, but not values float32 cannot hold);
        point_labels: (N,) 1 foreground, 0 background, -1 ignored, and 2 / 3 as the official
        predictor takes them (a point with no label embedding: unlike the official ONNX model,
        it does not treat them as box corners); box: (4,) xyxy pixels; mask_input: (1, 4h, 4w) low-res logits of an earlier
        call. Returns masks (C, H, W) bool (float logits if return_logits), iou_predictions (C,)
        and low_res_logits (C, 4h, 4w), C = 3 with multimask_output else 1. With an HQ-SAM decoder
        C = 1 (sam-hq's predictor: the best SAM mask plus the HQ mask, or with hq_token_only the
        HQ mask alone); other models ignore hq_token_only.
        """
        self._require_image()
        coords, labels = validate.check_points(point_coords, point_labels, batch=None)
        boxes = validate.check_boxes(box, batch=None)
        masks = validate.check_mask_input(mask_input, self._mask_size, batch=None)
        masks, iou, low = self.predict_batch(
            None if coords is None else coords[None], None if labels is None else labels[None],
            boxes, None if masks is None else masks[None], multimask_output, return_logits, hq_token_only,
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
        hq_token_only: bool = False,
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
            validate.check_float32(coords, "point_coords (scaled to the model input)")
        if boxes is not None:
            boxes = self.transform.apply_boxes(boxes, self.original_size)
            validate.check_float32(boxes, "box (scaled to the model input)")
        out = self.predict_jax(coords, labels, boxes, masks, multimask_output, return_logits, hq_token_only)
        return tuple(np.asarray(a) for a in out)

    def predict_jax(
        self,
        point_coords=None,
        point_labels=None,
        boxes=None,
        mask_input=None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The official `predict_torch`: B prompts with coordinates already in the resized-input
        frame (see `self.transform`); returns device arrays (B, C, H, W), (B, C), (B, C, 4h, 4w)."""
        self._require_image()
        B = validate.batch_size(point_coords, boxes, mask_input)
        prompts = pad_prompts(point_coords, point_labels, boxes, mask_input, B, self._mask_size)
        params, features, hq = self._leaves, self.features, self.hq_features
        if self.mesh is not None and B > 1:  # prompts split over the devices, image and model replicated
            n = self.mesh.size
            prompts = Prompts(*(None if a is None else jax.device_put(pad_batch(a, n), batch_sharding(self.mesh, a.ndim)) for a in prompts))
            params, (features, hq) = self._replicated_params(), jax.device_put((features, hq), replicated(self.mesh))
        hq_token_only = bool(hq_token_only) and hq is not None  # one compilation for models without an HQ token
        if self._image_pe is None:
            self._image_pe = self._dense_pe(self._leaves)
        image_pe = self._image_pe if self.mesh is None or B == 1 else jax.device_put(self._image_pe, replicated(self.mesh))
        low_res, iou = self._decode(params, features, prompts, hq_features=hq, multimask_output=multimask_output,
                                    hq_token_only=hq_token_only, image_pe=image_pe)
        low_res, iou = low_res[:B], iou[:B]
        threshold = None if return_logits else self.model.mask_threshold
        masks = upscale_masks_jit(low_res, self.model.config, self.input_size, self.original_size, threshold)
        return masks, iou, low_res

    predict_torch = predict_jax  # the official name: takes any arrays, returns JAX arrays

    @property
    def device(self) -> jax.Device:
        """The model's device (the first device of its parameters)."""
        return self.model.device

    @property
    def _param_sharding(self):
        return self._leaves[0].sharding

    def _replicated_params(self) -> list[jax.Array]:
        """The parameter leaves, replicated over the mesh (made once)."""
        if self._mesh_params is None:
            self._mesh_params = jax.device_put(self._leaves, replicated(self.mesh))
        return self._mesh_params

    @property
    def _mask_size(self) -> int:
        return self.model.prompt_encoder.mask_input_size[0]

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise validate.ImageNotSetError("An image must be set with .set_image(...) before mask prediction.")


def pad_prompts(
    point_coords: np.ndarray | None,
    point_labels: np.ndarray | None,
    boxes: np.ndarray | None,
    mask_input: np.ndarray | None,
    batch: int,
    mask_size: int,
) -> Prompts:
    """`batch` prompts (any of them None) -> NumPy `Prompts` padded to bucket(batch)
    prompts of bucket(N) points. The extra prompts are empty; slice the outputs to `batch`."""
    Bp = bucket(batch)
    n = 0 if point_coords is None else point_coords.shape[1]
    coords = np.zeros((Bp, bucket(n), 2), np.float32)
    labels = np.full((Bp, bucket(n)), IGNORE_LABEL, np.int32)
    if point_coords is not None:
        coords[:batch, :n] = point_coords
        labels[:batch, :n] = point_labels
    box = np.zeros((Bp, 4), np.float32)
    has_box = np.zeros(Bp, bool)
    if boxes is not None:
        box[:batch], has_box[:batch] = boxes, True
    mask = has_mask = None
    if mask_input is not None:
        mask = np.zeros((Bp, 1, mask_size, mask_size), np.float32)
        has_mask = np.zeros(Bp, bool)
        mask[:batch], has_mask[:batch] = mask_input, True
    return Prompts(coords, labels, box, has_box, mask, has_mask)
