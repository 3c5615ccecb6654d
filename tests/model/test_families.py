"""The SAM family end to end, each against its own PyTorch code on the same perturbed weights
(every parameter and every BatchNorm statistic changed): the file saved with torch.save (or, for
SlimSAM, transformers' save_pretrained), read by our converter, run through SamPredictor, and
compared with the family's own predictor (or model) on the same image and prompts.

    MobileSAM (vit_t, TinyViT at 1024)        mobile_sam.SamPredictor
    HQ-SAM (a small ViT config: window        segment_anything_hq.SamPredictor, hq_token_only and
      padding, 5 heads)                       multimask both ways
    MedSAM's preprocessing (small ViT)        a transcription of MedSAM's inference on the official modules
    SlimSAM-77's shape (embed 168, MLP 696)   transformers' SamModel on the same model.safetensors
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sam_jax import SamPredictor, get_config, load
from sam_jax.convert import read
from tests.reference.compare import assert_close, assert_masks_match
from tests.reference.families import HQ_SMALL, build_hq_official
from tests.reference.official import make_case, perturb

RNG = np.random.default_rng(0)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random photo-like image (uint8 RGB)."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    base = np.stack([np.sin(6 * xx + r.uniform(0, 6)), np.cos(5 * yy + r.uniform(0, 6)), np.sin(4 * (xx + yy))], -1)
    return np.clip(127 + 90 * base + r.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _compare_predictions(ours, ref, what: str, tol: float = 1e-4):
    """(masks, iou, low_res) of our predictor against the reference predictor's (logits masks)."""
    assert_close(ours[2], ref[2], tol=tol, what=f"{what}: low-res logits")
    assert_close(ours[1], ref[1], tol=tol, what=f"{what}: IoU predictions")
    assert_masks_match(ours[0] > 0, ref[0], what=f"{what}: masks")


def test_mobile_sam_matches_official(tmp_path):
    from mobile_sam import SamPredictor as Official
    from mobile_sam import sam_model_registry

    torch.manual_seed(0)
    # eval() again after perturbing: TinyViT's attention caches its gathered biases (`ab`) when put in eval mode.
    official = perturb(sam_model_registry["vit_t"]().eval(), seed=3).eval()
    assert any("running_var" in k for k in official.state_dict())  # BatchNorm statistics are in the file
    torch.save(official.state_dict(), tmp_path / "mobile_sam.pt")
    model = load(tmp_path / "mobile_sam.pt")
    assert model.config == get_config("vit_t")
    image = _image(96, 128)
    ref, ours = Official(official), SamPredictor(model)
    ref.set_image(image)
    ours.set_image(image)
    assert_close(ours.get_image_embedding(), ref.get_image_embedding().numpy(), tol=1e-4, what="vit_t embedding")
    prompts = [dict(point_coords=np.array([[40.0, 50.0]]), point_labels=np.array([1])),
               dict(box=np.array([10, 20, 90, 80]), multimask_output=False)]
    for p in prompts:
        _compare_predictions(ours.predict(**p, return_logits=True), ref.predict(**p, return_logits=True), f"vit_t {sorted(p)}")


def test_hq_sam_matches_official(tmp_path):
    from segment_anything_hq import SamPredictor as Official

    official = build_hq_official(HQ_SMALL)
    case = make_case("hq_small", tmp_path, HQ_SMALL, official)
    assert case.model.config.decoder == "hq"
    image = _image(70, 110, seed=1)
    ref, ours = Official(official), SamPredictor(case.model)
    ref.set_image(image)
    ours.set_image(image)
    assert_close(ours.get_image_embedding(), ref.get_image_embedding().numpy(), tol=1e-4, what="HQ embedding")
    prompts = [dict(point_coords=np.array([[30.0, 40.0], [80.0, 20.0]]), point_labels=np.array([1, 0])),
               dict(box=np.array([5, 10, 60, 66])),
               dict(point_coords=np.array([[50.0, 30.0]]), point_labels=np.array([1]), box=np.array([20, 5, 100, 60]))]
    # Every output rule (multimask or not, HQ mask alone or summed) on one prompt; the other prompt kinds once.
    settings = [(m, h) for m in (True, False) for h in (True, False)]
    for p, combos in zip(prompts, [settings[:1], settings[3:], settings]):
        for multimask, hq_only in combos:
            kw = dict(p, multimask_output=multimask, hq_token_only=hq_only, return_logits=True)
            _compare_predictions(ours.predict(**kw), ref.predict(**kw), f"HQ {sorted(p)} multimask={multimask} hq_only={hq_only}")
    # The official end-to-end forward, with a mask input as well.
    x = torch.from_numpy(np.ascontiguousarray(ref.transform.apply_image(image))).permute(2, 0, 1).float()
    record = {"image": x, "original_size": image.shape[:2], "boxes": torch.tensor([[10.0, 20.0, 120.0, 90.0]]),
              "mask_inputs": torch.from_numpy(RNG.normal(0, 3, (1, 1, 40, 40)).astype(np.float32))}
    theirs = official([record], multimask_output=True, hq_token_only=False)[0]
    mine = case.model([{k: v.numpy() if torch.is_tensor(v) else v for k, v in record.items()}], True, hq_token_only=False)[0]
    assert_close(mine["low_res_logits"], theirs["low_res_logits"].numpy(), tol=1e-4, what="HQ Sam.forward")


