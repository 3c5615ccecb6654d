"""The kernels as the accelerators would build them, checked on this CPU-only machine.

GPU: the encoder's attention with attention="pallas" is exported for CUDA; every Triton kernel
in the exported module (the `__gpu$xla.gpu.triton` custom calls carry Pallas' Triton IR as MLIR
bytecode) goes through the TTIR passes XLA runs on it and Triton's own compiler for sm_90a
(H100), then ptxas. Each must not spill, and every dot must be a warp-group MMA (wgmma in the
PTX, HGMMA in the SASS), none left to CUDA-core FMA loops. The compiler is pip's Triton, not the
one inside XLA's CUDA plugin, so register and shared-memory figures are close, not identical.

TPU: the same attention exported for TPU holds one Mosaic kernel whose only matmuls are the two
of attention (logits and P @ V), in float32-equivalent precision at the exact setting: the bias
is vector-unit work.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from sam_jax.modeling.image_encoder import attention
from sam_jax.numerics import PRECISIONS

TRITON_CALL = "__gpu$xla.gpu.triton"
# (name, key grid, head dim): vit_b's and vit_h's global blocks at 1024 px, vit_h's at 768 px
# (rows of 48 keys, masked), and the 14x14 windows of both.
CASES = [("vit_b global", (64, 64), 64), ("vit_h global", (64, 64), 80), ("vit_h global 768", (48, 48), 80),
         ("vit_b window", (14, 14), 64), ("vit_h window", (14, 14), 80)]
# (dtype, matmul precision) as the model traces them: bfloat16, float32 "exact" (TF32x3 on GPU,
# six bfloat16 passes on TPU), float32 "fast" (one TF32 or bfloat16 pass).
SETTINGS = [("bfloat16", "exact"), ("float32", "exact"), ("float32", "fast")]


def _exported(platform: str, hw, C: int, dtype: str, precision: str):
    N = hw[0] * hw[1]
    x = jax.ShapeDtypeStruct((1, N, C), jnp.dtype(dtype))
    rel = [jax.ShapeDtypeStruct((1, N, s), jnp.float32) for s in hw]
    fn = jax.jit(lambda *a: attention(*a, hw, "pallas"))
    with jax.default_matmul_precision(PRECISIONS[precision]):
        return jax.export.export(fn, platforms=[platform], disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(x, x, x, *rel)


def _custom_calls(exported, target: str, context_setup) -> list[dict]:
    """The backend configs (attribute name -> Attribute) of the custom calls to `target`."""
    from jax._src.interpreters import mlir
    from jax._src.lib.mlir import ir

    ctx = mlir.make_ir_context()
    context_setup(ctx)
    found = []

    def visit(op):
        attrs = op.operation.attributes
        if op.operation.name == "stablehlo.custom_call" and ir.StringAttr(attrs["call_target_name"]).value == target:
            found.append(attrs)
        return ir.WalkResult.ADVANCE

    with ctx, ir.Location.unknown():
        ctx.allow_unregistered_dialects = True
        ir.Module.parse(exported.mlir_module()).operation.walk(visit)
        return [_decode(attrs, target, ctx) for attrs in found]


def _decode(attrs, target: str, ctx) -> dict:
    """The kernel's own module as text, and its launch parameters."""
    from jax._src.lib.mlir import ir

    if target == TRITON_CALL:
        config = ir.DictAttr(attrs["mhlo.backend_config"])
        module = ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes)
        return dict(ir=module.operation.get_asm(), num_warps=ir.IntegerAttr(config["num_warps"]).value,
                    num_stages=ir.IntegerAttr(config["num_stages"]).value)
    from jax._src.tpu_custom_call import PassManager

    body = json.loads(ir.StringAttr(attrs["backend_config"]).value)["custom_call_config"]["body"]
    module = ir.Module.parse(base64.b64decode(body))
    PassManager.parse("builtin.module(mosaic-serde{serialize=false})").run(module.operation)  # to today's ops
    return dict(ir=module.operation.get_asm())


