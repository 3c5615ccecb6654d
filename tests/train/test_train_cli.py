"""`sam-jax train`: bad input gets one line naming the file, a resumed run equals an uninterrupted
one bit for bit, and the trained output loads with `sam_jax.load`."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from sam_jax import build_sam_from_config, load
from sam_jax.cli import main
from sam_jax.train.data import open_dataset
from sam_jax.train.config import TrainConfig
from sam_jax.train import trainer as trainer_module
from sam_jax.train.trainer import Trainer
from sam_jax.train.optim import OptimizerSettings
from sam_jax.train.prompts import PromptSettings
from sam_jax.train.synthetic_shapes import write_coco


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("data") / "shapes", 12, seed=5)


def _train(args, capsys):
    code = main(["train", "--checkpoint", "nowhere", "--output", "out", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if not line.endswith(" ...")]  # what failed, not the steps that started


def test_bad_data_names_the_file(tmp_path, shapes, capsys):
    code, err = _train(["--train-data", tmp_path / "missing.json"], capsys)
    assert code == 2 and len(err) == 1 and "missing.json" in err[0]

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, err = _train(["--train-data", bad], capsys)
    assert code == 2 and len(err) == 1 and "bad.json" in err[0] and "JSON" in err[0]

    data = json.loads(shapes.read_text())
    data["images"][3]["file_name"] = "gone.png"
    f = tmp_path / "missing_image.json"
    f.write_text(json.dumps(data))
    code, err = _train(["--train-data", f, "--image-dir", shapes.parent], capsys)
    assert code == 2 and len(err) == 1 and "gone.png" in err[0]

    # Every annotation broken (a wrong mask size, corrupt counts): fatal, naming the file and why.
    data = json.loads(shapes.read_text())
    for i, a in enumerate(data["annotations"]):
        a["segmentation"] = {"size": [10, 10], "counts": a["segmentation"]["counts"]} if i % 2 else {"size": [64, 64], "counts": 12345}
    f = tmp_path / "broken.json"
    f.write_text(json.dumps(data))
    code, err = _train(["--train-data", f, "--image-dir", shapes.parent], capsys)
    assert code == 2 and len(err) == 1 and "broken.json" in err[0] and "no image with a usable annotation" in err[0]

    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _train(["--train-data", empty], capsys)
    assert code == 2 and len(err) == 1 and "no image" in err[0]


def test_one_bad_annotation_is_skipped_and_counted(tmp_path, shapes):
    data = json.loads(shapes.read_text())
    data["annotations"][0]["segmentation"]["size"] = [32, 64]
    f = tmp_path / "one_bad.json"
    f.write_text(json.dumps(data))
    source = open_dataset(f, shapes.parent)
    assert len(source.skipped) == 1 and "annotation 1" in source.skipped[0] and "[32, 64]" in source.skipped[0]
    image, masks = source[0]
    assert image.shape == (64, 64, 3) and masks.ndim == 3 and masks.shape[1:] == (64, 64)
    # An image replaced after the start-up check by one of another size is named when it is read.
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / source.images[1].file.name)
    source.images[1] = source.images[1]._replace(file=tmp_path / source.images[1].file.name)
    with pytest.raises(ValueError, match=r"image is 10x20, its annotations say 64x64"):
        source[1]


CONFIG = TrainConfig(
    steps=4, batch_size=2, objects_per_image=2, log_every=1, checkpoint_every=2,
    prompts=PromptSettings(correction_points=1, mask_only_steps=1),
    optimizer=OptimizerSettings(learning_rate=1e-3, warmup_steps=1),
)


def test_resume_equals_uninterrupted_and_output_loads(tmp_path, shapes):
    source = open_dataset(shapes)
    model = build_sam_from_config("shapes_tiny", seed=1)
    full = Trainer(model, source, CONFIG, tmp_path / "full", quiet=True).run()

    part = Trainer(model, source, CONFIG, tmp_path / "part", quiet=True)
    assert part.run(stop_after=2) is None
    assert not (tmp_path / "part" / "config.json").exists()  # not a checkpoint until it is finished
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(model, source, CONFIG, tmp_path / "part", quiet=True)
    with pytest.raises(ValueError, match="different settings"):
        Trainer(model, source, CONFIG.replace(seed=3), tmp_path / "part", resume=True, quiet=True)
    resumed = Trainer(model, source, CONFIG, tmp_path / "part", resume=True, quiet=True)
    assert int(resumed.state.step) == 2
    resumed.run()

    a, b = nnx.state(full), nnx.state(load(tmp_path / "part"))
    for (path, x), (_, y) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b)):
        assert np.array_equal(np.asarray(x.get_value()), np.asarray(y.get_value())), path
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "examples_per_s"} for l in p.read_text().splitlines()]
    assert strip(tmp_path / "full" / "metrics.jsonl") == strip(tmp_path / "part" / "metrics.jsonl")
    assert (tmp_path / "full" / "train_record.json").read_bytes() == (tmp_path / "part" / "train_record.json").read_bytes()
    # Training changed the weights, and the base model was left as it was.
    base = build_sam_from_config("shapes_tiny", seed=1)
    assert not np.array_equal(nnx.state(full)["mask_decoder"]["iou_token"]["embedding"].get_value(),
                              nnx.state(base)["mask_decoder"]["iou_token"]["embedding"].get_value())
    assert np.array_equal(nnx.state(model)["mask_decoder"]["iou_token"]["embedding"].get_value(),
                          nnx.state(base)["mask_decoder"]["iou_token"]["embedding"].get_value())


def _interrupting(monkeypatch, at_call: int):
    """The compiled step, with Ctrl-C arriving while call number `at_call` is on its way back
    (after the state it was given was donated)."""
    real, calls = trainer_module.train_step_jit, []

    def step(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        if len(calls) == at_call:
            signal.raise_signal(signal.SIGINT)
        return out
    monkeypatch.setattr(trainer_module, "train_step_jit", step)


def test_ctrl_c_inside_a_step_keeps_the_state_and_its_count(tmp_path, shapes, monkeypatch):
    """Ctrl-C in the middle of a compiled step: the Trainer reports the steps it took, its state
    is the one after that step (not a donated, deleted one), and `run()` again continues to the
    model an uninterrupted run gives, bit for bit."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # what _uninterrupted defers over
    source = open_dataset(shapes)
    model = build_sam_from_config("shapes_tiny", seed=1)
    full = Trainer(model, source, CONFIG, tmp_path / "full", quiet=True).run()

    part = Trainer(model, source, CONFIG, tmp_path / "part", quiet=True)
    _interrupting(monkeypatch, at_call=3)
    with pytest.raises(KeyboardInterrupt):
        part.run()
    assert part.step == 3 and int(part.state.step) == 3 and part.saved_step == 2
    monkeypatch.undo()
    part.run()
    for (path, x), (_, y) in zip(nnx.to_flat_state(nnx.state(full)), nnx.to_flat_state(nnx.state(load(tmp_path / "part")))):
        assert np.array_equal(np.asarray(x.get_value()), np.asarray(y.get_value())), path

    # In the first call of a process (which compiles) Ctrl-C is not deferred: the count stays
    # what was taken, and what --resume continues from is on disk.
    first = Trainer(model, source, CONFIG, tmp_path / "first", quiet=True)
    _interrupting(monkeypatch, at_call=1)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert first.step == 0 and first.saved_step is None
