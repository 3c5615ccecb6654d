"""It learns: `sam-jax train` (the real CLI path) on generated shapes, then held-out images.

The heavy from-scratch run is `benchmarks/train_shapes.py` (RESULTS.md). Here, within CI's
budget, the shipped tiny model's mask decoder is re-initialised and trained again on its frozen
encoder (cached embeddings, the common cheap fine-tune): the loss must fall and the one-click mIoU
(`sam_jax.evaluation`'s point protocol, score selection) must rise far above the untrained
decoder's, and above the best fixed-radius disk at the click; the run's own validation must report
that same number.
The shipped model itself must beat the disk baseline by a clear margin, three clicks must beat
one, and its predicted IoU must follow the true IoU; its automatic masks are many and distinct.
Bars calibrated on the shipped model (seed 0 only; see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import sam_jax
from sam_jax import assets
from sam_jax.convert import folder as checkpoint_folder
from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator
from sam_jax.evaluation import disk_baseline, evaluate
from sam_jax.io.coco import read_annotations
from sam_jax.train.data import open_dataset
from sam_jax.train.synthetic_shapes import make_example, write_coco

from tests.reference.models import with_fresh_output_heads


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    return open_dataset(write_coco(tmp_path_factory.mktemp("val") / "val", 40, seed=424242))


@pytest.fixture(scope="module")
def shipped():
    return sam_jax.load(assets.SHAPES_TINY)


def test_shipped_model_segments_held_out_shapes(shipped, val):
    data = read_annotations(val.name)
    result = evaluate(shipped, data, prompt="clicks", clicks=3)
    box = evaluate(shipped, data, prompt="box")
    disk, _ = disk_baseline(data)
    one, three = result.miou(1), result.miou(3)
    corr = np.corrcoef([o.ious[0] for o in result.objects], [o.predicted_ious[0] for o in result.objects])[0, 1]
    print(f"shipped: 1 click {one:.3f}, 3 clicks {three:.3f}, box {box.miou():.3f}, disk {disk:.3f}, corr {corr:.2f}")
    assert one >= 0.5 and one >= disk + 0.1
    assert three > one
    assert corr > 0.3


def test_amg_finds_the_shapes(shipped):
    # The tiny model's logits are soft at 64x64 (stability scores stay low), so the official
    # filters are relaxed; box NMS still removes duplicates.
    image, masks = make_example(seed=99, index=3, max_objects=4)
    records = SamAutomaticMaskGenerator(shipped, points_per_side=12, pred_iou_thresh=0.0, stability_score_thresh=0.0).generate(image)
    segs = np.array([r["segmentation"] for r in records])
    assert len({s.tobytes() for s in segs if s.any()}) >= 20  # distinct, non-empty masks
    best = [max((s & m).sum() / (s | m).sum() for s in segs) for m in masks]
    assert max(best) > 0.7 and sorted(best)[-2] > 0.4


def test_cli_training_learns(tmp_path, shipped, val):
    # The shipped model with its output heads (mask tokens, hypernetworks, IoU token and head)
    # re-initialised: it has to learn again which masks to draw and how good they are.
    fresh = with_fresh_output_heads(shipped, seed=7)
    init = tmp_path / "init"
    checkpoint_folder.save(init, fresh.config, {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(fresh))})
    train = write_coco(tmp_path / "train", 240, seed=11)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sam_jax.cli", "train", "--checkpoint", init, "--train-data", train, "--val-data", val.name,
           "--val-images", "40", "--output", out, "--steps", "150", "--batch-size", "8", "--objects-per-image", "4",
           "--lr", "3e-3", "--schedule", "cosine", "--warmup-steps", "10", "--weight-decay", "0.05", "--clip-norm", "1",
           "--correction-points", "2", "--mask-only-steps", "1", "--freeze", "image_encoder", "--log-every", "10",
           "--checkpoint-every", "0", "--quiet", "--cache-dir", ""]
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "embeddings.npy").is_file()  # frozen encoder: images embedded once
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [l["loss"] for l in lines if "loss" in l]
    untrained = evaluate(fresh, val.name, prompt="point").miou()
    trained = sam_jax.load(out)
    after = evaluate(trained, val.name, prompt="point").miou()
    disk, _ = disk_baseline(val.name)
    print(f"heads from scratch: loss {np.mean(losses[:2]):.3f} -> {np.mean(losses[-3:]):.3f}, "
          f"mIoU untrained {untrained:.3f} -> {after:.3f} (disk {disk:.3f})")
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:2])
    assert after >= untrained + 0.3 and after > disk
    assert lines[-1]["val_miou_1click"] == pytest.approx(after, abs=1e-6)
    # The frozen encoder did not change.
    enc = lambda m: nnx.state(m.image_encoder)["blocks"][0]["attn"]["qkv"]["kernel"].get_value()
    assert np.array_equal(enc(trained), enc(shipped))
