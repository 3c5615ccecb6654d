"""The training loop (host side): `Trainer` runs the compiled step over the data, saves and
restores the training state, logs metrics, validates, and writes the final model into the run's
folder (`run_folder.py` says what the folder holds). A resumed run continues bit-for-bit as the
uninterrupted one would have.

    trainer = Trainer(sam_jax.load("vit_b"), open_dataset("train.json"), TrainConfig(steps=500), "runs/ft")
    model = trainer.run()

Model selection: with validation data the run validates every `val_every` steps and at the end,
keeps the model of the best one-click mIoU in `best/` and stops early after `patience`
validations without a better one. Steps are optimizer steps (`grad_accum` batches each).

Many devices and processes (`mesh`, see `sharding.py`): every process runs the same Trainer over
one global mesh. The batches are the same whatever the number of devices or processes (each
process loads only its rows of every batch); the training state is a set of global arrays, which
Orbax saves and restores from every process at once.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ..evaluation import Protocol, evaluate_protocols
from ..io.coco import AnnotationSet, read_annotations
from ..io.outputs import check_not_input
from ..modeling import Sam
from ..parallel import fsdp_shardings, make_mesh, place
from ..runtime.progress import Progress, status
from ..transforms import transform_for
from .augment import augment
from .config import TrainConfig
from .data import MaskDataset, training_dataset
from .embedding_cache import embedding_cache
from .lora import LORA_BASE, add_lora, merge_lora
from .rollout import Batch
from .run_folder import EMBEDDINGS_FILE, RunFolder, barrier, model_record, run_record
from .sharding import global_batch, padded_size, process_rows, state_shardings
from .step import StepSettings, TrainState, encoder_layers, init_state, train_step_jit
from .trainable import encoder_frozen, prepare_model, split_trainable


VALIDATION = (Protocol("clicks", "score", 3), Protocol("box", "score", 1))  # what `validate` reports
SELECTION = "val_miou_1click"  # what the best model is best at: `sam-jax eval --prompt point --select score`


class Selection(NamedTuple):
    """Model selection over a run's validations: the best so far (ties keep the earlier) and how
    many validations since have not beaten it."""

    best_step: int | None = None
    best: float = -math.inf
    since_best: int = 0

    def update(self, step: int, value: float) -> "Selection":
        if value > self.best:
            return Selection(step, value, 0)
        return self._replace(since_best=self.since_best + 1)

    def exhausted(self, patience: int) -> bool:
        """True once `patience` (> 0) validations in a row have not beaten the best."""
        return patience > 0 and self.since_best >= patience


class Trainer:
    def __init__(self, model: Sam, train_data: MaskDataset, config: TrainConfig, output: str | os.PathLike,
                 val_data: MaskDataset | AnnotationSet | None = None, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, mesh: Mesh | None = None, allow_data_changes: bool = False,
                 inputs: Sequence[str | os.PathLike] = ()):
        """`mesh`: a (data, fsdp) mesh (`parallel.make_mesh`) to train on; None: the model's device
        (in a multi-process run: every device of every process, on the data axis). `val_data`: a
        data set of `open_dataset` or an `AnnotationSet` of `sam_jax.io.coco`, validated as
        `sam-jax eval` evaluates it (see `validate`). `allow_data_changes`: a resume may continue on
        training data that differ from the run's (`RunFolder.prepare`). `inputs`: what the model
        was read from (its checkpoint file or folder), which the output may not be, hold or lie
        inside (the data sets' files and folders are checked too)."""
        self.primary = jax.process_index() == 0
        self.config, self.quiet = config, quiet or not self.primary
        if model.config.decoder == "hq":
            raise ValueError("fine-tuning an HQ-SAM decoder is not supported (its HQ output has no IoU head to supervise): "
                             "fine-tune a SAM, MobileSAM, MedSAM or LiteMedSAM checkpoint")
        if config.patience and val_data is None:
            raise ValueError("patience (early stopping) needs validation data (--val-data)")
        self.folder = RunFolder(output, config.keep_checkpoints)
        self.output = self.folder.path
        self.mesh = mesh if mesh is not None or jax.process_count() == 1 else make_mesh()
        self.train_data, self.val_data = train_data, val_data
        self.val_set = validation_set(val_data) if val_data is not None and self.primary else None
        self.base = model
        with status("preparing the run (its record, the trainable parameters)", self.quiet):
            self.record = run_record(config, model, train_data)
            if val_data is not None:
                check_not_input(output, [p for p in (val_data.name, val_data.image_dir) if p is not None])
            self.folder.prepare(self.record, resume, overwrite, train_data, allow_data_changes, inputs)
            # LoRA: the factors train, the rest of the encoder is frozen; `model()` merges them.
            self.view = add_lora(model, config.lora, config.seed)
            self.freeze = config.freeze + ((LORA_BASE,) if config.lora.rank else ())
            self.graphdef, trainable, self.fixed = split_trainable(prepare_model(self.view, config.dtype, config.remat),
                                                                   self.freeze)
        self.settings = StepSettings(config.prompts, config.loss, config.optimizer_settings, *encoder_layers(model.config),
                                     grad_accum=config.grad_accum, batch_size=config.batch_size)
        self.embeddings = None
        if config.cache_embeddings and encoder_frozen(self.freeze, self.view):
            if config.augment.active:
                if not self.quiet:
                    print("sam-jax train: augmentation changes the images: they are embedded at every step (no embedding cache)")
            else:
                self.embeddings = embedding_cache(model, train_data, self.output / EMBEDDINGS_FILE, config.dtype, self.quiet)
        self.rows = padded_size(config.batch_size, self.mesh)  # the global batch, padded to split evenly
        self._data_from(0)
        with status("setting up the optimizer state and the data loader", self.quiet):
            self.state = init_state(trainable, self.settings, config.seed)
            self._micro_steps, self._compiled = 0, False
            if self.mesh is not None:
                self.state = place(self.state, state_shardings(self.state, self.mesh))
                self.fixed = place(self.fixed, fsdp_shardings(self.fixed, self.mesh))
            self.manager = self.folder.state_manager()
        self.selection, self.stopped, self.validated = Selection(), False, None
        if resume and self.manager.latest_step() is not None:
            self._restore(self.manager.latest_step())
        elif resume:  # interrupted before its first saved state: it starts again, its lines forgotten
            self.folder.drop_metrics_after(0)

    @property
    def saved_step(self) -> int | None:
        """The last saved training state's step (what `--resume` continues from), None if none."""
        return self.manager.latest_step()

    @property
    def step(self) -> int:
        """Optimizer steps taken (each of `grad_accum` batches). Counted on the host: an interrupt
        inside the compiled step leaves `self.state` donated (deleted), and this is what the
        interrupted run reports."""
        return self._micro_steps // self.config.grad_accum

    def _data_from(self, batch: int) -> None:
        """The batches from number `batch` on. They depend on the seed and their number alone, so
        the data needs no checkpoint of its own and a run resumes on any number of processes."""
        c = self.config
        rows = None if self.mesh is None else process_rows(self.mesh, self.rows)
        self.dataset = training_dataset(self.train_data, transform_for(self.base.config), c.objects_per_image, c.batch_size,
                                        c.seed, self.embeddings, rows, start=batch,
                                        augment=functools.partial(augment, settings=c.augment) if c.augment.active else None)
        self.iterator = iter(self.dataset)

    # ------------------------------------------------------------------------- state
    def _save(self) -> None:
        """The training state, under its optimizer step (what `export_step` takes)."""
        if self.step in self.manager.all_steps():  # saved already (an early stop at a checkpoint step)
            return
        with _uninterrupted(), status(f"saving the training state of step {self.step}", self.quiet):
            self.manager.save(self.step, args=ocp.args.Composite(train=ocp.args.StandardSave(self._pure(self.state))))
            self.manager.wait_until_finished()

    def _restore(self, step: int) -> None:
        restored = self.manager.restore(step, args=ocp.args.Composite(train=ocp.args.StandardRestore(self._pure(self.state))))
        pure = restored["train"]
        params = self.state.params
        nnx.replace_by_pure_dict(params, pure["params"])
        opt_state = jax.tree.unflatten(jax.tree.structure(self.state.opt_state), jax.tree.leaves(pure["opt_state"]))
        self.state = TrainState(pure["step"], params, opt_state, pure["rng"])
        self._micro_steps = int(self.state.step)
        self._data_from(self._micro_steps)
        self.folder.drop_metrics_after(step)  # logged after the checkpoint: the interrupted run's
        # The selection so far, from the validations logged up to here (read by every process,
        # so that all of them agree on what comes next).
        for record in self.folder.metrics():
            if record["step"] > step:
                continue
            if SELECTION in record:
                self.selection = self.selection.update(record["step"], record[SELECTION])
                self.validated = record["step"]
            self.stopped = self.stopped or bool(record.get("early_stop"))

    @staticmethod
    def _pure(state: TrainState) -> dict:
        return {"step": state.step, "params": nnx.to_pure_dict(state.params),
                "opt_state": jax.tree.leaves(state.opt_state), "rng": state.rng}

    # ------------------------------------------------------------------------- loop
    def _batch(self) -> Batch:
        b = next(self.iterator)
        if self.mesh is not None:
            return global_batch(b, self.mesh, self.rows)
        return Batch(
            jnp.asarray(b["image"]) if "image" in b else None, jnp.asarray(b["embedding"]) if "embedding" in b else None,
            jnp.asarray(b["input_size"]), jnp.asarray(b["masks"]), jnp.asarray(b["valid"]),
        )

    def log(self, record: dict) -> None:
        self.folder.log(record)

    def _optimizer_step(self) -> dict:
        """`grad_accum` batches through the compiled step; their metrics averaged (objects summed)."""
        total = None
        for _ in range(self.config.grad_accum):
            batch = self._batch()
            # The first call of a process compiles (long): Ctrl-C stays immediate there, and the
            # host's step count stays right whatever state an interruption leaves.
            with _uninterrupted() if self._compiled else contextlib.nullcontext():
                self.state, metrics = train_step_jit(self.graphdef, self.state, self.fixed, batch, settings=self.settings,
                                                     mesh=self.mesh)
                self._micro_steps += 1
            self._compiled = True
            total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
        n = self.config.grad_accum
        return {k: v if k == "objects" else v / n for k, v in total.items()}

    def run(self, stop_after: int | None = None) -> Sam | None:
        """Trains to `config.steps` (or an early stop), then writes the last model into the output
        folder and returns it. `stop_after`: save the state at that step and return None (an
        interruption, for tests)."""
        c = self.config
        progress = Progress(c.steps, "sam-jax train", self.quiet, start=self.step)
        t0, seen, first = time.perf_counter(), 0, True
        while self.step < c.steps and not self.stopped:
            # A line of its own for the first step of the process, which compiles the training step.
            doing = f"step {self.step + 1}" + (": compiling the training step (once)" if first else "")
            with progress.running(doing, log=first):
                metrics = self._optimizer_step()
                if first:
                    jax.block_until_ready(metrics)
            step = self.step
            seen += c.batch_size * c.grad_accum
            if step % c.log_every == 0 or step == c.steps:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                rate = seen / (time.perf_counter() - t0)
                self.log({"step": step, **{k: round(v, 6) for k, v in m.items()}, "examples_per_s": round(rate, 2)})
                progress.step(f"step {step} loss {m['loss']:.4f} train IoU {m['iou_last']:.3f} {rate:.1f} ex/s")
                t0, seen = time.perf_counter(), 0
            else:
                progress.step(f"step {step}" + (f": {time.perf_counter() - t0:.1f} s, compiling included" if first else ""),
                              log=first)
            first = False
            if c.checkpoint_every and step % c.checkpoint_every == 0 and step < c.steps:
                self._save()
            if self.val_data is not None and c.val_every and step % c.val_every == 0 and step < c.steps:
                self.validate(step, self.model())
            if step == stop_after:
                progress.close()
                self._save()
                return None
        progress.close()
        self._save()
        model = self.model()
        if self.val_data is not None and self.validated != self.step:
            self.validate(self.step, model)
        with _uninterrupted(), status(f"writing the model of step {self.step}", self.quiet):
            self.folder.write_model(model, model_record(self.record, self.step))
        barrier("sam-jax train: model written")
        return model

    def model(self) -> Sam:
        """The trained model (float32, no remat): the base with the trained parameters, LoRA
        factors merged into plain weights (an ordinary SAM)."""
        graphdef, _, fixed = split_trainable(self.view, self.freeze)
        params = self.state.params
        if self.mesh is not None:  # global arrays, perhaps split over processes: each process gets the whole
            params = jax.tree.map(jnp.asarray, multihost_utils.process_allgather(params, tiled=True))
        model = nnx.merge(graphdef, params, fixed)
        return merge_lora(model) if self.config.lora.rank else model

    def validate(self, step: int, model: Sam) -> dict | None:
        """Validation mIoU of `model` (the trained one, `self.model()`) on the first `val_images`
        images (0: all), logged; by process 0 alone. The code and protocols of `sam-jax eval`: 1 and 3
        clicks (`--prompt clicks --clicks 3 --select score`; one click is `--prompt point`) and the
        box (`--prompt box --select score`), the output with the best predicted IoU each time. The
        best one-click mIoU so far puts the model in best/; `patience` worse ones stop the run."""
        self.validated = step
        record = None
        if self.primary:
            count = min(self.config.val_images or len(self.val_set), len(self.val_set))
            with status(f"step {step}: validating on {count} image{'' if count == 1 else 's'}", self.quiet):
                clicks, box = evaluate_protocols(model, self.val_set, VALIDATION, limit=self.config.val_images or None)
            record = {"step": step, "val_miou_1click": round(clicks.miou(1), 6), "val_miou_3clicks": round(clicks.miou(3), 6),
                      "val_miou_box": round(box.miou(), 6), "val_objects": clicks.summary["count"]}
            self.log(record)
            self.selection = s = self.selection.update(step, record[SELECTION])
            if s.best_step == step:
                with _uninterrupted():
                    self.folder.write_best(model, model_record(self.record, step, **{SELECTION: record[SELECTION]}))
            if not self.quiet:
                print(f"sam-jax train: step {step}: validation mIoU {record['val_miou_1click']:.4f} (1 click), "
                      f"{record['val_miou_3clicks']:.4f} (3 clicks), {record['val_miou_box']:.4f} (box); "
                      f"best {s.best:.4f} at step {s.best_step}", flush=True)
            if s.exhausted(self.config.patience) and step < self.config.steps:
                self.stopped = True
                self.log({"step": step, "early_stop": True})
                if not self.quiet:
                    print(f"sam-jax train: stopping early: {s.since_best} validations without a better one-click "
                          f"mIoU than step {s.best_step}'s", flush=True)
        if jax.process_count() > 1:  # every process stops with process 0
            self.stopped = bool(multihost_utils.broadcast_one_to_all(self.stopped))
        return record


@contextlib.contextmanager
def _uninterrupted():
    """Ctrl-C (SIGINT) waits for the block to end. Orbax saves in threads of its own, which an
    interruption in the middle leaves writing while the interpreter shuts down (errors, and a
    state that is never finalized); the compiled step donates the state it is given, which an
    interruption between the call and its assignment leaves deleted. Only in the main thread,
    and only over Python's own handler."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def validation_set(data: MaskDataset | AnnotationSet) -> AnnotationSet:
    """Validation data as `sam-jax eval` reads it (annotation ids, areas and boxes kept, crowd
    annotations skipped): a training data set is read again from its file or folder."""
    return data if isinstance(data, AnnotationSet) else read_annotations(data.name, data.image_dir)
