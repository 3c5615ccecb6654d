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

from tests.reference.compare import assert_close
from tests.reference.official import official_at_size
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
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # after the status lines
    assert errors == [f"sam-jax export-stablehlo: error: output {out} already exists (use --overwrite to replace it)"]
    # --overwrite replaces an artifact folder of ours, never a folder with anything else in it.
    assert main(args + ["--overwrite"]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(args + ["--overwrite"]) == 2
    assert "not an exported encoder folder written by sam-jax" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    for bad, message in ((["--platforms", "cpu,metal"], "unknown platform(s) metal"), (["--batch-size", "0"], "positive integer")):
        with pytest.raises(SystemExit):
            main(args + ["--overwrite"] + bad)
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(p.name for p in out.iterdir()) == ["encoder.jaxexport", "signature.json", "weights.npz"]  # untouched


# ---------------------------------------------------------------------------------------- ONNX
ort = pytest.importorskip("onnxruntime")


def _ort(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("name, opset", [("test_tiny", 17), ("test_divisible", 17), ("test_tiny", 11)])
def test_onnx_encoder(cases, name, opset, tmp_path):
    """Batch 2 through onnxruntime against the official encoder: windows with padding
    (test_tiny) and without (test_divisible); the oldest supported opset too."""
    from sam_jax.export.onnx import export_encoder_onnx

    case = cases(name)
    path = export_encoder_onnx(case.model, tmp_path / "encoder.onnx", opset=opset)
    x = _images(2, case.config.image_size, seed=3)
    (out,) = _ort(path, {"image": x})
    assert_close(out, case.official.image_encoder(torch.from_numpy(x)).numpy(), what=f"{case.name} opset {opset}")


def test_onnx_encoder_feeds_decoder_at_resized_size(cases, tmp_path):
    """A model resized to 320: encoder.onnx -> decoder.onnx equals the official encoder and
    SamOnnxModel of the official model built at 320, end to end."""
    from segment_anything.utils.onnx import SamOnnxModel

    from sam_jax.export.onnx import export_encoder_onnx, export_onnx, onnx_inputs

    tiny = cases("test_tiny")
    official, _ = official_at_size(tiny.official, tiny.config, 320)
    model = load(tiny.model_dir, image_size=320)
    x = _images(1, 320, seed=4)
    (emb,) = _ort(export_encoder_onnx(model, tmp_path / "encoder.onnx"), {"image": x})
    ref_emb = official.image_encoder(torch.from_numpy(x)).numpy()
    assert emb.shape == (1, 32, 20, 20)
    assert_close(emb, ref_emb, what="embedding at 320")

    feed = onnx_inputs(model, emb, (240, 300), point_coords=np.array([[100.0, 80.0]]), point_labels=np.array([1]),
                       box=np.array([20.0, 30.0, 200.0, 180.0]))
    masks, scores, low = _ort(export_onnx(model, tmp_path / "decoder.onnx"), feed)
    ref_feed = {k: torch.from_numpy(v) for k, v in dict(feed, image_embeddings=ref_emb).items()}
    ref_masks, ref_scores, ref_low = (t.numpy() for t in SamOnnxModel(official, False)(**ref_feed))
    assert low.shape == ref_low.shape == (1, 4, 80, 80) and masks.shape == (1, 4, 240, 300)
    assert_close(low, ref_low, what="low-res masks")
    assert_close(scores, ref_scores, what="scores")
    assert_close(masks, ref_masks, what="mask logits")


def test_onnx_external_data(tiny, tmp_path):
    """Over the threshold (2 GB by default; lowered here) the weights go to <name>.data."""
    import onnx

    from sam_jax.export.onnx import export_encoder_onnx

    path = export_encoder_onnx(tiny.model, tmp_path / "enc.onnx", external_data_threshold=100_000)
    data = tmp_path / "enc.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.onnx", "enc.onnx.data"]  # no temporary left
    assert data.stat().st_size > 1_000_000 > 10 * path.stat().st_size  # the weights live in the data file
    graph = onnx.load(str(path), load_external_data=False).graph
    external = [t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer]
    assert sum(external) >= 20 and all(len(t.raw_data) < 1024 for t, e in zip(graph.initializer, external) if not e)
    x = _images(1, 256, seed=5)
    assert_close(_ort(path, {"image": x})[0], tiny.official.image_encoder(torch.from_numpy(x)).numpy(), what="external data")


def test_onnx_encoder_cli(tiny, tmp_path, capsys):
    out = tmp_path / "encoder.onnx"
    args = ["export-onnx", "--encoder", "--checkpoint", str(tiny.model_dir), "--output", str(out)]
    assert main(args) == 0
    x = _images(1, 256, seed=6)
    assert_close(_ort(out, {"image": x})[0], tiny.official.image_encoder(torch.from_numpy(x)).numpy(), what="cli")
    capsys.readouterr()
    assert main(args[:-1] + [str(tmp_path / "other.onnx"), "--return-single-mask"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sam-jax export-onnx: error: --return-single-mask applies to the decoder export, not to --encoder"]
    assert not (tmp_path / "other.onnx").exists()
