"""A training run's output folder (host side): what may be written or replaced there, its record,
its metrics, the Orbax training state and the final model.

    train_record.json   what is being trained: settings, base checkpoint and data digests (no
                        timestamps or hosts: the same work gives the same bytes); a resume must match it
                        (or, with `allow_data_changes`, differ in its training data alone)
    train_data.json     the training data image by image (name, objects, digest of the annotations
                        used): what a resume on changed data reports as changed
    state/              Orbax CheckpointManager: parameters, optimizer state, step, RNG (the data
                        position follows from the step)
    metrics.jsonl       one line per logged step (loss, its parts, lr, examples/s) and per validation
    events.out.tfevents.sam-jax  the same numbers for TensorBoard (`events.py`; `tensorboard --logdir`)
    embeddings.npy      cached image embeddings (frozen encoder only; `embedding_cache`)
    best/               the model of the best validation one-click mIoU so far (a checkpoint folder:
                        config.json, params/, record.json with its step and mIoU), with validation data
    config.json, params/, record.json  the last model, written last (config.json completes it): the
                        folder is then a checkpoint `sam_jax.load` reads

In a multi-process run every process opens the same folder (a shared file system, as Orbax's
multi-process checkpoints need); the files are written by process 0 alone, the state by all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from ..convert import folder
from ..io.outputs import atomic_file, partial_path
from ..modeling import Sam
from .config import TrainConfig
from .data import MaskDataset
from .events import EventWriter, metric_scalars

RECORD_FORMAT = "sam-jax-train/1"
MODEL_FORMAT = "sam-jax-train-model/1"  # the record.json of a model a run writes
RECORD_FILE = "train_record.json"
DATA_FILE = "train_data.json"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.out.tfevents.sam-jax"
EMBEDDINGS_FILE = "embeddings.npy"
BEST_DIR = "best"
OWN_ENTRIES = (RECORD_FILE, DATA_FILE, "state", METRICS_FILE, EVENTS_FILE, EMBEDDINGS_FILE, BEST_DIR, folder.PARAMS_DIR,
               folder.CONFIG_FILE, folder.RECORD_FILE)


def params_digest(state: nnx.State) -> str:
    """SHA-256 of every variable's path, dtype, shape and bytes: the checkpoint's content."""
    h = hashlib.sha256()
    for path, var in sorted(nnx.to_flat_state(state), key=lambda pv: tuple(map(str, pv[0]))):
        a = np.asarray(var.get_value())
        h.update(f"{'/'.join(map(str, path))}:{a.dtype}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def data_manifest(dataset: MaskDataset) -> dict:
    """The training data image by image: [file name, objects, digest of its name, size and the
    content of the annotations used], with the options that chose them."""
    return {"options": dataset.options.record(),
            "images": [[e.file.name, len(e.annotations), e.sha256] for e in dataset.images]}


def dataset_digest(dataset: MaskDataset) -> str:
    """SHA-256 of `data_manifest`: the images used, in order, and their annotations' content."""
    return hashlib.sha256(json.dumps(data_manifest(dataset), sort_keys=True).encode()).hexdigest()


def run_record(config: TrainConfig, model: Sam, train_data: MaskDataset) -> dict:
    """What a run trains: its settings, the base model's config and digest, the data's digest."""
    return {
        "format": RECORD_FORMAT, "settings": config.to_dict(), "model_config": model.config.to_dict(),
        "base_checkpoint_sha256": params_digest(nnx.state(model)),
        "train_data": {"images": len(train_data), "objects": train_data.objects(), **train_data.options.record(),
                       "sha256": dataset_digest(train_data)},
    }


def data_changes(old: dict | None, new: dict) -> str:
    """What differs between two `data_manifest`s, in words."""
    if old is None:
        return "no earlier train_data.json to compare with"
    parts = []
    if old.get("options") != new["options"]:
        parts.append(f"options {old.get('options')} -> {new['options']}")
    before = {name: digest for name, _, digest in old.get("images", [])}
    after = {name: digest for name, _, digest in new["images"]}
    for what, names in (("removed", [n for n in before if n not in after]), ("added", [n for n in after if n not in before]),
                        ("changed (annotations or size)", [n for n in after if n in before and before[n] != after[n]])):
        if names:
            parts.append(f"{len(names)} image{'' if len(names) == 1 else 's'} {what} (first: {names[0]})")
    return "; ".join(parts) or "the images' order"


def barrier(name: str) -> None:
    """Every process waits here for the others (nothing to wait for in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _read_record(path: Path, optional: bool = False) -> dict | None:
    """A JSON record of the folder (None when absent and `optional`); a one-line ValueError if unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if optional:
            return None
        raise ValueError(f"{path}: missing") from None
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable record ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a record sam-jax train wrote")
    return data


