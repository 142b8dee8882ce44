"""INT8 recipes: static (every calibration method), dynamic and none; compaction changes no number."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import QuantFormat, quantize_static
from test_export_rewrite import SCHEME, randomized

from fas.convention import InputConvention, ModelInfo
from fas.errors import ConfigError
from fas.export.onnx import export_onnx
from fas.export.quantize import ArrayReader, QuantizationRecipe, compact, quantize
from fas.export.rewrite import optimize_for_cpu
from fas.inference.backends import load_backend
from fas.inference.onnx_file import read_metadata
from fas.models import build_backbone

SIZE = 48


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An optimized FP32 MiniFASNetV2SE export at 48x48 with random non-trivial weights."""
    directory = tmp_path_factory.mktemp("quantize")
    info = ModelInfo(InputConvention(input_size=SIZE), SCHEME, "minifasnet_v2se", {"ft_weight": 0.5})
    torch.manual_seed(3)  # the convolution weights come from the default initialisation
    model = randomized(build_backbone("minifasnet_v2se", input_size=SIZE, num_classes=2), seed=3)
    path = export_onnx(model, info, directory / "plain.onnx")
    onnx.save(optimize_for_cpu(onnx.load(str(path))), directory / "model.onnx")
    return directory / "model.onnx"


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count, 3, SIZE, SIZE)).astype(np.float32)


def op_counts(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_recipe_makes_a_qdq_model_close_to_fp32(method: str, fp32_model: Path, tmp_path: Path) -> None:
    recipe = QuantizationRecipe(method="static", calibration_method=method, calibration_samples=32)
    path = quantize(fp32_model, tmp_path / "model_int8.onnx", recipe, images(32, seed=0))
    ops = op_counts(path)
    assert ops["QuantizeLinear"] > 50 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    backend = load_backend(path)
    assert backend.info == read_metadata(fp32_model)
    test = images(16, seed=1)
    int8, fp32 = backend.logits(test), load_backend(fp32_model).logits(test)
    assert int8.shape == (16, 2)
    assert correlation(int8, fp32) > 0.95, (int8, fp32)


def test_static_int8_keeps_the_logits_float(fp32_model: Path, tmp_path: Path) -> None:
    path = quantize(fp32_model, tmp_path / "model_int8.onnx", QuantizationRecipe(), images(16, seed=0))
    graph = onnx.load(str(path)).graph
    assert next(n for n in graph.node if n.output[0] == "logits").op_type == "Gemm"  # not a DequantizeLinear


def test_dynamic_recipe_is_the_conv_integer_form(fp32_model: Path, tmp_path: Path) -> None:
    path = quantize(fp32_model, tmp_path / "model_int8.onnx", QuantizationRecipe(method="dynamic"))
    ops = op_counts(path)
    assert ops["ConvInteger"] > 50 and ops["DynamicQuantizeLinear"] > 0 and ops["QuantizeLinear"] == 0
    test = images(8, seed=1)
    assert correlation(load_backend(path).logits(test), load_backend(fp32_model).logits(test)) > 0.95


def test_none_recipe_makes_no_int8_file(fp32_model: Path, tmp_path: Path) -> None:
    assert quantize(fp32_model, tmp_path / "model_int8.onnx", QuantizationRecipe(method="none")) is None
    assert not (tmp_path / "model_int8.onnx").exists()


def test_compact_changes_no_output_and_shrinks_the_file(fp32_model: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw.onnx"
    quantize_static(
        str(fp32_model), str(raw), ArrayReader(images(16, 0)), quant_format=QuantFormat.QDQ, per_channel=True
    )
    before = onnx.load(str(raw))
    after = compact(onnx.load(str(raw)))
    onnx.checker.check_model(after, full_check=True)
    test = {"input": images(4, seed=2)}
    outputs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, test)[0]
        for m in (before, after)
    ]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert after.ByteSize() < 0.85 * before.ByteSize()  # about 20% of a MiniFASNet file
    assert {o.name for o in after.graph.output} == {"logits"} and after.graph.input[0].name == "input"


def test_recipe_errors_name_the_setting(fp32_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"quantization.method must be one of static, dynamic, qat, none, got 'int4'"):
        QuantizationRecipe(method="int4")
    with pytest.raises(ConfigError, match=r"calibration_method must be one of minmax, entropy, percentile"):
        QuantizationRecipe(calibration_method="kl")
    with pytest.raises(ConfigError, match=r"static quantization needs calibration images"):
        quantize(fp32_model, tmp_path / "x.onnx", QuantizationRecipe(), None)
    with pytest.raises(ConfigError, match=r"quantization=qat trains the PyTorch model"):  # fas.export.qat does
        quantize(fp32_model, tmp_path / "x.onnx", QuantizationRecipe(method="qat", float_stride=0), None)


def test_calibration_count_need_not_fill_whole_batches(fp32_model: Path, tmp_path: Path) -> None:
    recipe = QuantizationRecipe(calibration_method="percentile", calibration_samples=19)
    assert quantize(fp32_model, tmp_path / "model_int8.onnx", recipe, images(19, seed=4)).is_file()


def conv_output_sides(path: Path) -> list[int]:
    """The output map side of every Conv of a model, in graph order."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: v.type.tensor_type.shape.dim for v in model.graph.value_info}
    return [shapes[n.output[0]][-1].dim_value for n in model.graph.node if n.op_type == "Conv"]


def test_float_stride_keeps_the_high_resolution_convs_float_with_half_weights(fp32_model: Path, tmp_path: Path) -> None:
    calibration, test = images(16, seed=0), images(16, seed=1)
    all_int8 = quantize(fp32_model, tmp_path / "s0.onnx", QuantizationRecipe(float_stride=0), calibration)
    mixed = quantize(fp32_model, tmp_path / "s4.onnx", QuantizationRecipe(float_stride=4), calibration)
    assert op_counts(all_int8)["Cast"] == 0

    graph = onnx.load(str(mixed)).graph
    halves = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    casts = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Cast"}
    float_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in casts]
    assert all(casts[n.input[1]] in halves for n in float_convs)
    expected = sum(side >= SIZE // 4 for side in conv_output_sides(fp32_model))  # stride <= 4 at 48x48
    assert 0 < len(float_convs) == expected < len(conv_output_sides(fp32_model))
    assert correlation(load_backend(mixed).logits(test), load_backend(fp32_model).logits(test)) > 0.95


def test_float_stride_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match=r"quantization.float_stride must be 0 \(quantize every layer\) or more"):
        QuantizationRecipe(float_stride=-1)
