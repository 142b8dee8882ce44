"""LiteRT (TFLite) export for phones: parity with PyTorch, the Android app's two files, INT8, metadata, and use.

These tests need the `mobile` extra (litert-torch, ai-edge-litert). Without it they skip, except where
FAS_REQUIRE_MOBILE=1 (CI): there a missing extra fails them. The missing-extra error is tested always.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from fas.convention import InputConvention, ModelInfo
from fas.errors import ConfigError
from fas.export import tflite
from fas.inference import tflite_file
from fas.inference.backends import TfliteBackend, load_backend
from fas.inference.preprocess import face_batch
from fas.models import BACKBONES, build_backbone
from fas.registry import class_scheme

from conftest import TINY_DATA, celeba_datamodule, compose_config

SILENTFACE3 = class_scheme("silentface3")

HAS_MOBILE = importlib.util.find_spec("litert_torch") is not None and importlib.util.find_spec("ai_edge_litert")
mobile = pytest.mark.skipif(
    not HAS_MOBILE and os.environ.get("FAS_REQUIRE_MOBILE") != "1",
    reason="the mobile extra is not installed (pip install -e '.[mobile]')",
)
SILENTFACE = ("2.7_80x80_MiniFASNetV2.pth", "4_0_0_80x80_MiniFASNetV1SE.pth")


def test_the_missing_extra_is_one_line_naming_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def without_litert(name, *args, **kwargs):
        if name.startswith(("litert_torch", "ai_edge_litert", "ai_edge_quantizer")):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    real_import_module = importlib.import_module

    def import_module_without_litert(name: str):
        if name.startswith(("litert_torch", "ai_edge_litert", "ai_edge_quantizer")):
            raise ImportError(f"No module named '{name}'")
        return real_import_module(name)

    monkeypatch.setattr(builtins, "__import__", without_litert)
    monkeypatch.setattr(importlib, "import_module", import_module_without_litert)
    model_file = tmp_path / "model.tflite"
    model_file.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    for call in (
        lambda: load_backend(model_file),
        lambda: tflite.export_fp32(torch.nn.Identity(), None, tmp_path / "x.tflite"),  # type: ignore[arg-type]
    ):
        with pytest.raises(tflite_file.TfliteError) as refused:
            call()
        assert str(refused.value) == (
            "LiteRT (.tflite) files need the mobile extra, which is not installed: "
            "pip install -e '.[mobile]' && pip install 'typing-extensions>=4.14'"
        )


def test_the_app_file_names_follow_the_silentface_convention() -> None:
    app = InputConvention(input_size=80, color_order="bgr", pixel_scale=1.0, crop_scale=2.7, crop_mode="shift")
    assert tflite.file_names(ModelInfo(app, SILENTFACE3, "minifasnet_v2")) == (
        "spoof_model_scale_2_7.tflite",
        "spoof_model_scale_2_7_int8.tflite",
    )
    four = InputConvention(**{**app.to_dict(), "crop_scale": 4.0})
    assert tflite.file_names(ModelInfo(four, SILENTFACE3, "minifasnet_v1se"))[0] == "spoof_model_scale_4_0.tflite"
    rgb = InputConvention(**{**app.to_dict(), "color_order": "rgb"})
    assert tflite.file_names(ModelInfo(rgb, SILENTFACE3, "minifasnet_v2")) == (
        "model.tflite",
        "model_int8.tflite",
    )


def test_float_stride_names_the_high_resolution_blocks() -> None:
    """The blocks kept float are those whose output map is at most `float_stride` times smaller, named as
    litert-torch names their tensors; MiniFASNetV2 at 80: 40x40 after conv1 and conv2_dw, 20x20 after conv_23
    and conv_3, then 10x10 and 5x5."""
    backbone = build_backbone("minifasnet_v2", input_size=80, num_classes=3)
    assert tflite.high_resolution_scopes(backbone, 80, 4) == [
        r"\.ConvBlock_conv1/",
        r"\.ConvBlock_conv2_dw/",
        r"\.DepthWise_conv_23/",
        r"\.Residual_conv_3/",
    ]
    assert tflite.high_resolution_scopes(backbone, 80, 2) == [r"\.ConvBlock_conv1/", r"\.ConvBlock_conv2_dw/"]
    assert tflite.high_resolution_scopes(backbone, 80, 0) == []
    assert backbone.training  # measured on a copy
    with pytest.raises(ConfigError, match=r"tflite.float_stride must be 0 \(quantize every layer\) or more, got -1"):
        tflite.TfliteRecipe(float_stride=-1)


GRID = [(name, size) for name in sorted(BACKBONES) for size in (80, 128)]


@mobile
@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "size"), GRID, ids=[f"{b}-{s}" for b, s in GRID])
def test_fp32_matches_pytorch_on_every_backbone(backbone: str, size: int, tmp_path: Path) -> None:
    model = build_backbone(backbone, input_size=size, num_classes=2).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so every layer matters
        for layer in model.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
    info = ModelInfo(InputConvention(input_size=size), SILENTFACE3.__class__("b", ("live", "spoof"), 0), backbone)
    path = tflite.export_fp32(model, info, tmp_path / "model.tflite")
    backend = load_backend(path)
    assert isinstance(backend, TfliteBackend)
    assert list(backend.input["shape"]) == [1, size, size, 3] and backend.input["dtype"] == np.float32
    batch = np.random.default_rng(0).random((3, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(backend.logits(batch), expected, atol=1e-4, rtol=0)
    assert tflite_file.read_metadata(path) == (info, {"fas.layout": "nhwc", "fas.output": "logits"})


def require_mobile_extra() -> None:
    """Module fixtures that export LiteRT files: skipped without the mobile extra, failed under FAS_REQUIRE_MOBILE=1."""
    if not HAS_MOBILE:
        if os.environ.get("FAS_REQUIRE_MOBILE") == "1":
            pytest.fail("FAS_REQUIRE_MOBILE=1 but the mobile extra is not installed")
        pytest.skip("the mobile extra is not installed (pip install -e '.[mobile]')")


@pytest.fixture(scope="module")
def silentface_pair(reference_dir: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`python export.py ckpt_path=<Silent-Face .pth> format=tflite` for both published files."""
    from fas.export.pipeline import export

    require_mobile_extra()
    results = {}
    for name in SILENTFACE:
        overrides = [f"ckpt_path={reference_dir / 'silentface' / name}", "format=tflite", *TINY_DATA]
        cfg = compose_config("export", [*overrides, f"data.root={tiny_data}"], tmp_path_factory.mktemp("export"))
        results[name] = export(cfg)
    return results


