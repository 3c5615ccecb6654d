"""ONNX export of the prompt encoder + mask decoder: onnxruntime on our exported graph equals the
official `SamOnnxModel` run in PyTorch and our JAX model, for every flag combination, several
prompt counts (points, box corners, -1 padding), with and without a mask input, and one exported
file serving original sizes smaller and larger than the model input. Plus the quantized model,
the notebook flow (embedding .npy -> ONNX vs the official predictor) and the CLI."""

from __future__ import annotations

import itertools
import sys
from functools import partial

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tests.reference.compare import assert_close  # noqa: E402
from sam_jax.cli import main  # noqa: E402
from sam_jax.export.onnx import export_onnx, onnx_inputs, quantize_onnx  # noqa: E402

FLAGS = list(itertools.product([False, True], repeat=3))  # single mask, stability score, extra metrics
PROMPTS = {  # labels; coordinates are random in the resized frame
    "1 point, larger image": ([1], False, (300, 451)),
    "3 points + mask, smaller image": ([1, 0, -1], True, (97, 131)),
    "points + box corners + pad, smaller portrait": ([0, 1, 2, 3, -1], False, (131, 61)),
}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(cases, tmp_path_factory):
    """(flags, case, opset) -> onnxruntime session, each exported once."""
    out, tmp = {}, tmp_path_factory.mktemp("onnx")

    def get(flags, case=None, opset=17):
        case = case or cases("test_tiny")
        key = (flags, case.name, opset)
        if key not in out:
            path = tmp / f"{case.name}_{opset}_{''.join(str(int(f)) for f in flags)}.onnx"
            out[key] = _session(export_onnx(case.model, path, return_single_mask=flags[0], use_stability_score=flags[1],
                                            return_extra_metrics=flags[2], opset=opset))
        return out[key]

    return get


def _feed(cfg, labels, has_mask, orig, seed=0):
    r = np.random.default_rng(seed)
    h, S = cfg.image_size // cfg.patch_size, cfg.image_size
    return {
        "image_embeddings": r.normal(size=(1, cfg.prompt_embed_dim, h, h)).astype(np.float32),
        "point_coords": r.uniform(-5, S + 5, (1, len(labels), 2)).astype(np.float32),
        "point_labels": np.array([labels], np.float32),
        "mask_input": (4 * r.normal(size=(1, 1, 4 * h, 4 * h))).astype(np.float32),
        "has_mask_input": np.array([float(has_mask)], np.float32),
        "orig_im_size": np.array(orig, np.float32),
    }


def _official(case, flags, feed):
    import torch
    from segment_anything.utils.onnx import SamOnnxModel

    out = SamOnnxModel(case.official, *flags)(**{k: torch.from_numpy(v) for k, v in feed.items()})
    return [o.numpy() for o in out]


_JAX: dict = {}


def _jax(model, flags, feed, key):
    """The same outputs from our JAX modules (prompt encoder, mask decoder, postprocess_masks,
    stability score), computed once per prompt for all mask tokens; the flags select from them."""
    if key not in _JAX:
        import jax
        import jax.numpy as jnp
        from flax import nnx
        from sam_jax.functional import upscale_masks_jit
        from sam_jax.utils.transforms import get_preprocess_shape
        from sam_jax.utils.amg import calculate_stability_score

        @partial(jax.jit, static_argnums=0)
        def decode(graphdef, state, emb, coords, labels, mask_input, has):
            m = nnx.merge(graphdef, state)
            pe = m.prompt_encoder
            sparse = pe.embed_points(coords, labels.astype(jnp.int32))
            no_mask = pe.no_mask_embed.embedding[...].reshape(1, -1, 1, 1)
            dense = has * pe.embed_masks(mask_input) + (1 - has) * no_mask
            masks, iou = m.mask_decoder.predict_masks(emb, pe.get_dense_pe(), sparse, dense)
            return masks, iou, calculate_stability_score(masks, m.mask_threshold, 1.0)

        names = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
        masks, iou, stab_low = decode(*nnx.split(model), *(jnp.asarray(feed[k]) for k in names))
        H, W = (int(v) for v in feed["orig_im_size"])
        up = upscale_masks_jit(masks, model.config, get_preprocess_shape(H, W, model.config.image_size), (H, W), None)
        thr = model.mask_threshold
        _JAX[key] = [np.asarray(o) for o in (up, iou, stab_low, calculate_stability_score(up, thr, 1.0),
                                             jnp.sum(up > thr, axis=(-2, -1)), masks)]
    up, iou, stab_low, stab_up, areas, masks = _JAX[key]
    single, stability, extra = flags
    scores = stab_low if stability else iou
    if single:  # the official select_masks: the single-mask token wins when N >= 3
        reweight = np.eye(1, scores.shape[1])[0] * 1000
        best = int(np.argmax(scores[0] + (feed["point_coords"].shape[1] - 2.5) * reweight))
        up, scores, stab_up, areas, masks = (a[:, best : best + 1] for a in (up, scores, stab_up, areas, masks))
    return [up, scores, *([stab_up, areas] if extra else []), masks]


