"""Model selection, TensorBoard events and exports of a training run.

One small run (frozen encoder, cached embeddings) validates at every step and stops early. Only
the prompt encoder's mask downscaling trains: the one-click protocol gives no mask input, so the
one-click mIoU cannot change and the run must stop after `patience` validations with best/ at
step 1, while the models of the steps differ (later rounds feed masks back)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from flax import nnx
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from sam_jax import build_sam_from_config, load
from sam_jax.cli import main
from sam_jax.convert import folder
from sam_jax.evaluation import evaluate
from sam_jax.train.config import TrainConfig
from sam_jax.train.data import open_dataset
from sam_jax.train.export import export_step, saved_steps
from sam_jax.train.optim import OptimizerSettings
from sam_jax.train.prompts import PromptSettings
from sam_jax.train.run_folder import EVENTS_FILE
from sam_jax.train.synthetic_shapes import write_coco
from sam_jax.train.trainer import Selection, Trainer

CONFIG = TrainConfig(
    steps=6, batch_size=2, objects_per_image=2, log_every=1, val_every=1, patience=2, checkpoint_every=1, keep_checkpoints=10,
    freeze=("image_encoder", "mask_decoder", "prompt_encoder/(?!mask_downscaling)"),
    prompts=PromptSettings(correction_points=1, mask_only_steps=1),
    optimizer=OptimizerSettings(learning_rate=1e-2, warmup_steps=0, schedule="constant"),
)


def _params(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def _same(a, b) -> bool:
    pa, pb = _params(a), _params(b)
    return pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("selection")
    source = open_dataset(write_coco(tmp / "shapes", 6, seed=5))
    base = build_sam_from_config("shapes_tiny", seed=1)
    folder.save(tmp / "base", base.config, _params(base))
    last = Trainer(base, source, CONFIG, tmp / "run", val_data=source, quiet=True).run()
    lines = [json.loads(l) for l in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return tmp, source, base, last, lines


def test_early_stop_and_best_model(run):
    tmp, source, base, last, lines = run
    val = [l for l in lines if "val_miou_1click" in l]
    assert [l["step"] for l in val] == [1, 2, 3] and len({l["val_miou_1click"] for l in val}) == 1
    assert lines[-1] == {"step": 3, "early_stop": True}
    assert max(l["step"] for l in lines) == 3 and saved_steps(tmp / "run") == [1, 2, 3]
    best = json.loads((tmp / "run" / "best" / "record.json").read_text())
    assert best["step"] == 1 and best["val_miou_1click"] == val[0]["val_miou_1click"]
    # best/ and the run's own (last) model are the states of steps 1 and 3; they differ.
    assert _same(load(tmp / "run" / "best"), load(export_step(tmp / "run", base, tmp / "step1", step=1)))
    assert _same(last, load(tmp / "run")) and _same(last, load(export_step(tmp / "run", base, tmp / "step3", step=3)))
    assert json.loads((tmp / "run" / "record.json").read_text())["step"] == 3
    assert not _same(load(tmp / "run" / "best"), last)
    # The number selected on is `sam-jax eval --prompt point --select score` of best/.
    assert evaluate(load(tmp / "run" / "best"), source.name, prompt="point").miou() == pytest.approx(best["val_miou_1click"], abs=1e-6)
    # A resumed run that had stopped stays stopped: nothing is trained or logged again.
    again = Trainer(base, source, CONFIG, tmp / "run", val_data=source, resume=True, quiet=True).run()
    assert _same(again, last)
    assert [json.loads(l) for l in (tmp / "run" / "metrics.jsonl").read_text().splitlines()] == lines


def test_selection_rule():
    s = Selection()
    for step, value in [(1, 0.5), (2, 0.6), (3, 0.6), (4, 0.55)]:
        s = s.update(step, value)
    assert (s.best_step, s.best, s.since_best) == (2, 0.6, 2)  # a tie is no improvement
    assert s.exhausted(2) and not s.exhausted(3) and not s.exhausted(0)
    assert s.update(5, 0.61) == Selection(5, 0.61, 0)


def test_export_command(run, capsys):
    tmp, _, base, _, _ = run
    out = tmp / "cli_step2"
    assert main(["train-export", "--run", str(tmp / "run"), "--checkpoint", str(tmp / "base"), "--step", "2",
                 "--output", str(out), "--quiet"]) == 0
    assert _same(load(out), load(export_step(tmp / "run", base, tmp / "lib_step2", step=2)))
    assert main(["train-export", "--run", str(tmp / "run"), "--list"]) == 0
    assert capsys.readouterr().out.split() == ["1", "2", "3"]

    other = tmp / "other"
    folder.save(other, base.config, _params(build_sam_from_config("shapes_tiny", seed=2)))
    for args, message in [
        (["--checkpoint", str(other), "--output", str(tmp / "x")], "not trained from this checkpoint"),
        (["--checkpoint", str(tmp / "base"), "--step", "9", "--output", str(tmp / "x")], "no training state of step 9 (saved: 1, 2, 3)"),
        (["--checkpoint", str(tmp / "base"), "--output", str(out)], "already exists"),
    ]:
        code = main(["train-export", "--run", str(tmp / "run"), *args, "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
    code = main(["train-export", "--run", str(tmp / "base"), "--list"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a sam-jax training run" in err[0]


# ---------------------------------------------------------------------------- TensorBoard events
def _event_class():
    """TensorBoard's Event message (tensorflow/core/util/event.proto, summary.proto), the fields
    we write, as a real protocol-buffer class: a strict reader independent of our writer."""
    f = descriptor_pb2.FileDescriptorProto(name="test_event.proto", package="sam_jax_test", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    value = descriptor_pb2.DescriptorProto(name="Value")
    value.field.add(name="tag", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    # In summary.proto simple_value is a member of `oneof value`: set, it is written even when 0.0.
    value.oneof_decl.add(name="value")
    value.field.add(name="simple_value", number=2, type=T.TYPE_FLOAT, label=T.LABEL_OPTIONAL, oneof_index=0)
    summary = f.message_type.add(name="Summary")
    summary.nested_type.append(value)
    summary.field.add(name="value", number=1, type=T.TYPE_MESSAGE, type_name=".sam_jax_test.Summary.Value", label=T.LABEL_REPEATED)
    event = f.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=T.TYPE_DOUBLE, label=T.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=T.TYPE_MESSAGE, type_name=".sam_jax_test.Summary", label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sam_jax_test.Event"))


def _crc32c(data: bytes) -> int:
    """CRC-32C bit by bit (the writer uses a table)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path) -> list:
    Event = _event_class()
    data, events, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<Q", data, i)
        assert struct.unpack_from("<I", data, i + 8)[0] == _crc32c(data[i : i + 8])
        body = data[i + 12 : i + 12 + n]
        assert len(body) == n and struct.unpack_from("<I", data, i + 12 + n)[0] == _crc32c(body)
        e = Event()
        e.ParseFromString(body)
        assert e.SerializeToString() == body  # every byte is a field we know, canonically encoded
        events.append(e)
        i += 16 + n
    return events


def test_events_hold_the_metrics(run):
    tmp, _, _, _, lines = run
    assert _crc32c(b"123456789") == ((((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xA282EAD8) & 0xFFFFFFFF)  # the check value
    events = read_events(tmp / "run" / EVENTS_FILE)
    assert events[0].file_version == "brain.Event:2"
    got = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    want = [(l["step"], f"val/{k[4:]}" if k.startswith("val_") else f"train/{k}", float(v))
            for l in lines for k, v in l.items() if k != "step" and not isinstance(v, bool)]
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert np.allclose([g[2] for g in got], [w[2] for w in want], rtol=1e-6)
    tags = {g[1] for g in got}
    assert {"train/loss", "train/lr", "val/miou_1click", "val/miou_3clicks", "val/miou_box"} <= tags