@mobile
def test_the_silentface_pair_becomes_the_apps_two_files(silentface_pair: dict, reference_dir: Path) -> None:
    """Their FP32 logits are Silent-Face's (within 1e-4), and the app's fusion of the two TFLite outputs (softmax
    each, average, real iff class 1 wins) gives the recorded decisions."""
    expected = json.loads((reference_dir / "expected/silentface.json").read_text())["images"]
    names = {name: result.fp32.name for name, result in silentface_pair.items()}
    assert names == {SILENTFACE[0]: "spoof_model_scale_2_7.tflite", SILENTFACE[1]: "spoof_model_scale_4_0.tflite"}
    backends = {name: load_backend(result.fp32) for name, result in silentface_pair.items()}
    for image_name, record in expected.items():
        image = cv2.imread(str(reference_dir / "images" / image_name))
        fused = []
        for name, backend in backends.items():
            nhwc = face_batch(image, [record["bbox_xywh"]], backend.info.convention).transpose(0, 2, 3, 1)
            assert nhwc.shape == (1, 80, 80, 3) and nhwc.max() > 1.0  # BGR 0..255, as the app feeds it
            backend.interpreter.set_tensor(backend.input["index"], nhwc)
            backend.interpreter.invoke()
            logits = backend.interpreter.get_tensor(backend.output["index"])[0]
            np.testing.assert_allclose(logits, record["models"][name]["logits"], atol=1e-4, rtol=0)
            fused.append(np.exp(logits) / np.exp(logits).sum())
        assert int(np.argmax(np.mean(fused, axis=0))) == record["label"]
    for result in silentface_pair.values():
        report = result.report
        assert report["format"] == "LiteRT" and report["fp32"]["max_abs_logit_diff_vs_pytorch"] <= 1e-4
        # int8 weights except the float high-resolution blocks; per-channel scales and int64 zero points take
        # about 400 KB more, so the file is about half of FP32's rather than a quarter
        assert (
            result.int8.name.endswith("_int8.tflite") and result.int8.stat().st_size < 0.55 * result.fp32.stat().st_size
        )
        assert (result.directory / "report_tflite.md").read_text().startswith("# LiteRT export of minifasnet_")


