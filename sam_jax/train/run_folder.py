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

What a run may replace is what a training run wrote, recognised by its records: with a
train_record.json of this format, the files above by name, state/ holding Orbax's step folders
alone, best/ and the last model with a record.json of MODEL_FORMAT. Anything else (a user's file
in state/, a converted checkpoint's config.json and params/) is never deleted: the run refuses,
naming it. The folder is never an input, never holds one and never lies inside the base
checkpoint (`check_run_output`).

In a multi-process run every process opens the same folder (a shared file system, as Orbax's
multi-process checkpoints need); the files are written by process 0 alone, the state by all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from ..convert import folder
from ..io.outputs import atomic_file, check_not_input, partial_path, remove_stale_partials
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
STATE_DIR = "state"
# Orbax's step folders, and a killed save's temporary one (never listed as a step; the next save of that step replaces it)
STATE_ENTRY = re.compile(r"^\d+(\.orbax-checkpoint-tmp(-\d+)?)?$")
OWN_ENTRIES = (RECORD_FILE, DATA_FILE, STATE_DIR, METRICS_FILE, EVENTS_FILE, EMBEDDINGS_FILE, BEST_DIR, folder.PARAMS_DIR,
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


def _read_record(path: Path, optional: bool = False, quiet: bool = False) -> dict | None:
    """A JSON record of the folder (None when absent and `optional`); a one-line ValueError if
    unreadable (`quiet`: None)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if optional:
            return None
        raise ValueError(f"{path}: missing") from None
    except (OSError, ValueError, RecursionError) as e:
        if quiet:
            return None
        raise ValueError(f"{path}: not a readable record ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        if quiet:
            return None
        raise ValueError(f"{path}: not a record sam-jax train wrote")
    return data


def check_run_output(output: str | os.PathLike, data: Iterable[str | os.PathLike] = (),
                     checkpoints: Iterable[str | os.PathLike] = (), *, resume: bool = False,
                     overwrite: bool = False) -> "Contents":
    """Refuses (one line, before anything is read or written) an output folder that is, or
    holds, one of the run's inputs (`data`: its data files and folders; `checkpoints`: the base
    model), that lies inside the base checkpoint, or that is a file; and one that holds an
    earlier run, unless `resume` (then `RunFolder.prepare` compares the records) or `overwrite`
    (then only when every entry there is the run's), or entries no training run wrote. Returns
    what the folder holds."""
    out = Path(output).absolute()
    checkpoints = [c for c in checkpoints if c is not None]
    check_not_input(out, [*(d for d in data if d is not None), *checkpoints], kind="dir", holders=checkpoints)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {output} exists and is not a folder")
    found = folder_contents(out)
    if found.run is None and found.foreign:
        start = "nothing to resume: " if resume else ""
        raise FileExistsError(f"{start}output {out} holds {', '.join(found.foreign)}, which no sam-jax training run wrote "
                              f"(it has no {RECORD_FILE} of one): move them away or choose another --output")
    if found.run is None or resume:
        return found
    names = ", ".join(found.foreign)
    if found.foreign and overwrite:
        raise FileExistsError(f"cannot replace the training run in {out}: no training run wrote {names} there; "
                              "move that away or choose another --output")
    if found.foreign:
        raise FileExistsError(f"output {out} already holds a training run ({found.summary()}): --resume continues it; "
                              f"to start again, choose another --output (no training run wrote {names} there)")
    if not overwrite:
        raise FileExistsError(f"output {out} already holds a training run ({found.summary()}): --resume continues it, "
                              "--overwrite replaces the run's files")
    return found


class Contents(NamedTuple):
    """What a folder holds of a run's entries: `run` the training record when train_record.json
    is one, `own` the entries that run wrote, `foreign` those it did not (named), `steps` the
    saved training states, `finished` whether the last model is there."""

    run: dict | None
    own: list[Path]
    foreign: list[str]
    steps: list[int]
    finished: bool

    def summary(self) -> str:
        saved = f"saved state at step {max(self.steps)}" if self.steps else "no saved state"
        return f"{saved}, {'finished' if self.finished else 'not finished'}"


def folder_contents(out: Path) -> Contents:
    """The run's entries found in `out` (`OWN_ENTRIES`), sorted into a training run's own and not."""
    record = _read_record(out / RECORD_FILE, optional=True, quiet=True)
    run = record if record is not None and record.get("format") == RECORD_FORMAT else None
    model = _model_record(out) is not None
    own, foreign, steps = [], [], []
    for name in OWN_ENTRIES:
        p = out / name
        if not (p.exists() or p.is_symlink()):
            continue
        if p.is_dir() and not p.is_symlink() and name == STATE_DIR:
            entries = list(p.iterdir())
            steps = sorted(int(e.name) for e in entries if e.is_dir() and e.name.isdigit())
            other = sorted(e.name for e in entries if not (e.is_dir() and STATE_ENTRY.match(e.name)))
            if run is not None and other:
                foreign += [f"{STATE_DIR}/{n}" for n in other]
                continue
        if name == BEST_DIR:
            ours = folder.is_own_folder(p) and _model_record(p) is not None
        elif name in (folder.CONFIG_FILE, folder.PARAMS_DIR, folder.RECORD_FILE):
            ours = model
        else:
            ours = p.is_dir() == (name == STATE_DIR)
        if run is not None and ours and not p.is_symlink():
            own.append(p)
        else:
            foreign.append(name + ("/" if p.is_dir() else ""))
    return Contents(run, own, foreign, steps, model and (out / folder.CONFIG_FILE).is_file())


def _model_record(path: Path) -> dict | None:
    """The record.json of a model a run wrote into `path`, or None."""
    record = _read_record(path / folder.RECORD_FILE, optional=True, quiet=True)
    return record if record is not None and record.get("format") == MODEL_FORMAT else None


class RunFolder:
    """The output folder of one run, as every process sees it (`primary`: process 0, the writer)."""

    def __init__(self, path: str | os.PathLike, keep_checkpoints: int):
        self.path = Path(path).absolute()
        self.primary = jax.process_index() == 0
        self.keep_checkpoints = keep_checkpoints
        self.events = EventWriter(self.path / EVENTS_FILE)

    def prepare(self, record: dict, resume: bool, overwrite: bool, data: MaskDataset | None = None,
                allow_data_changes: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> None:
        """Checks the folder for this run: never an input (`data`'s files and folders, `inputs`:
        the base checkpoint; `check_run_output`); a resume needs the same record, or with
        `allow_data_changes` one that differs in its training data alone (the change is reported,
        the record updated, the cached embeddings dropped); an earlier run is replaced only with
        `overwrite`, and only the entries that run wrote (anything else stays; a run's entry
        holding anything else is refused). Then writes the record, the data's manifest (`data`)
        and an empty metrics log (process 0)."""
        out = self.path
        data_paths = [] if data is None else [data.name, data.image_dir]  # image_dir None: in the JSON's folder
        found = check_run_output(out, data_paths, inputs, resume=resume, overwrite=overwrite)
        manifest = None if data is None else data_manifest(data)
        if found.run is not None and resume:
            stored = found.run
            if stored != record:
                diff = sorted(k for k in set(stored) | set(record) if stored.get(k) != record.get(k))
                change = ""
                if "train_data" in diff and manifest is not None:
                    change = f" (the training data: {data_changes(_read_record(out / DATA_FILE, optional=True), manifest)})"
                if diff != ["train_data"] or not allow_data_changes:
                    hint = "; --allow-data-changes continues on the new data" if diff == ["train_data"] else ""
                    replace = "" if found.foreign else " (or --overwrite)"
                    raise ValueError(f"{out} was trained with different {', '.join(diff)}{change}; --resume needs the same "
                                     f"work{replace}{hint}")
                barrier("sam-jax train: record checked")
                if self.primary:
                    print(f"sam-jax train: resuming {out} on changed training data{change}", file=sys.stderr, flush=True)
                    self._write_record(record, manifest)
                    (out / EMBEDDINGS_FILE).unlink(missing_ok=True)  # indexed like the old data
                barrier("sam-jax train: record updated")
            return
        barrier("sam-jax train: output checked")  # every process has seen the folder as it was
        if self.primary:
            remove_stale_partials(out)  # a killed run's half-written model or record
            for p in found.own:  # only what a training run wrote, recognised by its record; anything else stays
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
            # record.json first: params/ never lies there without the record that makes it the run's
            for name in (folder.RECORD_FILE, folder.PARAMS_DIR, folder.CONFIG_FILE):
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
