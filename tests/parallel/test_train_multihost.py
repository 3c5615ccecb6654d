"""`sam-jax train` in two processes of two CPU devices each, joined by jax.distributed (gloo): the
trained model equals a single-device run on the same batches (1e-5), a batch of 3 that 4 devices do
not divide included; the embedding cache is computed in shares; the Orbax state that both
processes saved restores, here in a single process (a run may resume on other devices)."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
from flax import nnx

from tests.reference import multiprocess
from tests.reference.compare import assert_close
from sam_jax import load
from sam_jax.cli import build_parser
from sam_jax.cli.train import config_from_args
from sam_jax.train.data import open_dataset
from sam_jax.train.trainer import Trainer
from sam_jax.train.synthetic_shapes import write_coco


def test_two_process_training_equals_single_device(tmp_path):
    data = write_coco(tmp_path / "shapes", 10, seed=2)
    base = resources.files("sam_jax") / "assets" / "shapes_tiny"
    argv = ["train", "--checkpoint", str(base), "--train-data", str(data), "--steps", "3", "--batch-size", "3",
            "--objects-per-image", "2", "--freeze", "image_encoder", "--checkpoint-every", "2", "--log-every", "1",
            "--correction-points", "1", "--mask-only-steps", "0", "--lr", "1e-3", "--warmup-steps", "1", "--quiet", "--cache-dir", ""]
    results = multiprocess.run(["-m", "sam_jax.cli", *argv, "--output", str(tmp_path / "two")], n=2, devices_per_process=2, timeout=400)
    for code, _, err in results:
        assert code == 0, err[-3000:]

    # The reference: one process, one device (mesh=None), the same settings from the same flags.
    args = build_parser().parse_args([*argv, "--output", str(tmp_path / "one")])
    source, config = open_dataset(data), config_from_args(args)
    model = load(base)
    Trainer(model, source, config, tmp_path / "one", quiet=True).run()

    two, one = tmp_path / "two", tmp_path / "one"
    assert (two / "train_record.json").read_bytes() == (one / "train_record.json").read_bytes()
    assert_close(np.load(two / "embeddings.npy"), np.load(one / "embeddings.npy"), 1e-5, "embeddings computed in shares")
    losses = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert len(losses(two)) == 3  # one writer: each step logged once
    assert_close(np.array(losses(two)), np.array(losses(one)), 1e-5, "losses")
    a, b = nnx.to_flat_state(nnx.state(load(two))), dict(nnx.to_flat_state(nnx.state(load(one))))
    for path, x in a:
        name = "/".join(map(str, path))
        if name.endswith("k_proj/bias"):
            # Zero gradient in exact arithmetic (softmax ignores a constant added to all of a
            # query's logits): Adam turns either side's rounding noise into steps of up to lr.
            assert np.abs(x.get_value() - b[path].get_value()).max() <= 3 * 1e-3, name
        else:
            assert_close(x.get_value(), b[path].get_value(), 1e-5, name)
    assert not np.array_equal(nnx.state(load(two))["mask_decoder"]["iou_token"]["embedding"].get_value(),
                              nnx.state(model)["mask_decoder"]["iou_token"]["embedding"].get_value())

    # Both processes saved the state at steps 2 and 3; one process restores the last exactly.
    assert sorted(p.name for p in (two / "state").iterdir() if p.name.isdigit()) == ["2", "3"]
    resumed = Trainer(model, source, config, two, resume=True, quiet=True)
    assert int(resumed.state.step) == 3
    final = dict(nnx.to_flat_state(nnx.state(load(two))))
    for path, x in nnx.to_flat_state(nnx.state(resumed.model())):
        assert np.array_equal(x.get_value(), final[path].get_value()), path