@mobile
def test_predict_fuses_the_two_tflite_files(silentface_pair: dict, reference_dir: Path, tmp_path: Path) -> None:
    from fas.predict import predict

    files = ",".join(str(result.fp32) for result in silentface_pair.values())
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    overrides = [f"input={reference_dir / 'images'}", f"liveness.models=[{files}]", f"detector.model_path={yunet}"]
    jsonl = predict(compose_config("predict", overrides, tmp_path))
    labels = {Path(r["file"]).name: r["label"] for r in map(json.loads, jsonl.read_text().splitlines())}
    assert labels == {"image_F1.jpg": "spoof", "image_F2.jpg": "spoof", "image_T1.jpg": "real"}


@pytest.fixture(scope="module")
def trained_tflite(ranked_checkpoint: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tests' trained checkpoint exported to ONNX and LiteRT in one export.py run."""
    from fas.export.pipeline import export

    require_mobile_extra()
    folder = tmp_path_factory.mktemp("trained_tflite")
    overrides = [f"ckpt_path={ranked_checkpoint}", "format=[onnx,tflite]", *TINY_DATA, f"data.root={tiny_data}"]
    export(compose_config("export", overrides, folder))
    return folder / "export"


@mobile
def test_int8_follows_fp32_on_the_trained_checkpoint(trained_tflite: Path) -> None:
    report = json.loads((trained_tflite / "report_tflite.json").read_text())
    assert report["quantization"]["method"] == "full-integer int8" and report["quantization"]["int8_io"] is False
    assert report["int8"]["decision_agreement"] >= 0.9
    assert abs(report["int8"]["accuracy_delta_points"]) <= 10
    int8 = load_backend(trained_tflite / "model_int8.tflite")
    ops = {op["op_name"] for op in int8.interpreter._get_ops_details()}
    assert {"QUANTIZE", "DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D"} <= ops
    assert report["quantization"]["float_stride"] == 4 and tflite.layer_counts(int8.path)["float"] > 0
    assert int8.input["dtype"] == np.float32 and int8.output["dtype"] == np.float32  # float I/O by default
    assert {"model.onnx", "model_int8.onnx", "report.json"} <= {p.name for p in trained_tflite.iterdir()}


@mobile
def test_evaluate_takes_tflite_beside_onnx(trained_tflite: Path, tiny_data: Path, tmp_path: Path) -> None:
    from fas.evaluate import evaluate

    models = (
        f"[{trained_tflite / 'model.onnx'},{trained_tflite / 'model.tflite'},{trained_tflite / 'model_int8.tflite'}]"
    )
    overrides = [f"ckpt_path={models}", *TINY_DATA, f"data.root={tiny_data}"]
    onnx_model, fp32, int8 = json.loads(evaluate(compose_config("evaluate", overrides, tmp_path)).metrics.read_text())[
        "models"
    ]
    assert fp32["metrics"]["auroc"] == pytest.approx(onnx_model["metrics"]["auroc"], abs=1e-6)
    assert fp32["convention"] == onnx_model["convention"] and int8["counts"] == onnx_model["counts"]
    assert abs(int8["metrics"]["auroc"] - fp32["metrics"]["auroc"]) < 0.1


@mobile
def test_int8_io_and_softmax_options(ranked_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    """int8 input/output (the caller quantizes) and the softmax in the graph still score as the plain files."""
    from fas.export.pipeline import export

    overrides = [f"ckpt_path={ranked_checkpoint}", "format=tflite", *TINY_DATA, f"data.root={tiny_data}"]
    options = ["tflite.int8_io=true", "tflite.softmax=true", "tflite.float_stride=0"]
    result = export(compose_config("export", [*overrides, *options], tmp_path))
    fp32, int8 = load_backend(result.fp32), load_backend(result.int8)
    assert tflite.layer_counts(result.int8)["float"] == 0  # every layer in 8 bits
    assert int8.input["dtype"] == np.int8 and int8.output["dtype"] == np.int8
    assert fp32.outputs_probabilities and tflite_file.read_metadata(result.fp32)[1]["fas.output"] == "probabilities"
    batch = np.random.default_rng(0).random((4, 3, 64, 64), dtype=np.float32)
    reference = load_backend(ranked_checkpoint).logits(batch)
    # log softmax of the logits, up to the per-image constant the softmax removes
    log_p = fp32.logits(batch)
    np.testing.assert_allclose(log_p - log_p[:, :1], reference - reference[:, :1], atol=1e-4)
    # the report scores the int8-input file on the test crops through the same backend (it quantizes the input)
    assert result.report["fp32"]["max_abs_logit_diff_vs_pytorch"] <= 1e-4
    assert result.report["int8"]["decision_agreement"] >= 0.9


# quantization=qat with both formats: one QAT stage (8 steps of 8 crops, as tests/test_export_qat.py), both files
QAT_BOTH = ["format=[onnx,tflite]", "quantization=qat", "quantization.qat_max_steps=8", "quantization.qat_batch_size=8"]
# On the 22 test crops QAT's files agree with FP32 on 19-20 decisions (as tests/test_export_qat.py's bound, which
# its ONNX file meets), mean |logit difference| 0.20 for logits whose spread is 1.4-1.6; the two INT8 files
# compute on the same grid and agree on all 22 decisions, mean |logit difference| 0.02-0.05.
MIN_QAT_AGREEMENT = 19 / 22
MAX_QAT_LOGIT_DIFFERENCE = 0.35
MAX_LOGIT_DIFFERENCE_BETWEEN_RUNTIMES = 0.1
INTEGER_LAYERS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


@pytest.fixture(scope="module")
def qat_both(ranked_checkpoint: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python export.py format=[onnx,tflite] quantization=qat` of the tests' trained checkpoint."""
    from fas.export.pipeline import export

    require_mobile_extra()
    folder = tmp_path_factory.mktemp("qat_both")
    overrides = [f"ckpt_path={ranked_checkpoint}", *QAT_BOTH, *TINY_DATA, f"data.root={tiny_data}"]
    export(compose_config("export", overrides, folder))
    return folder / "export"


def tflite_ops(path: Path) -> list[tuple[str, list[type]]]:
    """Each operator of a `.tflite` in order, with the types of its inputs (as written, before any delegate)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    types = {tensor["index"]: tensor["dtype"] for tensor in interpreter.get_tensor_details()}
    return [(op["op_name"], [types[i] for i in op["inputs"] if i >= 0]) for op in interpreter._get_ops_details()]


@mobile
def test_qat_tflite_runs_every_layer_in_int8(qat_both: Path) -> None:
    """Every convolution and the classifier take int8 input and weights and an int32 bias; the only float
    operation is the QUANTIZE of the float input (a DEQUANTIZE gives float logits)."""
    ops = tflite_ops(qat_both / "model_int8.tflite")
    layers = [types for name, types in ops if name in INTEGER_LAYERS]
    assert len(layers) == 89 and all(types == [np.int8, np.int8, np.int32] for types in layers), layers
    assert [name for name, types in ops if np.float32 in types] == ["QUANTIZE"] == [ops[0][0]]
    assert ops[-1][0] == "DEQUANTIZE" and {"LOGISTIC", "MEAN", "MUL", "ADD"} <= {name for name, _ in ops}
    report = json.loads((qat_both / "report_tflite.json").read_text())
    assert report["int8"]["layers"] == {"int8": 89, "float": 0} and report["fp32"]["layers"]["int8"] == 0
    assert "| Conv/FC layers in int8 / float | - | 0 / 90 | 89 / 0 |" in (qat_both / "report_tflite.md").read_text()
    int8 = load_backend(qat_both / "model_int8.tflite")
    assert int8.input["dtype"] == np.float32 and int8.output["dtype"] == np.float32  # float I/O by default
    assert tflite_file.read_metadata(int8.path) == tflite_file.read_metadata(qat_both / "model.tflite")


def onnx_integers(path: Path) -> tuple[set, list, list]:
    """A QDQ ONNX file's activation ranges as int8 would write them (scale, uint8 zero point - 128), and its
    layers' int8 weights (per-channel scales, sorted values) and nonzero int32 biases (sorted values)."""
    graph = onnx.load(str(path)).graph
    values = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    pairs = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    ranges = {
        (float(values[node.input[1]]), int(values[node.input[2]]) - 128)
        for node in pairs
        if len(node.input) > 2 and values[node.input[2]].dtype == np.uint8  # weights' zero points are dropped
    }
    stored = [(values[node.input[0]], values[node.input[1]]) for node in pairs if node.input[0] in values]
    weights = sorted((scale.tolist(), sorted(q.ravel().tolist())) for q, scale in stored if q.dtype == np.int8)
    biases = sorted(sorted(q.ravel().tolist()) for q, _ in stored if q.dtype == np.int32 and q.any())
    return ranges, weights, biases


def tflite_integers(path: Path) -> tuple[set, list, list]:
    """The same of a `.tflite` (its per-tensor int8 ranges but the logits', which ONNX keeps float)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    details = {tensor["index"]: tensor for tensor in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    (logits,) = ops[-1]["inputs"]  # the DEQUANTIZE's input
    ranges = {
        (float(tensor["quantization"][0]), int(tensor["quantization"][1]))
        for index, tensor in details.items()
        if tensor["dtype"] == np.int8 and tensor["quantization_parameters"]["scales"].size == 1 and index != logits
    }
    layers = [op["inputs"] for op in ops if op["op_name"] in INTEGER_LAYERS]
    weights = sorted(
        (details[w]["quantization_parameters"]["scales"].tolist(), sorted(interpreter.get_tensor(w).ravel().tolist()))
        for _, w, _ in layers
    )
    biases = sorted(
        sorted(interpreter.get_tensor(b).ravel().tolist()) for _, _, b in layers if interpreter.get_tensor(b).any()
    )
    return ranges, weights, biases


@mobile
def test_qat_tflite_has_the_integers_learned_for_the_onnx_file(qat_both: Path) -> None:
    """One QAT stage makes both files: the LiteRT file's int8 activation ranges are exactly the ONNX file's uint8
    ones (same scale, zero point - 128), and its int8 weights, their scales and its int32 biases are the same
    numbers. Nothing was recalibrated."""
    onnx_report = json.loads((qat_both / "report.json").read_text())
    tflite_report = json.loads((qat_both / "report_tflite.json").read_text())
    assert tflite_report["qat"] == onnx_report["qat"] and tflite_report["quantization"]["method"] == "qat"
    ranges, weights, biases = onnx_integers(qat_both / "model_int8.onnx")
    assert len(ranges) > 100 and len(weights) == 89 and len(biases) > 50
    assert tflite_integers(qat_both / "model_int8.tflite") == (ranges, weights, biases)


@mobile
def test_qat_tflite_keeps_the_float_stride_layers_float(ranked_checkpoint: Path, tiny_data: Path, tmp_path: Path):
    """`quantization=qat quantization.float_stride=4`: the high-resolution layers are trained and written float in
    the LiteRT file too (the same 31 as in the ONNX file), the input feeds the float stem directly."""
    from fas.export.pipeline import export

    require_mobile_extra()
    qat = ["format=tflite", "quantization=qat", "quantization.qat_max_steps=8", "quantization.qat_batch_size=8"]
    overrides = [f"ckpt_path={ranked_checkpoint}", *qat, *TINY_DATA, f"data.root={tiny_data}"]
    export(compose_config("export", [*overrides, "quantization.float_stride=4"], tmp_path))
    report = json.loads((tmp_path / "export" / "report_tflite.json").read_text())
    assert report["quantization"]["float_stride"] == 4 and report["int8"]["layers"] == {"int8": 58, "float": 31}
    assert report["int8"]["decision_agreement"] >= MIN_QAT_AGREEMENT, report["int8"]
    layers = [types for name, types in tflite_ops(tmp_path / "export" / "model_int8.tflite") if name in INTEGER_LAYERS]
    assert layers[0][:2] == [np.float32, np.float32] and layers[-1] == [np.int8, np.int8, np.int32]  # stem, classifier


@mobile
def test_qat_tflite_decides_as_fp32(qat_both: Path, tiny_data: Path) -> None:
    """Its live/spoof decisions on the generated test crops agree with FP32's as the ONNX file's do, and with the
    ONNX file's (the same grid, rounded by LiteRT's integer kernels)."""
    from fas.export.pipeline import labelled_images

    report = json.loads((qat_both / "report_tflite.json").read_text())
    assert report["int8"]["decision_agreement"] >= MIN_QAT_AGREEMENT, report["int8"]
    backends = [load_backend(qat_both / name) for name in ("model.tflite", "model_int8.tflite", "model_int8.onnx")]
    datamodule = celeba_datamodule(tiny_data, backends[0].info.class_scheme, convention=backends[0].info.convention)
    datamodule.setup("test")
    fp32, int8, onnx_int8 = (backend.logits(labelled_images(datamodule.splits["test"]).images) for backend in backends)
    assert fp32.std(axis=0).min() > 0.5  # a trained model: its logits vary from crop to crop
    assert np.abs(int8 - fp32).mean() <= MAX_QAT_LOGIT_DIFFERENCE
    real = backends[0].info.class_scheme.real_class_index
    assert np.mean((int8.argmax(axis=1) == real) == (onnx_int8.argmax(axis=1) == real)) >= 21 / 22
    assert np.abs(int8 - onnx_int8).mean() <= MAX_LOGIT_DIFFERENCE_BETWEEN_RUNTIMES
