"""The device side: pure functions of `(graphdef, params, arrays)` that the compiler sees whole.

Each stateful host class has its device module of the same name: `SamPredictor`
(`sam_jax/predictor.py`) runs `functional/predictor.py`, `SamAutomaticMaskGenerator`
(`sam_jax/automatic_mask_generator.py`) runs `functional/automatic_mask_generator.py`. The
predictor's functions are the core API and are re-exported here:

    graphdef, params = nnx.split(model)
    emb = sam_jax.functional.embed_images_jit(graphdef, params, images, input_sizes)
"""

from .predictor import (
    ImageFeatures, Prompts, bind_model, bucket, decode_prompts, decode_prompts_jit, dense_pe, embed_images, embed_images_jit,
    image_features, image_features_jit, upscale_masks, upscale_masks_jit,
)

__all__ = [
    "ImageFeatures", "Prompts", "bind_model", "bucket", "decode_prompts", "decode_prompts_jit", "dense_pe", "embed_images",
    "embed_images_jit", "image_features", "image_features_jit", "upscale_masks", "upscale_masks_jit",
]
