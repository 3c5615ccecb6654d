"""The training loop (host side): data, the compiled step, Orbax checkpoints, metrics, validation,
and the final model in the format `sam_jax.load` reads.

Output folder (`output`):
    train_record.json   what is being trained: settings, base checkpoint and data digests (no
                        timestamps or hosts: the same work gives the same bytes); a resume must match it
    state/              Orbax CheckpointManager: parameters, optimizer state, step, RNG (the data
                        position follows from the step)
    metrics.jsonl       one line per logged step (loss, its parts, lr, examples/s) and per validation
    embeddings.npy      cached image embeddings (frozen encoder only)
    config.json, params/  the trained model, written last (config.json completes it)
A resumed run continues bit-for-bit as the uninterrupted one would have.

Many devices and processes (`mesh`, see train/sharding.py): every process runs the same Trainer
over one global mesh. The batches are the same whatever the number of devices or processes (each
process loads only its rows of every batch); the training state is a set of global arrays, which
Orbax saves and restores from every process at once; the files of the output folder, the
embedding cache and the final model are written by process 0 alone. The folder must be one that
every process sees (a shared file system, as Orbax's multi-process checkpoints need).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from .. import checkpoint
from ..functional import embed_images_jit
from ..modeling import Sam
from ..parallel import fsdp_shardings, make_mesh, place, process_share
from ..utils.io import atomic_file, partial_path
from ..utils.progress import Progress
from .data import Source, prepare, training_dataset
from .evaluate import evaluate
from .losses import LossSettings
from .model import encoder_frozen, prepare_model, split_trainable
from .optim import OptimizerSettings
from .prompts import PromptSettings
from .sharding import global_batch, padded_size, process_rows
from .step import Batch, StepSettings, TrainState, init_state, state_shardings, train_step_jit

RECORD_FORMAT = "sam-jax-train/1"
OWN_ENTRIES = ("train_record.json", "state", "metrics.jsonl", "embeddings.npy", "params", "config.json")


class TrainConfig(NamedTuple):
    steps: int = 1000
    batch_size: int = 4  # images per step, over all devices and processes
    objects_per_image: int = 4
    seed: int = 0
    dtype: str = "float32"  # compute dtype: float32 or bfloat16
    remat: bool = False
    freeze: tuple[str, ...] = ()
    cache_embeddings: bool = True  # when the image encoder is frozen: embed each image once
    log_every: int = 10
    val_every: int = 0  # 0: validate only at the end (when there is validation data)
    val_images: int = 50
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    prompts: PromptSettings = PromptSettings()
    loss: LossSettings = LossSettings()
    optimizer: OptimizerSettings = OptimizerSettings()

    def to_dict(self) -> dict:
        d = self._asdict()
        for k in ("prompts", "loss", "optimizer"):
            d[k] = d[k]._asdict()
        return json.loads(json.dumps(d))  # tuples -> lists, as read back


def params_digest(state: nnx.State) -> str:
    """SHA-256 of every variable's path, dtype, shape and bytes: the checkpoint's content."""
    h = hashlib.sha256()
    for path, var in sorted(nnx.to_flat_state(state), key=lambda pv: tuple(map(str, pv[0]))):
        a = np.asarray(var.get_value())
        h.update(f"{'/'.join(map(str, path))}:{a.dtype}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def source_digest(source: Source) -> str:
    h = hashlib.sha256()
    for e in source.entries:
        h.update(f"{e.image.name}:{e.height}:{e.width}:{len(e.annotations)}\n".encode())
    return h.hexdigest()


class Trainer:
    def __init__(self, model: Sam, train_source: Source, config: TrainConfig, output: str | os.PathLike,
                 val_source: Source | None = None, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                 mesh: Mesh | None = None):
        """`mesh`: a (data, fsdp) mesh (`parallel.make_mesh`) to train on; None: the model's device
        (in a multi-process run: every device of every process, on the data axis)."""
        self.primary = jax.process_index() == 0
        self.config, self.output, self.quiet = config, Path(output).absolute(), quiet or not self.primary
        self.mesh = mesh if mesh is not None or jax.process_count() == 1 else make_mesh()
        self.train_source, self.val_source = train_source, val_source
        self.base = model
        self.record = {
            "format": RECORD_FORMAT, "settings": config.to_dict(), "model_config": model.config.to_dict(),
            "base_checkpoint_sha256": params_digest(nnx.state(model)),
            "train_data": {"images": len(train_source), "sha256": source_digest(train_source)},
        }
        self._prepare_output(resume, overwrite)
        view = prepare_model(model, config.dtype, config.remat)
        self.graphdef, trainable, self.fixed = split_trainable(view, config.freeze)
        self.settings = StepSettings(config.prompts, config.loss, config.optimizer, model.config.encoder_depth)
        self.embeddings = None
        if config.cache_embeddings and encoder_frozen(config.freeze, model):
            self.embeddings = self._embedding_cache(model)
        self.rows = padded_size(config.batch_size, self.mesh)  # the global batch, padded to split evenly
        self._data_from(0)
        self.state = init_state(trainable, self.settings, config.seed)
        if self.mesh is not None:
            self.state = place(self.state, state_shardings(self.state, self.mesh))
            self.fixed = place(self.fixed, fsdp_shardings(self.fixed, self.mesh))
        self.manager = ocp.CheckpointManager(
            self.output / "state", options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
            item_handlers={"train": ocp.StandardCheckpointHandler()},
        )
        if resume and self.manager.latest_step() is not None:
            self._restore(self.manager.latest_step())

    # ------------------------------------------------------------------------- output
    def _prepare_output(self, resume: bool, overwrite: bool) -> None:
        out, record_file = self.output, self.output / "train_record.json"
        mine = [out / n for n in OWN_ENTRIES if (out / n).exists()]
        if mine and resume:
            if not record_file.is_file():
                raise ValueError(f"{out} holds no train_record.json: nothing to resume")
            stored = json.loads(record_file.read_text())
            if stored != self.record:
                diff = sorted(k for k in set(stored) | set(self.record) if stored.get(k) != self.record.get(k))
                raise ValueError(f"{out} was trained with different {', '.join(diff)}; --resume needs the same work (or --overwrite)")
            return
        if mine and not overwrite:
            raise FileExistsError(f"{out} already holds a training run (use --resume to continue it or --overwrite to start again)")
        barrier("sam-jax train: output checked")  # every process has seen the folder as it was
        if self.primary:
            for p in mine:  # only what a sam-jax run writes; anything else in the folder stays
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            out.mkdir(parents=True, exist_ok=True)
            with atomic_file(record_file) as tmp:
                tmp.write_text(json.dumps(self.record, indent=1, sort_keys=True) + "\n")
            (out / "metrics.jsonl").touch()
        barrier("sam-jax train: output prepared")

    def _data_from(self, step: int) -> None:
        """The batches from `step` on. They depend on the seed and the step alone, so the data
        needs no checkpoint of its own and a run resumes on any number of processes."""
        c = self.config
        rows = None if self.mesh is None else process_rows(self.mesh, self.rows)
        self.dataset = training_dataset(self.train_source, self.base.config.image_size, c.objects_per_image, c.batch_size,
                                        c.seed, self.embeddings, rows, start=step)
        self.iterator = iter(self.dataset)

    def _embedding_cache(self, model: Sam) -> np.ndarray:
        """(N, C, h, w) embeddings of every training image, computed once (kept in embeddings.npy)."""
        cfg = model.config
        g = cfg.image_embedding_size
        shape = (len(self.train_source), cfg.prompt_embed_dim, g, g)
        path = self.output / "embeddings.npy"
        if path.is_file():
            cached = np.load(path, mmap_mode="r")
            if cached.shape == shape:
                return cached
        graphdef, params = nnx.split(prepare_model(model, self.config.dtype))
        mine = process_share(range(len(self.train_source)))  # each process embeds its share
        progress = Progress(len(mine), "sam-jax train: embedding", self.quiet)

        def embed(i: int) -> np.ndarray:
            e = self.train_source.entries[i]
            ex = prepare(self.train_source.image(i), np.zeros((0, 1, 1), bool), cfg.image_size, 1, np.random.default_rng(0), (e.height, e.width))
            progress.step(e.image.name)
            return np.asarray(embed_images_jit(graphdef, params, jnp.asarray(ex["image"][None]), jnp.asarray(ex["input_size"][None])))[0]

        if jax.process_count() == 1:
            with atomic_file(path) as tmp:  # written as computed: the cache never has to fit in memory
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                for i in mine:
                    out[i] = embed(i)
                out.flush()
                del out
        else:
            count = -(-shape[0] // jax.process_count())
            local = np.zeros((count,) + shape[1:], np.float32)
            for k, i in enumerate(mine):
                local[k] = embed(i)
            shares = multihost_utils.process_allgather(local)  # (processes, count, C, h, w); share p holds p, p + P, ...
            if self.primary:
                with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
                    np.save(f, shares.transpose(1, 0, 2, 3, 4).reshape((-1,) + shape[1:])[: shape[0]])
            barrier("sam-jax train: embeddings written")
        progress.close()
        return np.load(path, mmap_mode="r")

    # ------------------------------------------------------------------------- checkpoints
    def _save(self) -> None:
        step = int(self.state.step)
        self.manager.save(step, args=ocp.args.Composite(train=ocp.args.StandardSave(self._pure(self.state))))
        self.manager.wait_until_finished()

    def _restore(self, step: int) -> None:
        restored = self.manager.restore(step, args=ocp.args.Composite(train=ocp.args.StandardRestore(self._pure(self.state))))
        pure = restored["train"]
        params = self.state.params
        nnx.replace_by_pure_dict(params, pure["params"])
        opt_state = jax.tree.unflatten(jax.tree.structure(self.state.opt_state), jax.tree.leaves(pure["opt_state"]))
        self.state = TrainState(pure["step"], params, opt_state, pure["rng"])
        self._data_from(int(self.state.step))
        # Metrics logged after the checkpoint belong to the interrupted run: drop them.
        if self.primary:
            log = self.output / "metrics.jsonl"
            lines = [l for l in log.read_text().splitlines() if l and json.loads(l)["step"] <= step]
            log.write_text("".join(l + "\n" for l in lines))

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
        if not self.primary:
            return
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def run(self, stop_after: int | None = None) -> Sam | None:
        """Trains to `config.steps`, then writes the model into the output folder and returns it.
        `stop_after`: save the state at that step and return None (an interruption, for tests)."""
        c = self.config
        start = int(self.state.step)
        progress = Progress(c.steps, "sam-jax train", self.quiet)
        progress.done = start
        t0, seen = time.perf_counter(), 0
        while int(self.state.step) < c.steps:
            batch = self._batch()
            self.state, metrics = train_step_jit(self.graphdef, self.state, self.fixed, batch, settings=self.settings, mesh=self.mesh)
            step = int(self.state.step)
            seen += c.batch_size
            if step % c.log_every == 0 or step == c.steps:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                rate = seen / (time.perf_counter() - t0)
                self.log({"step": step, **{k: round(v, 6) for k, v in m.items()}, "examples_per_s": round(rate, 2)})
                progress.step(f"step {step} loss {m['loss']:.4f} IoU {m['iou_last']:.3f} {rate:.1f} ex/s")
                progress.done = step
                t0, seen = time.perf_counter(), 0
            if c.checkpoint_every and step % c.checkpoint_every == 0 and step < c.steps:
                self._save()
            if self.val_source is not None and c.val_every and step % c.val_every == 0 and step < c.steps:
                self.validate(step, self.model())
            if step == stop_after:
                self._save()
                return None
        progress.close()
        self._save()
        model = self.model()
        if self.val_source is not None:
            self.validate(int(self.state.step), model)
        if self.primary:
            self.write_model(model)
        barrier("sam-jax train: model written")
        return model

    def model(self) -> Sam:
        """The trained model (float32, no remat): the base with the trained parameters."""
        graphdef, _, fixed = split_trainable(self.base, self.config.freeze)
        params = self.state.params
        if self.mesh is not None:  # global arrays, perhaps split over processes: each process gets the whole
            params = jax.tree.map(jnp.asarray, multihost_utils.process_allgather(params, tiled=True))
        return nnx.merge(graphdef, params, fixed)

    def validate(self, step: int, model: Sam) -> dict | None:
        """Validation mIoU of `model` (the trained one, `self.model()`), logged; by process 0 alone."""
        if not self.primary:
            return None
        result = evaluate(model, self.val_source, self.config.val_images, clicks=3)
        record = {"step": step, "val_miou_1click": round(result.miou(1), 6), "val_miou_3clicks": round(result.miou(3), 6),
                  "val_miou_box": round(float(result.box_iou.mean()), 6)}
        self.log(record)
        if not self.quiet:
            print(f"sam-jax train: step {step}: validation mIoU {record['val_miou_1click']:.4f} (1 click), "
                  f"{record['val_miou_3clicks']:.4f} (3 clicks), {record['val_miou_box']:.4f} (box)", flush=True)
        return record

    def write_model(self, model: Sam) -> None:
        """config.json + params/ into the output folder; config.json last, so the folder reads as
        a checkpoint only once the parameters are complete."""
        out = self.output
        tmp = partial_path(out / "model")
        params = {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model))}
        try:
            checkpoint.save(tmp, model.config, params)
            for name in ("config.json", "params"):
                p = out / name
                if p.exists():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            (tmp / "params").rename(out / "params")
            (tmp / "config.json").rename(out / "config.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def barrier(name: str) -> None:
    """Every process waits here for the others (nothing to wait for in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