def _compare(ours, ref, flags, what):
    """Logits and scores to 1e-4 relative; stability scores and areas (counts of thresholded
    pixels, which flip where a logit is within rounding of a threshold) to a few pixels."""
    assert len(ours) == len(ref) == (5 if flags[2] else 3), what
    names = ["masks", "iou_predictions"] + (["stability_scores", "areas"] if flags[2] else []) + ["low_res_masks"]
    errs = {}
    for name, o, r in zip(names, ours, ref):
        assert o.shape == r.shape, f"{what} {name}: {o.shape} != {r.shape}"
        if name == "areas":
            assert o.dtype == np.int64 and np.abs(o - r).max() <= 3, f"{what} areas {o} != {r}"
        elif name == "stability_scores" or (name == "iou_predictions" and flags[1]):
            np.testing.assert_allclose(o, r, atol=1e-3, equal_nan=True, err_msg=f"{what} {name}")
        else:
            errs[name] = assert_close(o, r, tol=1e-4, what=f"{what} {name}")
    return errs


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "single{}-stab{}-extra{}".format(*map(int, f)))
def test_matches_official_and_jax(tiny, exported, flags):
    sess = exported(flags)
    for i, (name, (labels, has_mask, orig)) in enumerate(PROMPTS.items()):
        feed = _feed(tiny.config, labels, has_mask, orig, seed=i)
        ours = sess.run(None, feed)
        M = 1 if flags[0] else tiny.config.num_multimask_outputs + 1
        assert ours[0].shape == (1, M) + orig
        _compare(ours, _official(tiny, flags, feed), flags, f"{name} vs official")
        _compare(ours, _jax(tiny.model, flags, feed, name), flags, f"{name} vs jax")


def test_interface_matches_official_export(exported, tiny):
    sess = exported((False, False, True))
    ins = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    h = tiny.config.image_size // 16
    assert ins == {
        "image_embeddings": ("tensor(float)", [1, tiny.config.prompt_embed_dim, h, h]),
        "point_coords": ("tensor(float)", [1, "num_points", 2]),
        "point_labels": ("tensor(float)", [1, "num_points"]),
        "mask_input": ("tensor(float)", [1, 1, 4 * h, 4 * h]),
        "has_mask_input": ("tensor(float)", [1]),
        "orig_im_size": ("tensor(float)", [2]),
    }
    assert [o.name for o in sess.get_outputs()] == ["masks", "iou_predictions", "stability_scores", "areas", "low_res_masks"]
    assert [o.name for o in exported((True, False, False)).get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]


def test_other_config_and_opsets(cases, exported):
    """Three mask tokens instead of four, heads 2, image size 320; old and new opsets (axes as
    attributes or inputs, Resize with or without empty inputs)."""
    case = cases("test_divisible")
    for flags, opset in [((True, True, True), 11), ((False, False, False), 13), ((True, False, True), 18)]:
        feed = _feed(case.config, [1, 2, 3], True, (400, 333), seed=opset)
        ours = exported(flags, case, opset).run(None, feed)
        _compare(ours, _official(case, flags, feed), flags, f"test_divisible opset {opset}")


def test_quantized(tiny, exported, tmp_path):
    """The official dynamic uint8 quantization runs and gives the same shapes. On these random
    weights the thresholded masks overlap the float model's with IoU 0.99 (printed; 0.9 asserted)."""
    src = tmp_path / "decoder.onnx"
    export_onnx(tiny.model, src)
    quant = _session(quantize_onnx(src, tmp_path / "decoder_quant.onnx"))
    assert any(n.op_type.startswith(("DynamicQuantize", "MatMulInteger", "ConvInteger"))
               for n in onnx.load(tmp_path / "decoder_quant.onnx").graph.node)
    feed = _feed(tiny.config, [1, 0, -1], False, (200, 300))
    q, f = quant.run(None, feed), exported((False, False, False)).run(None, feed)
    assert [a.shape for a in q] == [b.shape for b in f] and all(np.isfinite(a).all() for a in q)
    a, b = q[0] > 0, f[0] > 0
    iou = (a & b).sum() / max((a | b).sum(), 1)
    print(f"quantized vs float: mask IoU {iou:.3f}, max |iou_pred diff| {np.abs(q[1] - f[1]).max():.3g}")
    assert iou > 0.9


