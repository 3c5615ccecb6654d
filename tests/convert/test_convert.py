"""The converter: config inference, strict key checking, atomic output, the CLI, the registry."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

import sam_jax
from sam_jax import SamConfig, get_config
from sam_jax.convert.shapes import abstract_model
from sam_jax.convert import convert_checkpoint
from sam_jax.cli import main as cli
from sam_jax.convert.keys import infer_config, official_key, official_shape, params_to_official

from tests.reference.official import build_official


def _official_numpy(official):
    return {k: v.numpy() for k, v in official.state_dict().items()}


def _flat_params(model) -> dict:
    return {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}


def _assert_same_params(model, official):
    ours = params_to_official({p: np.asarray(v) for p, v in _flat_params(model).items()})
    ref = _official_numpy(official)
    assert ours.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


def test_converted_weights_equal_official(case):
    _assert_same_params(case.model, case.official)


@pytest.mark.parametrize("name", ["test_tiny", "test_divisible", "vit_b", "vit_l", "vit_h"])
def test_infer_config_from_shapes(name):
    cfg = get_config(name)
    model = abstract_model(cfg)
    shapes = {k: np.empty(shape) for k, shape in _official_shapes(model).items()}
    inferred = infer_config(shapes)
    expected = cfg.to_dict()
    for k, v in inferred.items():
        assert v == expected[k], k
    # Everything but the decoder head count (not visible in any shape), pixel statistics and the
    # preprocessing profile (MedSAM's weights are shaped as SAM's).
    assert set(expected) - set(inferred) == {"decoder_num_heads", "pixel_mean", "pixel_std", "mask_threshold", "preprocess"}


def _official_shapes(model):
    return {official_key(p)[0]: official_shape(p, tuple(v.shape)) for p, v in _flat_params(model).items()}


def test_cli_convert_and_load(tiny, tmp_path):
    out = tmp_path / "converted"
    r = subprocess.run(
        [sys.executable, "-m", "sam_jax.cli", "convert", "--checkpoint", str(tiny.pth), "--output", str(out),
         "--config", str(tiny.pth.with_suffix(".json"))],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    model = sam_jax.load(out)
    assert model.config == tiny.config
    _assert_same_params(model, tiny.official)
    # Without --overwrite an existing output is refused, and left alone.
    assert cli(["convert", "--checkpoint", str(tiny.pth), "--output", str(out), "--config", str(tiny.pth.with_suffix(".json"))]) == 2
    assert sam_jax.load(out).config == tiny.config


def test_model_type_cross_check(tiny, tmp_path, capsys):
    out = tmp_path / "x"
    assert cli(["convert", "--checkpoint", str(tiny.pth), "--output", str(out), "--model-type", "vit_b"]) == 2
    err = capsys.readouterr().err
    assert "does not match vit_b" in err and "encoder_embed_dim: checkpoint 64, vit_b 768" in err
    assert err.count("\n") == 1 and not out.exists()


def test_decoder_heads_default_to_official(tiny, tmp_path):
    """Shapes cannot tell the decoder head count: without a config it is the official 8."""
    out = tmp_path / "x"
    assert cli(["convert", "--checkpoint", str(tiny.pth), "--output", str(out)]) == 0
    cfg = sam_jax.load(out).config
    assert cfg.decoder_num_heads == 8
    assert cfg.encoder_num_heads == tiny.config.encoder_num_heads
    assert cfg.encoder_global_attn_indexes == tiny.config.encoder_global_attn_indexes


def _bad_checkpoint(tiny, tmp_path, edit) -> Path:
    state = dict(tiny.official.state_dict())
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    return path


def test_missing_extra_and_misshaped_keys_are_all_named(tiny, tmp_path, capsys):
    def edit(s):
        del s["mask_decoder.iou_token.weight"]
        s["image_encoder.extra.weight"] = torch.zeros(3)
        s["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 7)

    path = _bad_checkpoint(tiny, tmp_path, edit)
    out = tmp_path / "out"
    assert cli(["convert", "--checkpoint", str(path), "--output", str(out), "--config", str(tiny.pth.with_suffix(".json"))]) == 2
    err = capsys.readouterr().err
    assert "missing keys (1): mask_decoder.iou_token.weight" in err
    assert "unexpected keys (1): image_encoder.extra.weight" in err
    assert "prompt_encoder.no_mask_embed.weight: checkpoint (1, 7), model expects (1, 32)" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_registry_loads_pth_and_dir(tiny):
    from_dir = sam_jax.build_sam_from_config("test_tiny", checkpoint=tiny.model_dir)
    from_pth = sam_jax.build_sam_from_config(tiny.config, checkpoint=tiny.pth)
    _assert_same_params(from_dir, tiny.official)
    _assert_same_params(from_pth, tiny.official)
    with pytest.raises(ValueError, match="differs"):
        sam_jax.build_sam_from_config("test_divisible", checkpoint=tiny.model_dir)


def test_registry_random_weights():
    model = sam_jax.sam_model_registry["vit_b"](checkpoint=None)
    assert model.config == get_config("vit_b")
    assert model.image_encoder.blocks[0].attn.qkv.kernel.shape == (768, 2304)
    assert set(sam_jax.sam_model_registry) == {"default", "vit_h", "vit_l", "vit_b"}


def test_interrupted_save_leaves_nothing(tiny, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", boom)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(tiny.pth, out, config_file=tiny.pth.with_suffix(".json"))
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_atomically(tiny, tmp_path):
    from sam_jax.convert import convert_checkpoint

    out = tmp_path / "out"
    cfg_file = tiny.pth.with_suffix(".json")
    convert_checkpoint(tiny.pth, out, config_file=cfg_file)
    convert_checkpoint(tiny.pth, out, config_file=cfg_file, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    _assert_same_params(sam_jax.load(out), tiny.official)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused(tmp_path, capsys):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"x": _Evil(sentinel)}, protocol=2))
        z.writestr("evil/version", "3\n")
    out = tmp_path / "out"
    assert cli(["convert", "--checkpoint", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("os.system" in err or "posix.system" in err), err
    assert not sentinel.exists() and not out.exists()


def test_convert_without_torch(tiny, tmp_path):
    """The converter never needs torch: run it in a process where `import torch` fails."""
    out = tmp_path / "out"
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "from sam_jax.cli import main\n"
        f"rc = main(['convert', '--checkpoint', {str(tiny.pth)!r}, '--output', {str(out)!r}, '--config', {str(tiny.pth.with_suffix('.json'))!r}])\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _assert_same_params(sam_jax.load(out), tiny.official)


def test_hf_safetensors_checkpoint(tiny, tmp_path):
    from safetensors.numpy import save_file

    from sam_jax.convert.hf import official_to_hf

    hf = official_to_hf(_official_numpy(tiny.official))
    assert any(k.startswith("vision_encoder.") for k in hf)
    path = tmp_path / "model.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in hf.items()}, str(path))
    out = tmp_path / "out"
    assert cli(["convert", "--checkpoint", str(path), "--output", str(out), "--config", str(tiny.pth.with_suffix(".json"))]) == 0
    _assert_same_params(sam_jax.load(out), tiny.official)


def test_missing_checkpoint_file(tmp_path, capsys):
    assert cli(["convert", "--checkpoint", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize(("edit", "named"), [
    ({"encoder_embed_dim": 128}, "image_encoder.patch_embed.proj.weight: checkpoint (64, 3, 16, 16), model expects (128, 3, 16, 16)"),
    ({"image_size": 512}, "image_encoder.pos_embed: checkpoint (1, 16, 16, 64), model expects (1, 32, 32, 64)"),
    ({"encoder_global_attn_indexes": [0, 3]}, "image_encoder.blocks.0.attn.rel_pos_h: checkpoint (11, 16), model expects (31, 16)"),
    ({"decoder_depth": "2"}, "decoder_depth must be an integer in 1..64, got '2'"),
])
def test_hand_edited_config_fails_naming_the_mismatches(tiny, tmp_path, edit, named):
    import json
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(tiny.model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError) as info:
        sam_jax.load(folder)
    assert named in str(info.value) and "\n" not in str(info.value), str(info.value)
