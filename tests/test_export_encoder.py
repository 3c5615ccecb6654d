"""The image encoder exported: the `jax.export` artifact (deserialized and run in a process that
never imports sam-jax) and the ONNX encoder (onnxruntime), each against the official encoder on
perturbed weights, at the checkpoint's size and at a resized one, plus their CLIs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import assert_close, official_at_size
from sam_jax import load
from sam_jax.cli import main
from sam_jax.export.stablehlo import export_encoder_stablehlo, run_encoder_stablehlo

# Runs each artifact on each input with nothing but jax and numpy, as a user without sam-jax would.
RUNNER = """
import sys, jax, numpy as np
for folder, x, out in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):
    exported = jax.export.deserialize(bytearray(open(folder + "/encoder.jaxexport", "rb").read()))
    weights = dict(np.load(folder + "/weights.npz"))
    np.save(out, exported.call(weights, np.load(x)))
assert not any(m.split(".")[0] in ("sam_jax", "flax", "torch") for m in sys.modules), "model code was imported"
"""


def _images(n, size, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def test_stablehlo_artifact_runs_without_sam_jax(cases, tmp_path):
    """A symbolic-batch artifact (batch 1 and 3) and a fixed-batch one of a model resized to 192,
    against the official encoders (at 256, and built at 192 with F.interpolate-resized weights)."""
    tiny = cases("test_tiny")
    at192, _ = official_at_size(tiny.official, tiny.config, 192)
    runs = [  # (artifact, input, reference)
        (export_encoder_stablehlo(tiny.model, tmp_path / "any_batch"), _images(1, 256), tiny.official),
        (tmp_path / "any_batch", _images(3, 256, seed=1), tiny.official),
        (export_encoder_stablehlo(load(tiny.model_dir, image_size=192), tmp_path / "at192", batch_size=1), _images(1, 192), at192),
    ]
    argv = []
    for i, (folder, x, _) in enumerate(runs):
        np.save(tmp_path / f"x{i}.npy", x)
        argv += [str(folder), str(tmp_path / f"x{i}.npy"), str(tmp_path / f"y{i}.npy")]
    subprocess.run([sys.executable, "-c", RUNNER, *argv], check=True, cwd=tmp_path)
    for i, (folder, x, official) in enumerate(runs):
        ref = official.image_encoder(torch.from_numpy(x)).numpy()
        assert_close(np.load(tmp_path / f"y{i}.npy"), ref, what=f"{folder.name} batch {len(x)}")
    signature = json.loads((tmp_path / "at192" / "signature.json").read_text())
    assert signature["image"]["shape"] == [1, 3, 192, 192] and signature["image_embeddings"]["shape"] == [1, 32, 12, 12]
    assert json.loads((tmp_path / "any_batch" / "signature.json").read_text())["image"]["shape"][0] == "B"


def test_stablehlo_cli(tiny, tmp_path, capsys):
    out = tmp_path / "enc"
    args = ["export-stablehlo", "--checkpoint", str(tiny.model_dir), "--output", str(out)]
    # Lowered for accelerators too (checked here on CPU); the artifact runs on any of them.
    assert main(args + ["--platforms", "cpu,cuda,tpu"]) == 0
    assert json.loads((out / "signature.json").read_text())["platforms"] == ["cpu", "cuda", "tpu"]
    x = _images(2, 256, seed=2)
    assert_close(run_encoder_stablehlo(out)(x), tiny.official.image_encoder(torch.from_numpy(x)).numpy(), what="cli artifact")

    capsys.readouterr()
    assert main(args) == 2  # exists, no --overwrite
    assert main(args + ["--overwrite", "--platforms", "cpu,metal"]) == 2
    assert main(args + ["--overwrite", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "already exists" in err[0] and "unknown platform(s) metal" in err[1] and "batch_size" in err[2]
    assert sorted(p.name for p in out.iterdir()) == ["encoder.jaxexport", "signature.json", "weights.npz"]  # untouched