def test_medsam_preprocessing_matches_its_inference(tmp_path):
    """MedSAM's inference (MedSAM_Inference.py), transcribed on the official modules: the image
    resized to the full square, min-max to [0, 1], the box scaled per axis, single-mask output,
    the low-res logits resized to the original size in one step."""
    import torch.nn.functional as F

    from tests.reference.official import build_official

    cfg = dataclasses.replace(get_config("test_tiny"), preprocess="medsam")
    official = build_official(cfg, seed=4)
    case = make_case("medsam_tiny", tmp_path, cfg, official)
    H, W, S = 90, 150, cfg.image_size
    image = _image(H, W, seed=2)
    resized = np.asarray(torch.from_numpy(image).permute(2, 0, 1)[None].float())  # any square resize: the same array on both sides
    resized = F.interpolate(torch.from_numpy(resized), size=(S, S), mode="bilinear", align_corners=False).numpy()
    box = np.array([20.0, 10.0, 120.0, 70.0])

    x = torch.from_numpy(resized)
    x = (x - x.min()) / torch.clamp(x.max() - x.min(), min=1e-8)
    emb = official.image_encoder(x)
    box_s = torch.tensor(box / np.array([W, H, W, H]) * S, dtype=torch.float32)[None, None]
    sparse, dense = official.prompt_encoder(points=None, boxes=box_s, masks=None)
    low, iou = official.mask_decoder(image_embeddings=emb, image_pe=official.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    full = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)

    ours = SamPredictor(case.model)
    ours.set_torch_image(resized, (H, W))
    assert_close(ours.get_image_embedding(), emb.numpy(), tol=1e-4, what="MedSAM embedding")
    masks, scores, low_ours = ours.predict(box=box, multimask_output=False, return_logits=True)
    assert_close(low_ours, low[0].numpy(), tol=1e-4, what="MedSAM low-res logits")
    assert_close(scores, iou[0].numpy(), tol=1e-4, what="MedSAM IoU")
    assert_close(masks, full[0].numpy(), tol=1e-4, what="MedSAM one-step postprocessing")
    # set_image resizes to the square with Pillow and scales the box per axis.
    assert ours.transform.apply_image(image).shape == (S, S, 3)
    np.testing.assert_allclose(ours.transform.apply_boxes(box, (H, W))[0], box / np.array([W, H, W, H]) * S, rtol=1e-6)


def test_slimsam_matches_transformers(tmp_path):
    """SlimSAM-77's pruned shape (embed 168, 12 heads of 14, MLP 696: not 4x) in transformers'
    format, at 256 px to stay quick: our load of the saved folder against transformers' SamModel
    on the same file. transformers' decoder layer norms use eps 1e-6 where the official decoder's
    use 1e-5 (see convert/hf.py): the reference is set to the official eps, as sam-jax runs it."""
    transformers = pytest.importorskip("transformers", reason="transformers (a test extra) is not installed")
    config = transformers.SamConfig(vision_config={"hidden_size": 168, "mlp_dim": 696, "image_size": 256},
                                    prompt_encoder_config={"image_size": 256})
    torch.manual_seed(5)
    hf = transformers.SamModel(config).eval()
    with torch.no_grad():
        for t in hf.state_dict().values():
            t.add_(torch.randn(t.shape) * (0.5 * float(t.float().std()) if t.numel() > 1 and float(t.float().std()) > 0 else 0.05))
    hf.save_pretrained(tmp_path / "slimsam")
    model = load(tmp_path / "slimsam")
    assert (model.config.encoder_embed_dim, model.config.mlp_ratio * 168) == (168, pytest.approx(696))
    assert read(tmp_path / "slimsam").config == dataclasses.replace(get_config("slimsam_77"), image_size=256)
    for m in hf.mask_decoder.modules():
        if isinstance(m, torch.nn.LayerNorm) and m.eps == 1e-6 and "final" not in type(m).__name__:
            m.eps = 1e-5
    hf.mask_decoder.transformer.layer_norm_final_attn.eps = 1e-5

    image = _image(100, 140, seed=3)
    ours = SamPredictor(model)
    ours.set_image(image)
    pixels = np.zeros((1, 256, 256, 3), np.float32)
    resized = ours.transform.apply_image(image)
    pixels[0, : resized.shape[0], : resized.shape[1]] = (resized - np.array(model.config.pixel_mean)) / np.array(model.config.pixel_std)
    pixel_values = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    emb = hf.get_image_embeddings(pixel_values)
    assert_close(ours.get_image_embedding(), emb.numpy(), tol=1e-4, what="SlimSAM embedding")
    point = np.array([[60.0, 40.0]])
    scaled = torch.tensor(ours.transform.apply_coords(point, image.shape[:2]), dtype=torch.float32)[None, None]
    out = hf(image_embeddings=emb, input_points=scaled, input_labels=torch.tensor([[[1]]]), multimask_output=True)
    _, iou, low = ours.predict(point, np.array([1]), return_logits=True)
    assert_close(low, out.pred_masks[0, 0].numpy(), tol=1e-4, what="SlimSAM low-res logits")
    assert_close(iou, out.iou_scores[0, 0].numpy(), tol=1e-4, what="SlimSAM IoU")
