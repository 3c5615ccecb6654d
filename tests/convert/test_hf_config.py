"""Hugging Face checkpoints come with a transformers `config.json`: the converter reads it (the
mask decoder's head count is in no tensor shape), takes the model folder as input, accepts that
config.json as --config, and refuses what it cannot run as written rather than assume.

The config.json files are written here by hand, with the field names and defaults of
transformers' `models/sam/configuration_sam.py` (SamVisionConfig, SamPromptEncoderConfig,
SamMaskDecoderConfig), so the test needs no transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import sam_jax
from sam_jax.convert import check_params, read
from sam_jax.cli import main as cli
from sam_jax.config import SamConfig
from sam_jax.convert import read_config_file
from sam_jax.convert.hf import official_to_hf

from tests.reference.compare import assert_close


TRANSFORMERS_DEFAULTS = {  # the __init__ defaults of configuration_sam.py
    "vision_config": {
        "hidden_size": 768, "output_channels": 256, "num_hidden_layers": 12, "num_attention_heads": 12,
        "num_channels": 3, "image_size": 1024, "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0, "initializer_range": 1e-10, "qkv_bias": True, "mlp_ratio": 4.0, "use_abs_pos": True,
        "use_rel_pos": True, "window_size": 14, "global_attn_indexes": [2, 5, 8, 11], "num_pos_feats": 128,
    },
    "prompt_encoder_config": {
        "hidden_size": 256, "image_size": 1024, "patch_size": 16, "mask_input_channels": 16,
        "num_point_embeddings": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
    },
    "mask_decoder_config": {
        "hidden_size": 256, "hidden_act": "relu", "mlp_dim": 2048, "num_hidden_layers": 2, "num_attention_heads": 8,
        "attention_downsample_rate": 2, "num_multimask_outputs": 3, "iou_head_depth": 3, "iou_head_hidden_dim": 256,
        "layer_norm_eps": 1e-6,
    },
}


def hf_config(cfg: SamConfig, diff_only: bool = False) -> dict:
    """`cfg` as transformers' SamConfig.save_pretrained writes it: every field (older versions,
    with generic PretrainedConfig fields), or only those that differ from the defaults."""
    vision = {
        "hidden_size": cfg.encoder_embed_dim, "output_channels": cfg.prompt_embed_dim,
        "num_hidden_layers": cfg.encoder_depth, "num_attention_heads": cfg.encoder_num_heads, "num_channels": cfg.in_chans,
        "image_size": cfg.image_size, "patch_size": cfg.patch_size, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0, "initializer_range": 1e-10, "qkv_bias": cfg.qkv_bias, "mlp_ratio": cfg.mlp_ratio,
        "use_abs_pos": cfg.use_abs_pos, "use_rel_pos": cfg.use_rel_pos, "window_size": cfg.window_size,
        "global_attn_indexes": list(cfg.encoder_global_attn_indexes), "num_pos_feats": cfg.prompt_embed_dim // 2,
        "mlp_dim": int(cfg.encoder_embed_dim * cfg.mlp_ratio), "model_type": "sam_vision_model",
        "return_dict": True, "torchscript": False, "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    }
    prompt = {
        "hidden_size": cfg.prompt_embed_dim, "image_size": cfg.image_size, "patch_size": cfg.patch_size,
        "mask_input_channels": cfg.mask_in_chans, "num_point_embeddings": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
    }
    decoder = {
        "hidden_size": cfg.prompt_embed_dim, "hidden_act": "relu", "mlp_dim": cfg.decoder_mlp_dim,
        "num_hidden_layers": cfg.decoder_depth, "num_attention_heads": cfg.decoder_num_heads,
        "attention_downsample_rate": cfg.attention_downsample_rate, "num_multimask_outputs": cfg.num_multimask_outputs,
        "iou_head_depth": cfg.iou_head_depth, "iou_head_hidden_dim": cfg.iou_head_hidden_dim, "layer_norm_eps": 1e-6,
    }
    subs = {"vision_config": vision, "prompt_encoder_config": prompt, "mask_decoder_config": decoder}
    if diff_only:  # what `to_diff_dict` leaves out: the values equal to transformers' defaults
        for name, sub in subs.items():
            for k in [k for k, v in sub.items() if TRANSFORMERS_DEFAULTS[name].get(k, object()) == v]:
                del sub[k]
    return {"_name_or_path": "", "architectures": ["SamModel"], "initializer_range": 0.02, "model_type": "sam",
            "torch_dtype": "float32", "transformers_version": "4.29.0.dev0",
            **subs}


@pytest.fixture
def hf_folder(tiny, tmp_path) -> Path:
    """A transformers-style model folder (model.safetensors + config.json) of the tiny official
    model, whose mask decoder has 4 heads, not 8."""
    from safetensors.numpy import save_file

    assert tiny.config.decoder_num_heads != 8
    folder = tmp_path / "sam-hf"
    folder.mkdir()
    state = {k: v.numpy() for k, v in tiny.official.state_dict().items()}
    save_file({k: np.array(v, order="C") for k, v in official_to_hf(state).items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf_config(tiny.config), indent=2))
    return folder


def _decoder_parity(model, official):
    """The mask decoder on random embeddings and prompts, against the official one."""
    cfg = model.config
    g = cfg.image_size // cfg.patch_size
    r = np.random.default_rng(0)
    emb = r.normal(size=(1, cfg.prompt_embed_dim, g, g)).astype(np.float32)
    pts = r.uniform(0, cfg.image_size, size=(2, 3, 2)).astype(np.float32)
    labels = np.array([[1, 0, 1], [1, 1, 0]])
    t = torch.from_numpy
    sp, de = official.prompt_encoder(points=(t(pts), t(labels)), boxes=None, masks=None)
    ref, ref_iou = official.mask_decoder(image_embeddings=t(emb), image_pe=official.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sp, dense_prompt_embeddings=de, multimask_output=True)
    pe = model.prompt_encoder
    sparse, dense = pe((jnp.asarray(pts), jnp.asarray(labels)), None, None)
    masks, iou = model.mask_decoder(jnp.asarray(emb), pe.get_dense_pe(), sparse, dense, True)
    assert_close(masks, ref.numpy(), what="low-res masks")
    assert_close(iou, ref_iou.numpy(), what="iou predictions")


def test_folder_converts_with_its_config(tiny, hf_folder, tmp_path):
    out = tmp_path / "out"
    assert cli(["convert", "--checkpoint", str(hf_folder), "--output", str(out)]) == 0
    model = sam_jax.load(out)
    assert model.config == tiny.config  # decoder_num_heads 4, from config.json
    _decoder_parity(model, tiny.official)


def test_loader_reads_the_folder_and_a_diff_config(tiny, hf_folder):
    """transformers writes only the fields that differ from its defaults; the loader takes the
    folder, or the weights file with config.json beside it."""
    (hf_folder / "config.json").write_text(json.dumps(hf_config(tiny.config, diff_only=True)))
    assert "num_channels" not in (hf_folder / "config.json").read_text()
    for source in (hf_folder, hf_folder / "model.safetensors"):
        config, params, _ = read(source)
        assert config == tiny.config
        check_params(config, params)


def test_without_config_refused_not_assumed(hf_folder, tmp_path, capsys):
    """The attack: 8 heads assumed, wrong masks, exit code 0. Now a one-line refusal."""
    (hf_folder / "config.json").unlink()
    out = tmp_path / "out"
    assert cli(["convert", "--checkpoint", str(hf_folder), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err and "head count" in err, err
    assert not out.exists()
    with pytest.raises(ValueError, match="config.json"):
        sam_jax.load(hf_folder / "model.safetensors")


def test_hf_config_as_config_file(tiny, hf_folder, tmp_path):
    """`--config` takes a transformers config.json too (convert_checkpoint reads it so)."""
    weights = tmp_path / "elsewhere" / "model.safetensors"
    weights.parent.mkdir()
    shutil.move(hf_folder / "model.safetensors", weights)
    config = read_config_file(hf_folder / "config.json")
    assert config == tiny.config
    assert read(weights, config=config).config == tiny.config


@pytest.mark.parametrize(("sub", "field", "value", "message"), [
    ("mask_decoder_config", "hidden_act", "gelu", "mask_decoder_config.hidden_act is 'gelu'"),
    ("vision_config", "layer_norm_eps", 1e-5, "vision_config.layer_norm_eps is 1e-05"),
    ("prompt_encoder_config", "num_point_embeddings", 6, "num_point_embeddings is 6"),
    ("prompt_encoder_config", "hidden_size", 64, "prompt_encoder_config.hidden_size 64 differs"),
    ("vision_config", "num_hidden_layers", 5, "encoder_depth: checkpoint 4"),  # contradicts the tensors
    (None, "model_type", "sam2", "describes a 'sam2' model"),
])
def test_what_cannot_run_as_written_is_refused(tiny, hf_folder, tmp_path, capsys, sub, field, value, message):
    data = hf_config(tiny.config)
    (data[sub] if sub else data)[field] = value
    (hf_folder / "config.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert cli(["convert", "--checkpoint", str(hf_folder), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()
