"""Training memory by configuration: the compiled training step's own account
(`jax.stages.Compiled.memory_analysis()`), lowered from abstract shapes (no weights are made and
nothing runs), for vit_b and vit_h at 1024 with the default recipe (11 decoder rounds per object).

    python -m benchmarks.train_memory                        # the table of docs/fine-tuning.md
    python -m benchmarks.train_memory --models vit_b --batch 2 --objects 8

Columns, in GiB: `arguments` (the trainable parameters and their optimizer state, the frozen
parameters, the batch), `temporaries` (activations kept for the backward pass and the step's
scratch) and `peak` = arguments + outputs - aliased + temporaries, the memory the step needs at
once. The state is donated, so the new state aliases the old. The numbers are those of the
backend it compiles for (the default: this machine's; XLA's CPU and GPU schedules differ, the
GPU's is usually lower in temporaries).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sam_jax import build_sam_from_config, get_config
from sam_jax.train.config import TrainConfig
from sam_jax.train.lora import LORA_BASE, LoraSettings, add_lora
from sam_jax.train.rollout import Batch
from sam_jax.train.step import StepSettings, encoder_layers, init_state, train_step_jit
from sam_jax.train.trainable import prepare_model, split_trainable

GIB = 2**30

# name -> TrainConfig changes (on top of the defaults: AdamW, 8 correction clicks, 2 mask-only rounds)
CASES = {
    "full fine-tune": {},
    "full + remat": {"remat": True},
    "full + grad-accum 4": {"grad_accum": 4},
    "full + bfloat16": {"dtype": "bfloat16"},
    "LoRA r=8 qkv": {"lora": LoraSettings(rank=8)},
    "frozen encoder (cached embeddings)": {"freeze": ("image_encoder",)},
}


def step_memory(model_type: str, config: TrainConfig, objects: int) -> dict:
    """memory_analysis() of the step of `config` for `model_type`, in bytes, with the compile time."""
    cfg = get_config(model_type)
    freeze = config.freeze + ((LORA_BASE,) if config.lora.rank else ())

    def build():
        return prepare_model(add_lora(build_sam_from_config(cfg), config.lora), config.dtype, config.remat)

    model = nnx.eval_shape(build)
    graphdef, trainable, fixed = split_trainable(model, freeze)
    settings = StepSettings(config.prompts, config.loss, config.optimizer_settings, *encoder_layers(cfg),
                            grad_accum=config.grad_accum, batch_size=config.batch_size)
    state = jax.eval_shape(lambda t: init_state(t, settings, 0), trainable)
    B, K, S = config.batch_size, objects, cfg.image_size
    cached = "image_encoder" in config.freeze
    g = cfg.image_embedding_size
    batch = Batch(
        None if cached else jax.ShapeDtypeStruct((B, S, S, 3), jnp.uint8),
        jax.ShapeDtypeStruct((B, cfg.prompt_embed_dim, g, g), jnp.float32) if cached else None,
        jax.ShapeDtypeStruct((B, 2), jnp.int32), jax.ShapeDtypeStruct((B, K, S, S), jnp.bool_),
        jax.ShapeDtypeStruct((B, K), jnp.bool_),
    )
    t0 = time.perf_counter()
    compiled = train_step_jit.lower(graphdef, state, fixed, batch, settings=settings).compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    return {
        "arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes, "aliased": m.alias_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
        "peak": m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes,
        "trainable": count(trainable), "compile_s": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vit_b,vit_h")
    p.add_argument("--batch", type=int, default=1, help="images per (micro-)batch (default 1)")
    p.add_argument("--objects", type=int, default=4, help="objects per image (default 4, the training default)")
    p.add_argument("--cases", default=",".join(CASES), help="which rows (comma-separated names)")
    args = p.parse_args()
    print(f"backend {jax.default_backend()}, batch {args.batch} image(s) x {args.objects} objects at 1024, GiB")
    print("| model | configuration | trainable parameters | arguments | temporaries | peak |")
    print("|---|---|---:|---:|---:|---:|")
    for model_type in args.models.split(","):
        for name in args.cases.split(","):
            config = TrainConfig(batch_size=args.batch, objects_per_image=args.objects).replace(**CASES[name])
            r = step_memory(model_type, config, args.objects)
            print(f"| {model_type} | {name} | {r['trainable'] / 1e6:.1f} M | {r['arguments'] / GIB:.2f} | "
                  f"{r['temporaries'] / GIB:.2f} | {r['peak'] / GIB:.2f} |", flush=True)
            print(f"<!-- compiled in {r['compile_s']:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