class RunFolder:
    """The output folder of one run, as every process sees it (`primary`: process 0, the writer)."""

    def __init__(self, path: str | os.PathLike, keep_checkpoints: int):
        self.path = Path(path).absolute()
        self.primary = jax.process_index() == 0
        self.keep_checkpoints = keep_checkpoints
        self.events = EventWriter(self.path / EVENTS_FILE)

    def prepare(self, record: dict, resume: bool, overwrite: bool, data: MaskDataset | None = None,
                allow_data_changes: bool = False) -> None:
        """Checks the folder for this run: a resume needs the same record, or with
        `allow_data_changes` one that differs in its training data alone (the change is reported,
        the record updated, the cached embeddings dropped); an earlier run is replaced only with
        `overwrite`, and only the entries a run writes (anything else stays). Then writes the
        record, the data's manifest (`data`) and an empty metrics log (process 0)."""
        out, record_file = self.path, self.path / RECORD_FILE
        manifest = None if data is None else data_manifest(data)
        mine = [out / n for n in OWN_ENTRIES if (out / n).exists()]
        if mine and resume:
            if not record_file.is_file():
                raise ValueError(f"{out} holds no {RECORD_FILE}: nothing to resume")
            stored = _read_record(record_file)
            if stored != record:
                diff = sorted(k for k in set(stored) | set(record) if stored.get(k) != record.get(k))
                change = ""
                if "train_data" in diff and manifest is not None:
                    change = f" (the training data: {data_changes(_read_record(out / DATA_FILE, optional=True), manifest)})"
                if diff != ["train_data"] or not allow_data_changes:
                    hint = "; --allow-data-changes continues on the new data" if diff == ["train_data"] else ""
                    raise ValueError(f"{out} was trained with different {', '.join(diff)}{change}; --resume needs the same "
                                     f"work (or --overwrite){hint}")
                barrier("sam-jax train: record checked")
                if self.primary:
                    print(f"sam-jax train: resuming {out} on changed training data{change}", file=sys.stderr, flush=True)
                    self._write_record(record, manifest)
                    (out / EMBEDDINGS_FILE).unlink(missing_ok=True)  # indexed like the old data
                barrier("sam-jax train: record updated")
            return
        if mine and not overwrite:
            raise FileExistsError(f"{out} already holds a training run (use --resume to continue it or --overwrite to start again)")
        barrier("sam-jax train: output checked")  # every process has seen the folder as it was
        if self.primary:
            for p in mine:  # only what a sam-jax run writes; anything else in the folder stays
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            out.mkdir(parents=True, exist_ok=True)
            self._write_record(record, manifest)
            (out / METRICS_FILE).touch()
            self.events.start()
        barrier("sam-jax train: output prepared")

    def _write_record(self, record: dict, manifest: dict | None) -> None:
        if manifest is not None:
            with atomic_file(self.path / DATA_FILE) as tmp:
                tmp.write_text(json.dumps(manifest, sort_keys=True) + "\n")
        with atomic_file(self.path / RECORD_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")

    # ------------------------------------------------------------------------- metrics
    def log(self, record: dict) -> None:
        """One line of metrics.jsonl and its TensorBoard events (process 0)."""
        if self.primary:
            with open(self.path / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.events.scalars(record["step"], metric_scalars(record))

    def metrics(self) -> list[dict]:
        """Every line of metrics.jsonl, in order."""
        return [json.loads(l) for l in (self.path / METRICS_FILE).read_text().splitlines() if l]

    def drop_metrics_after(self, step: int) -> None:
        """Forgets the lines logged after `step` (an interrupted run's, when resuming from `step`);
        the event file is written again from the lines kept."""
        if self.primary:
            kept = [r for r in self.metrics() if r["step"] <= step]
            (self.path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))
            self.events.start()
            for r in kept:
                self.events.scalars(r["step"], metric_scalars(r))

    # ------------------------------------------------------------------------- training state
    def state_manager(self) -> ocp.CheckpointManager:
        """The Orbax manager of state/ (every process saves and restores its shards)."""
        return ocp.CheckpointManager(
            self.path / "state", options=ocp.CheckpointManagerOptions(max_to_keep=self.keep_checkpoints, create=True),
            item_handlers={"train": ocp.StandardCheckpointHandler()},
        )

    # ------------------------------------------------------------------------- the models
    def write_model(self, model: Sam, record: dict | None = None) -> None:
        """The last model: config.json + params/ + record.json into the folder (process 0);
        config.json last, so the folder reads as a checkpoint only once the parameters are complete."""
        if not self.primary:
            return
        out = self.path
        tmp = partial_path(out / "model")
        try:
            folder.save(tmp, model.config, flat_params(model), record=record)
            for name in (folder.CONFIG_FILE, folder.PARAMS_DIR, folder.RECORD_FILE):
                p = out / name
                if p.exists():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            for name in (folder.PARAMS_DIR, folder.RECORD_FILE, folder.CONFIG_FILE):
                (tmp / name).rename(out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def write_best(self, model: Sam, record: dict) -> None:
        """best/: a checkpoint folder, replaced whole (process 0)."""
        if self.primary:
            folder.save(self.path / BEST_DIR, model.config, flat_params(model), overwrite=True, record=record)


def model_record(run_record: dict, step: int, **extra) -> dict:
    """What a model written by a run states: the run's record (by digest) and the step."""
    digest = hashlib.sha256(json.dumps(run_record, sort_keys=True).encode()).hexdigest()
    return {"format": MODEL_FORMAT, "train_record_sha256": digest, "step": step, **extra}


def flat_params(model: Sam) -> dict[tuple, np.ndarray]:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model))}
