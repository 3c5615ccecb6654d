"""The official notebooks' and scripts' calls, transcribed, run against sam-jax with only the import
changed, and compared with the official package on the same weights. Where only a torch tensor
could satisfy a call, the JAX equivalent from the README's "Coming from segment_anything" table
is used instead (marked "JAX:")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import sam_jax
from tests.reference.compare import assert_close, assert_masks_match
from sam_jax import SamAutomaticMaskGenerator, SamPredictor
from sam_jax.utils.transforms import ResizeLongestSide


def _image(h=120, w=180, seed=0):
    r = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, np.uint8)
    img[h // 4 : h // 2, w // 5 : w // 2] = (200, 60, 30)
    img[h // 2 :, w // 2 :] = (30, 180, 90)
    return np.clip(img + r.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def sam(tiny):
    # The notebooks: sam = sam_model_registry[model_type](checkpoint=sam_checkpoint); sam.to(device=device)
    sam = sam_jax.build_sam_from_config("test_tiny", checkpoint=tiny.pth)
    assert sam.to(device="cpu") is sam
    return sam


def test_top_level_names():
    import segment_anything as official_build

    for name in ("SamAutomaticMaskGenerator", "SamPredictor", "sam_model_registry", "build_sam",
                 "build_sam_vit_h", "build_sam_vit_l", "build_sam_vit_b"):
        assert hasattr(sam_jax, name), name
    assert set(sam_jax.sam_model_registry) == set(official_build.sam_model_registry)
    assert sam_jax.build_sam is sam_jax.build_sam_vit_h  # as the official module
    assert sam_jax.sam_model_registry["default"] is sam_jax.build_sam_vit_h


def test_module_to_device_and_eval(sam):
    assert sam.eval() is sam
    assert sam.device == jax.devices("cpu")[0]
    assert sam.image_encoder.img_size == sam.config.image_size
    cpu1 = jax.devices("cpu")[1]  # the test session simulates 8 CPU devices
    assert sam.to(cpu1).device == cpu1
    assert all(leaf.devices() == {cpu1} for leaf in jax.tree.leaves(nnx.state(sam)))
    assert sam.to("cpu:2").device == jax.devices("cpu")[2]
    sam.to("cpu")
    with pytest.raises(ValueError, match="no cuda device here"):
        sam.to(device="cuda")
    with pytest.raises(ValueError, match="cpu has devices 0.."):
        sam.to("cpu:99")


def test_predictor_notebook(sam, tiny):
    from segment_anything import SamPredictor as Official

    image = _image()
    predictor, official = SamPredictor(sam), Official(tiny.official)
    assert predictor.device == sam.device
    predictor.set_image(image)
    official.set_image(image)

    input_point, input_label = np.array([[100, 40]]), np.array([1])
    masks, scores, logits = predictor.predict(point_coords=input_point, point_labels=input_label, multimask_output=True)
    ref = official.predict(point_coords=input_point, point_labels=input_label, multimask_output=True, return_logits=True)
    assert masks.shape == (3, *image.shape[:2])
    assert_masks_match(masks, ref[0], what="one point")
    assert_close(scores, ref[1], what="scores")

    # Refine with the best low-res logits, as the notebook does.
    mask_input = logits[np.argmax(scores), :, :]
    masks, _, _ = predictor.predict(point_coords=np.array([[100, 40], [150, 100]]), point_labels=np.array([1, 1]),
                                    mask_input=mask_input[None, :, :], multimask_output=False)
    ref = official.predict(point_coords=np.array([[100, 40], [150, 100]]), point_labels=np.array([1, 1]),
                           mask_input=ref[2][np.argmax(ref[1])][None, :, :], multimask_output=False, return_logits=True)
    assert masks.shape == (1, *image.shape[:2])
    assert_masks_match(masks, ref[0], what="mask input")

    input_box = np.array([30, 20, 110, 70])
    masks, _, _ = predictor.predict(point_coords=np.array([[60, 50]]), point_labels=np.array([0]),
                                    box=input_box[None, :], multimask_output=False)
    ref = official.predict(point_coords=np.array([[60, 50]]), point_labels=np.array([0]), box=input_box[None, :],
                           multimask_output=False, return_logits=True)
    assert_masks_match(masks, ref[0], what="box and point")

    # Batched boxes. JAX: jnp.asarray(...) (or jax.device_put(..., predictor.device)) for torch.tensor(..., device=...).
    input_boxes = np.array([[30, 20, 110, 70], [90, 60, 170, 115], [0, 0, 60, 60]])
    transformed = predictor.transform.apply_boxes_torch(jax.device_put(jnp.asarray(input_boxes), predictor.device), image.shape[:2])
    masks, iou, low = predictor.predict_torch(point_coords=None, point_labels=None, boxes=transformed, multimask_output=False)
    ref_boxes = official.transform.apply_boxes_torch(torch.tensor(input_boxes), image.shape[:2])
    assert_close(transformed, ref_boxes.numpy(), tol=1e-7, what="apply_boxes_torch")
    ref = official.predict_torch(point_coords=None, point_labels=None, boxes=ref_boxes, multimask_output=False, return_logits=True)
    assert masks.shape == (3, 1, *image.shape[:2]) and masks.dtype == jnp.bool_
    assert_masks_match(np.asarray(masks), ref[0].numpy(), what="predict_torch")
    assert_close(iou, ref[1].numpy(), what="predict_torch iou")


def test_set_torch_image_equivalent(sam, tiny):
    from segment_anything import SamPredictor as Official

    image = _image(90, 200, seed=3)
    predictor, official = SamPredictor(sam), Official(tiny.official)
    t = torch.as_tensor(official.transform.apply_image(image)).permute(2, 0, 1)[None].float()
    official.set_torch_image(t, image.shape[:2])
    # JAX: the same resized uint8 image as a (1, 3, h, w) array.
    predictor.set_torch_image(jnp.asarray(t.numpy()), image.shape[:2])
    assert predictor.original_size == tuple(official.original_size) and predictor.input_size == tuple(official.input_size)
    assert_close(predictor.get_image_embedding(), official.get_image_embedding().numpy(), what="set_torch_image embedding")
    with pytest.raises(ValueError, match="BCHW"):
        predictor.set_jax_image(jnp.zeros((3, 10, 10)), (10, 10))


def test_transforms_torch_equivalents():
    from segment_anything.utils.transforms import ResizeLongestSide as Official

    ours, ref = ResizeLongestSide(256), Official(256)
    assert ours.get_preprocess_shape(300, 500, 256) == Official.get_preprocess_shape(300, 500, 256)
    coords = np.random.default_rng(0).uniform(0, 500, size=(2, 5, 2)).astype(np.float32)
    assert_close(ours.apply_coords_torch(coords, (300, 500)), ref.apply_coords_torch(torch.from_numpy(coords), (300, 500)).numpy(), tol=1e-7)
    # Shrinking (antialiased) and enlarging, both axes. The official apply_image_torch computes the
    # target size from shape[0] and shape[1] (batch and channels, a known bug); ours from H and W,
    # so the reference is the F.interpolate call it makes, at the intended size.
    for h, w in ((300, 500), (100, 64), (513, 257)):
        x = np.random.default_rng(h).uniform(0, 255, size=(2, 3, h, w)).astype(np.float32)
        out = ours.apply_image_torch(jnp.asarray(x))
        size = Official.get_preprocess_shape(h, w, 256)
        expected = torch.nn.functional.interpolate(torch.from_numpy(x), size, mode="bilinear", align_corners=False, antialias=True)
        assert_close(out, expected.numpy(), tol=1e-5, what=f"apply_image_torch {h}x{w}")


def test_batched_sam_call(sam, tiny):
    """The predictor notebook's last section: Sam(batched_input, multimask_output)."""
    images = [_image(120, 180, 1), _image(200, 100, 2)]
    boxes = [np.array([[30, 20, 110, 70], [0, 0, 60, 60]]), np.array([[10, 10, 80, 150]])]
    resize_transform = ResizeLongestSide(sam.image_encoder.img_size)

    def prepare_image(image, transform, device):
        # JAX: jax.device_put(...) for torch.as_tensor(..., device=device.device).
        image = transform.apply_image(image)
        return jnp.transpose(jax.device_put(image, device.device), (2, 0, 1))

    batched_input = [
        {"image": prepare_image(im, resize_transform, sam),
         "boxes": resize_transform.apply_boxes_torch(jnp.asarray(b), im.shape[:2]),
         "original_size": im.shape[:2]}
        for im, b in zip(images, boxes)
    ]
    batched_output = sam(batched_input, multimask_output=False)

    from segment_anything.utils.transforms import ResizeLongestSide as Official

    rt = Official(tiny.official.image_encoder.img_size)
    with torch.no_grad():
        ref = tiny.official([
            {"image": torch.as_tensor(rt.apply_image(im)).permute(2, 0, 1).contiguous(),
             "boxes": rt.apply_boxes_torch(torch.as_tensor(b), im.shape[:2]), "original_size": im.shape[:2]}
            for im, b in zip(images, boxes)
        ], multimask_output=False)
    for i, (o, r) in enumerate(zip(batched_output, ref)):
        assert o["masks"].shape == tuple(r["masks"].shape)
        assert_close(o["iou_predictions"], r["iou_predictions"].numpy(), what=f"image {i} iou")
        assert_close(o["low_res_logits"], r["low_res_logits"].numpy(), what=f"image {i} low-res")
        differ = np.asarray(o["masks"]) != r["masks"].numpy()
        assert differ.mean() < 1e-3, f"image {i}: {differ.sum()} mask pixels differ"


def test_automatic_mask_generator_notebook(sam, tiny):
    from segment_anything import SamAutomaticMaskGenerator as Official

    image = _image(96, 128, seed=5)
    kwargs = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    masks = SamAutomaticMaskGenerator(sam, **kwargs).generate(image)
    ref = Official(tiny.official, **kwargs).generate(image)
    assert len(masks) == len(ref) > 0
    assert masks[0].keys() == ref[0].keys()
    # The notebook's second generator: every option set.
    options = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=1,
                   crop_n_points_downscale_factor=2, min_mask_region_area=20)
    masks2 = SamAutomaticMaskGenerator(model=sam, **options).generate(image)
    ref2 = Official(model=tiny.official, **options).generate(image)
    assert len(masks2) == len(ref2)
    assert [m["crop_box"] for m in masks2] == [list(r["crop_box"]) for r in ref2]