def test_notebook_flow_via_cli(tiny, tmp_path, capsys):
    """`sam-jax embed` + `sam-jax export-onnx` + onnx_inputs, against the official SamPredictor."""
    from PIL import Image
    from segment_anything import SamPredictor as OfficialPredictor

    r = np.random.default_rng(0)
    yy, xx = np.mgrid[0:97, 0:151]
    image = np.clip(np.stack([np.sin(xx / 7), np.cos(yy / 5), np.sin((xx + yy) / 11)], -1) * 100 + 128
                    + r.normal(0, 20, (97, 151, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    ckpt = str(tiny.model_dir)
    assert main(["embed", "--checkpoint", ckpt, "--image", str(tmp_path / "img.png"), "--output", str(tmp_path / "e.npy")]) == 0
    assert main(["export-onnx", "--checkpoint", ckpt, "--output", str(tmp_path / "d.onnx"),
                 "--quantize-out", str(tmp_path / "dq.onnx")]) == 0
    assert (tmp_path / "dq.onnx").exists() and "wrote" in capsys.readouterr().out

    ref = OfficialPredictor(tiny.official)
    ref.set_image(image)
    emb = np.load(tmp_path / "e.npy")
    assert emb.dtype == np.float32
    assert_close(emb, ref.get_image_embedding().numpy(), what="embedding .npy")
    sess = _session(tmp_path / "d.onnx")
    prompts = [dict(point_coords=np.array([[40.0, 30.0], [100.0, 80.0]]), point_labels=np.array([1, 0])),
               dict(point_coords=np.array([[40.0, 30.0]]), point_labels=np.array([1]), box=np.array([10.0, 15.0, 120.0, 90.0])),
               dict(box=np.array([10.0, 15.0, 120.0, 90.0]))]
    for kw in prompts:
        masks, iou, low = sess.run(None, onnx_inputs(tiny.model, emb, image.shape[:2], **kw))
        rm, riou, rlow = ref.predict(**kw, multimask_output=True, return_logits=True)
        assert_close(masks[0, 1:], rm, what="masks vs official predictor")
        assert_close(iou[0, 1:], riou, what="iou vs official predictor")
        assert_close(low[0, 1:], rlow, what="low-res vs official predictor")
    # Fed back as mask_input, the best low-res mask gives the official single-mask refinement.
    kw = prompts[0]
    _, riou, rlow = ref.predict(**kw)
    best = int(np.argmax(riou))
    masks, iou, _ = sess.run(None, onnx_inputs(tiny.model, emb, image.shape[:2], **kw, mask_input=rlow[best][None]))
    rm, riou, _ = ref.predict(**kw, mask_input=rlow[best][None], multimask_output=False, return_logits=True)
    assert_close(masks[0, :1], rm, what="mask-input refinement")
    assert_close(iou[0, :1], riou, what="mask-input refinement iou")


def test_cli_errors(tmp_path, capsys, monkeypatch):
    assert main(["export-onnx", "--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "d.onnx")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and len(err.strip().splitlines()) == 1
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    assert main(["embed", "--checkpoint", str(tmp_path / "missing"), "--image", str(tmp_path / "x.png"),
                 "--output", str(tmp_path / "e.npy")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    assert main(["export-onnx", "--checkpoint", str(tmp_path), "--output", str(tmp_path / "d.onnx")]) == 2
    err = capsys.readouterr().err
    assert "pip install onnx onnxruntime" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ImportError, match=r"pip install onnx onnxruntime \(the \[onnx\] extra\)"):
        export_onnx(None, tmp_path / "d.onnx")


def test_vit_b_sizes_and_dense_pe_in_graph(tmp_path):
    """On a vit_b model (random weights, decoder perturbed; the encoder never runs): the dense
    positional encoding is computed in the graph, not stored (no initializer near C*h*w), and our
    float and quantized files are no larger than the official export of the same model
    (torch.onnx.export as the official script calls it; dynamo=False: torch's default dynamo
    exporter needs onnxscript), with outputs still equal to the official SamOnnxModel's."""
    import warnings

    import torch
    from tests.reference.official import perturb
    from segment_anything import sam_model_registry
    from segment_anything.utils.onnx import SamOnnxModel as OfficialSamOnnxModel
    from sam_jax.build_sam import model_from_params
    from sam_jax.convert import convert_state_dict

    torch.manual_seed(0)
    official = sam_model_registry["vit_b"]().eval()
    perturb(official.prompt_encoder), perturb(official.mask_decoder, seed=1)
    model = model_from_params(*convert_state_dict({k: v.numpy() for k, v in official.state_dict().items()}, "vit_b", None))
    cfg = model.config
    feed = _feed(cfg, [1, 0, 2, 3, -1], True, (300, 451))
    ref = OfficialSamOnnxModel(official, return_single_mask=True)
    names = list(feed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ref, tuple(torch.from_numpy(v) for v in feed.values()), str(tmp_path / "official.onnx"),
                          export_params=True, opset_version=17, do_constant_folding=True, input_names=names,
                          output_names=["masks", "iou_predictions", "low_res_masks"], dynamo=False,
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
    export_onnx(model, tmp_path / "ours.onnx", return_single_mask=True)
    for name in ("official", "ours"):
        quantize_onnx(tmp_path / f"{name}.onnx", tmp_path / f"{name}_quant.onnx")
    size = {p.stem: p.stat().st_size for p in tmp_path.glob("*.onnx")}
    print("vit_b decoder bytes:", size)
    assert size["ours"] <= size["official"] and size["ours_quant"] <= size["official_quant"], size

    grid = cfg.prompt_embed_dim * (cfg.image_size // cfg.patch_size) ** 2
    largest = max(int(np.prod(t.dims)) for t in onnx.load(tmp_path / "ours.onnx").graph.initializer)
    assert largest < grid, f"an initializer of {largest} values: the (C, h, w) dense PE is stored"
    out = {n: _session(tmp_path / f"{n}.onnx").run(None, feed) for n in ("ours", "official", "ours_quant", "official_quant")}
    _compare(out["ours"], _official(type("Case", (), {"official": official}), (True, False, False), feed),
             (True, False, False), "vit_b vs official SamOnnxModel")
    _compare(out["ours"], out["official"], (True, False, False), "vit_b vs official ONNX")
    # Quantized: as close to the float model as the official quantized file is to its own.
    err = {n: np.abs(out[n][2] - out["official"][2]).max() for n in ("ours_quant", "official_quant")}
    print("quantized low-res logits, max |error| vs float:", err)
    assert err["ours_quant"] <= 1.5 * err["official_quant"], err


def test_gelu_approximate(tiny, tmp_path):
    """--gelu-approximate: tanh GELUs and no Erf node, equal to the official SamOnnxModel whose
    GELUs were set to tanh as the export script does (a difference the tolerance sees)."""
    import copy

    import torch

    ckpt = str(tiny.model_dir)
    assert main(["export-onnx", "--checkpoint", ckpt, "--output", str(tmp_path / "tanh.onnx"), "--gelu-approximate"]) == 0
    export_onnx(tiny.model, tmp_path / "erf.onnx")
    ops = {n: {node.op_type for node in onnx.load(tmp_path / f"{n}.onnx").graph.node} for n in ("tanh", "erf")}
    assert "Erf" not in ops["tanh"] and "Tanh" in ops["tanh"] and "Erf" in ops["erf"]

    case = copy.copy(tiny)
    case.official = copy.deepcopy(tiny.official)  # the session's model keeps its exact GELUs
    for m in case.official.modules():
        if isinstance(m, torch.nn.GELU):
            m.approximate = "tanh"
    sess, flags = _session(tmp_path / "tanh.onnx"), (False, False, False)
    for i, (labels, has_mask, orig) in enumerate(PROMPTS.values()):
        feed = _feed(tiny.config, labels, True, orig, seed=10 + i)
        ref, exact = _official(case, flags, feed), _official(tiny, flags, feed)
        ours = sess.run(None, feed)
        for o, r, e, name in zip(ours, ref, exact, ("masks", "iou_predictions", "low_res_masks")):
            assert_close(o, r, tol=1e-5, what=f"tanh GELU {name}")
        assert np.abs(ref[2] - exact[2]).max() > 1e-4 * np.abs(exact[2]).max(), "tanh and erf GELU agree: the test sees nothing"


def test_sam_onnx_model(tiny, tmp_path):
    """sam_jax.utils.onnx.SamOnnxModel: called on NumPy inputs it equals the official module run in
    torch, for every flag combination; `.export` writes (and quantizes) the same ONNX model."""
    from sam_jax.export.onnx import SamOnnxModel as Exported
    from sam_jax.utils.onnx import SamOnnxModel

    assert SamOnnxModel is Exported
    prompts = list(PROMPTS.values())
    for i, flags in enumerate(FLAGS):
        labels, has_mask, orig = prompts[i % len(prompts)]
        feed = _feed(tiny.config, labels, has_mask, orig, seed=20 + i)
        onnx_model = SamOnnxModel(tiny.model, *flags)
        _compare(list(onnx_model(**feed)), _official(tiny, flags, feed), flags, f"SamOnnxModel{flags} vs official")

    onnx_model = SamOnnxModel(tiny.model, return_single_mask=True, return_extra_metrics=True)
    path = onnx_model.export(tmp_path / "d.onnx", opset_version=17, quantize_out=tmp_path / "dq.onnx")
    assert path == tmp_path / "d.onnx" and (tmp_path / "dq.onnx").exists()
    feed = _feed(tiny.config, [1, 0], False, (120, 90), seed=3)
    ours = _session(path).run(None, feed)
    _compare(ours, _official(tiny, onnx_model.flags, feed), onnx_model.flags, "SamOnnxModel.export vs official")
    _compare(ours, list(onnx_model(**feed)), onnx_model.flags, "SamOnnxModel.export vs SamOnnxModel()")

    bad = [(dict(point_labels=np.array([[1.0, 5.0]], np.float32)), "point_labels must be in"),
           (dict(mask_input=np.zeros((1, 1, 8, 8), np.float32)), "mask_input must have shape (1, 1, 64, 64)"),
           (dict(point_coords=np.zeros((1, 2), np.float32)), "point_coords must have shape (1, N, 2)"),
           (dict(orig_im_size=np.array([0.0, 10.0], np.float32)), "orig_im_size must hold a positive")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            onnx_model(**{**feed, **change})


def test_onnx_inputs_token_order(tiny):
    """onnx_inputs: prompt_tokens' official order without its empty slots, coordinates in the
    resized frame (a 100 x 200 image becomes 128 x 256), the mask size of the prompt encoder."""
    emb = np.zeros((1, 32, 16, 16), np.float32)
    pts, lab, box = np.array([[10.0, 20.0], [30.0, 40.0]]), np.array([1, 0]), np.array([1.0, 2.0, 50.0, 60.0])
    scale = np.array([256 / 200, 128 / 100])
    cases = {
        "points + box": (dict(point_coords=pts, point_labels=lab, box=box), [1, 0, 2, 3], [*pts, box[:2], box[2:]]),
        "points": (dict(point_coords=pts, point_labels=lab), [1, 0, -1], [*pts, [0, 0]]),
        "box": (dict(box=box), [2, 3], [box[:2], box[2:]]),
        "nothing": ({}, [-1], [[0, 0]]),
    }
    for name, (kw, labels, coords) in cases.items():
        feed = onnx_inputs(tiny.model, emb, (100, 200), **kw)
        np.testing.assert_array_equal(feed["point_labels"], np.array([labels], np.float32), err_msg=name)
        np.testing.assert_allclose(feed["point_coords"][0], np.array(coords) * scale, rtol=1e-6, err_msg=name)
        assert feed["mask_input"].shape == (1, 1, 64, 64) and feed["has_mask_input"][0] == 0.0
    feed = onnx_inputs(tiny.model, emb, (100, 200), point_coords=pts[:1], point_labels=lab[:1], mask_input=np.ones((1, 64, 64)))
    assert feed["has_mask_input"][0] == 1.0 and feed["mask_input"].shape == (1, 1, 64, 64)
    for kw, message in [(dict(point_coords=pts, point_labels=lab[:1]), "point_labels must have 2 labels"),
                        (dict(mask_input=np.ones((1, 32, 32))), "mask_input must have shape"),
                        (dict(box=box[:3]), "box must hold 4 numbers")]:
        with pytest.raises(ValueError, match=message):
            onnx_inputs(tiny.model, emb, (100, 200), **kw)


def test_imports_without_onnx():
    """SamOnnxModel (and the package) import without onnx and onnxruntime: only writing needs them."""
    import subprocess

    code = ("import sys; sys.modules['onnx'] = sys.modules['onnxruntime'] = None\n"
            "from sam_jax.utils.onnx import SamOnnxModel\nfrom sam_jax.export.onnx import export_onnx\n"
            "try:\n    export_onnx(None, 'never.onnx')\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "onnx is not installed: pip install onnx onnxruntime" in out.stdout, out.stderr
