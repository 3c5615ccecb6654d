"""Hugging Face SAM checkpoints: the safetensors reader and the HF <-> official key mapping.

Needs no `transformers`: the real HF vit_b key names and shapes are frozen in
tests/data/hf_sam_vit_b_keys.txt (from `transformers.SamModel(SamConfig()).state_dict()`)."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from sam_jax import get_config
from sam_jax.convert.hf import hf_to_official, is_hf_state_dict, official_to_hf
from sam_jax.convert.safetensors import read_safetensors

from tests.reference.official import build_official

HF_KEYS = Path(__file__).parent / "data" / "hf_sam_vit_b_keys.txt"
TIED = "prompt_encoder.shared_embedding.positional_embedding"


@pytest.fixture(scope="module")
def official() -> dict[str, np.ndarray]:
    """A small official model (test_tiny config), every tensor perturbed."""
    return {k: v.numpy() for k, v in build_official(get_config("test_tiny")).state_dict().items()}


def save(state: dict[str, np.ndarray], path: Path) -> Path:
    # safetensors.numpy wants distinct contiguous arrays (the two tied keys share one).
    save_file({k: np.array(v, order="C") for k, v in state.items()}, str(path))
    return path


def test_round_trip_through_safetensors(official, tmp_path):
    hf = official_to_hf(official)
    assert is_hf_state_dict(hf) and not is_hf_state_dict(official)
    assert TIED in hf and len(hf) == len(official) + 1
    back = hf_to_official(read_safetensors(save(hf, tmp_path / "model.safetensors")))
    assert back.keys() == official.keys()
    for k, v in official.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_tied_embedding_optional_but_checked(official):
    hf = official_to_hf(official)
    pe = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    # save_pretrained keeps only one of the tied pair; either one is enough.
    for drop in (TIED, "shared_image_embedding.positional_embedding"):
        only = {k: v for k, v in hf.items() if k != drop}
        np.testing.assert_array_equal(hf_to_official(only)[pe], official[pe])
    bad = dict(hf, **{TIED: hf[TIED] + 1})
    with pytest.raises(ValueError, match=TIED):
        hf_to_official(bad)


def test_vit_b_names_match_transformers():
    from segment_anything.build_sam import sam_model_registry

    with torch.device("meta"):  # shapes only, no memory or init time
        shapes = {k: tuple(v.shape) for k, v in sam_model_registry["vit_b"]().state_dict().items()}
    official = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
    expected = {}
    for line in HF_KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split()
            expected[key] = tuple(int(d) for d in shape.split(","))
    hf = official_to_hf(official)
    assert {k: v.shape for k, v in hf.items()} == expected
    assert {k: v.shape for k, v in hf_to_official(hf).items()} == shapes


def test_unknown_keys_are_all_named(official):
    hf = dict(official_to_hf(official))
    hf["vision_encoder.layers.0.attn.extra.weight"] = np.zeros(1)
    hf["mask_decoder.something"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"2 key.*mask_decoder\.something.*vision_encoder\.layers\.0\.attn\.extra"):
        hf_to_official(hf)
    with pytest.raises(ValueError, match="pixel_mean"):
        official_to_hf(dict(official, pixel_mean=np.zeros(3)))


def test_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    tensors = {
        "bf16": x.astype(ml_dtypes.bfloat16), "f16": x.astype(np.float16), "f32": x, "f64": x.astype(np.float64),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3) - 3, "i32": np.arange(4, dtype=np.int32),
        "u8": np.arange(250, 256, dtype=np.uint8), "bool": x > 0, "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(1.5, np.float32),
    }
    got = read_safetensors(save(tensors, tmp_path / "t.safetensors"))
    assert got.keys() == tensors.keys()
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert type(got[k]) is np.ndarray and got[k].flags.writeable, k  # a copy, not a memmap view


def _write(path: Path, header: dict, data: bytes, length: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes((len(raw) if length is None else length).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize("header, data, length, match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10**12, "header length"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "'a'.*outside"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "'a'.*expected 12"),
    ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, None, "'a'.*unsupported dtype"),
    ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "'a'.*malformed"),
])
def test_corrupt_files(tmp_path, header, data, length, match):
    path = _write(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(ValueError, match=f"bad.safetensors.*{match}"):
        read_safetensors(path)


def test_truncated_and_non_json(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\1\2\3")
    with pytest.raises(ValueError, match="short.safetensors"):
        read_safetensors(short)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes((4).to_bytes(8, "little") + b"{{{{")
    with pytest.raises(ValueError, match="junk.safetensors.*JSON"):
        read_safetensors(junk)
