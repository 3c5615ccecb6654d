"""A sam-jax checkpoint folder is checked before it is trusted: its params/ against the digest
that was recorded when it was written (a flipped byte, another model's parameters put in its
place), its config.json against the stored shapes before any model is built (a hostile depth
would hang the build), and a damaged Orbax metadata file. Each ends in one line; a rerun's
"done before" is keyed to the weights that would be loaded."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from sam_jax import load
from sam_jax.convert import ConversionError, folder
from sam_jax.runners.model import ModelSpec


def load_params(directory: Path) -> dict:
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(load(directory)))}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture
def saved(tiny) -> Path:
    """The session's converted test_tiny folder (written by `folder.save`); tests copy it."""
    return tiny.model_dir


def test_the_digest_is_recorded_and_an_intact_folder_loads(saved, tmp_path):
    record = folder.read_record(saved)
    assert record[folder.PARAMS_DIGEST] == folder.params_digest(load_params(saved))
    assert ModelSpec(str(saved)).digest() == record["content_sha256"]
    load(saved)
    # A folder written before the files' digest was recorded still loads (nothing to check).
    old = _copy(saved, tmp_path / "old")
    del record[folder.PARAMS_DIGEST]
    (old / folder.RECORD_FILE).write_text(json.dumps(record))
    load(old)


def test_a_flipped_byte_is_refused(saved, tmp_path):
    damaged = _copy(saved, tmp_path / "damaged")
    data = max((p for p in (damaged / folder.PARAMS_DIR).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(ConversionError) as e:
        load(damaged)
    assert "does not hold the parameters that were written there" in _one_line(e)
    with pytest.raises(ConversionError):  # a rerun cannot name the damaged folder's outputs "done before"
        ModelSpec(str(damaged)).digest()


def test_another_models_params_are_refused(saved, tmp_path):
    config = folder.read_config(saved)
    params = {p: v + 0.01 for p, v in load_params(saved).items()}
    other_dir = folder.save(tmp_path / "other", config, params)
    swapped = _copy(saved, tmp_path / "swapped")
    shutil.rmtree(swapped / folder.PARAMS_DIR)
    shutil.copytree(other_dir / folder.PARAMS_DIR, swapped / folder.PARAMS_DIR)
    with pytest.raises(ConversionError) as e:
        load(swapped)
    assert "replaced" in _one_line(e)
    with pytest.raises(ConversionError):
        ModelSpec(str(swapped)).digest()


@pytest.mark.parametrize("field, value, expected", [
    ("encoder_depth", 100_000, "encoder_depth must be an integer in 1..256"),
    ("iou_head_depth", 10**9, "iou_head_depth must be an integer in 1..64"),
    ("num_multimask_outputs", 10**6, "num_multimask_outputs must be an integer in 0..64"),
    ("encoder_depth", 200, "its config.json does not describe its parameters: encoder_depth is 200 but the parameters hold 4 image_encoder.blocks"),
    ("decoder_depth", 60, "decoder_depth is 60 but the parameters hold 2 mask_decoder.transformer.layers"),
])
def test_config_claims_are_checked_before_building(saved, tmp_path, field, value, expected):
    edited = _copy(saved, tmp_path / "edited")
    config = json.loads((edited / folder.CONFIG_FILE).read_text())
    if field == "encoder_depth":
        config["encoder_global_attn_indexes"] = [1]
    config[field] = value
    (edited / folder.CONFIG_FILE).write_text(json.dumps(config))
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as e:
        load(edited)
    assert expected in _one_line(e)
    assert time.perf_counter() - t0 < 2.0  # nothing was built


@pytest.mark.parametrize("metadata", [
    b"garbage \x00\xff",
    ("[" * 100_000 + "]" * 100_000).encode(),
    json.dumps({"tree_metadata": {"a": [1, {"b": None}]}, "use_zarr3": "yes"}).encode(),
], ids=["bytes", "nested", "wrong-structure"])
def test_damaged_orbax_metadata_is_one_line(saved, tmp_path, metadata):
    damaged = _copy(saved, tmp_path / "metadata")
    (damaged / folder.PARAMS_DIR / "_METADATA").write_bytes(metadata)
    with pytest.raises(ConversionError) as e:
        load(damaged)
    assert "params/" in _one_line(e)