def _sm90a(kernel: dict, workdir: Path) -> dict:
    """Compiles one Triton kernel for sm_90a: shared memory, registers, spills, and its dots."""
    from triton import compile as triton_compile
    from triton import knobs
    from triton._C.libtriton import ir as tir
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", 90, 32)  # capability 90: Triton emits sm_90a (wgmma)
    backend = make_backend(target)
    options = dict(num_warps=kernel["num_warps"], num_stages=kernel["num_stages"])
    raw = workdir / "pallas.ttir"
    raw.write_text(kernel["ir"])
    ctx = tir.context()
    tir.load_dialects(ctx)
    backend.load_dialects(ctx)
    module = tir.parse_mlir_module(str(raw), ctx)
    module.context = ctx
    # XLA runs Triton's TTIR passes (combine, canonicalize, ...) on Pallas' module before the GPU ones.
    backend.make_ttir(module, {}, backend.parse_options(options), 90)
    ttir = workdir / "kernel.ttir"
    ttir.write_text(str(module))
    compiled = triton_compile(str(ttir), target=target, options=options)
    ptx = workdir / "kernel.ptx"
    ptx.write_text(compiled.asm["ptx"])
    cubin = workdir / "kernel.cubin"
    log = subprocess.run([knobs.nvidia.ptxas.path, "-v", "--gpu-name=sm_90a", str(ptx), "-o", str(cubin)],
                         capture_output=True, text=True, check=True).stderr
    sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(
        smem=compiled.metadata.shared,
        registers=int(re.search(r"Used (\d+) registers", log).group(1)),
        spill_bytes=int(spills.group(1)) + int(spills.group(2)),
        dots=len(re.findall(r"= tt\.dot ", str(module))),
        wgmma_dots=len(re.findall(r"ttng\.warp_group_dot ", compiled.asm["ttgir"])),
        other_dots=len(re.findall(r"= tt\.dot ", compiled.asm["ttgir"])),
        wgmma_ptx=compiled.asm["ptx"].count("wgmma.mma_async"),
        hgmma_sass=sass.count("HGMMA"),
    )


def _triton_toolchain():
    triton = pytest.importorskip("triton", reason="triton (the GPU build check's compiler) is not installed")
    from triton import knobs

    for tool in (knobs.nvidia.ptxas, knobs.nvidia.cuobjdump):
        if not tool.path or not Path(tool.path).exists():
            pytest.skip(f"triton {triton.__version__} has no {Path(tool.path or '?').name} to build for sm_90a")


@pytest.mark.parametrize("dtype,precision", SETTINGS, ids=["-".join(s) for s in SETTINGS])
@pytest.mark.parametrize("name,hw,C", CASES, ids=[c[0].replace(" ", "_") for c in CASES])
def test_triton_kernel_builds_for_sm90a_without_spills_on_tensor_cores(name, hw, C, dtype, precision, tmp_path,
                                                                        record_property):
    _triton_toolchain()
    from jaxlib.triton import dialect

    [kernel] = _custom_calls(_exported("cuda", hw, C, dtype, precision), TRITON_CALL, dialect.register_dialect)
    built = _sm90a(kernel, tmp_path)
    record_property("sm90a", built)
    print(f"\n{name} {dtype} {precision}: {built}")
    assert built["spill_bytes"] == 0
    assert built["dots"] > 0 and built["wgmma_dots"] == built["dots"] and built["other_dots"] == 0
    assert built["wgmma_ptx"] > 0 and built["hgmma_sass"] > 0
    # Shared memory leaves room for a second program per SM (228 KB on an H100).
    assert built["smem"] <= 114 * 1024


@pytest.mark.parametrize("dtype,precision", SETTINGS, ids=["-".join(s) for s in SETTINGS])
@pytest.mark.parametrize("name,hw,C", CASES, ids=[c[0].replace(" ", "_") for c in CASES])
def test_mosaic_kernel_has_only_the_two_attention_matmuls(name, hw, C, dtype, precision):
    from jax._src.lib import tpu

    [kernel] = _custom_calls(_exported("tpu", hw, C, dtype, precision), "tpu_custom_call", tpu.register_dialect)
    matmuls = re.findall(r"tpu\.matmul .*", kernel["ir"])
    assert len(matmuls) == 2, matmuls  # logits and P @ V: the bias is vector adds
    element = "bf16" if dtype == "bfloat16" else "f32"
    for m in matmuls:
        lhs, rhs = re.search(r": vector<(\w+)>, vector<(\w+)>,", m).groups()
        assert lhs.endswith(element) and rhs.endswith(element), m
        # exact: the MXU's float32-equivalent passes (for bfloat16 operands the same products)
        assert ("contract_precision<fp32>" in m) == (precision == "exact"), m
