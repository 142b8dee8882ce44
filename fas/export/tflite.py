"""LiteRT (TFLite) export for phones: an FP32 and a full-integer INT8 `.tflite` with the Android app's layout.

The published Android integration of MiniFASNet feeds each model `[1, S, S, 3]` float32 NHWC in the
model's own convention (for Silent-Face's: BGR 0-255 crops at 2.7x and 4.0x the face box) and reads
`[1, classes]`. `export_fp32` converts the backbone with litert-torch behind its channel-last wrapper
(`litert_torch.to_channel_last_io`), so the file takes exactly that, its PReLUs written with operations the
integer kernels run (`fas.export.layers.PReluAsConvs`); `quantize_int8` quantizes it with
ai-edge-quantizer (installed with litert-torch): int8 weights and int8 activations whose ranges are
calibrated on the data config's training crops. With `quantization=qat` the INT8 file is instead
`export_quantized`: the model of quantization-aware training (`fas.export.qat.litert_form`, every layer 8-bit)
lowered by litert-torch with the ranges it learned. The INT8 file keeps float input and output (a QUANTIZE
after the input and a DEQUANTIZE before the output), so it is a drop-in replacement; `int8_io` makes its
input and output int8 as well (the caller quantizes with the input's scale and zero point).

Two choices bring INT8 from 80-89% to 97-99% of FP32's decisions (`experiments/tflite_latency`), as in
the ONNX recipe: activation ranges are the calibration crops' global min and max (ai-edge-quantizer's
default, a moving average of per-crop extremes, clips the outliers: even 16-bit activations agreed on only
86%), and the high-resolution blocks stay float (`float_stride`, the ONNX recipe's rule per top-level block).

Both files carry the same metadata as our ONNX exports (`fas.inference.tflite_file`), so
`fas.inference.backends.load_backend` reads them like ONNX files.

litert-torch and ai-edge-litert are the optional `mobile` extra; without them every entry point says
in one line how to install it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fas.convention import ModelInfo
from fas.errors import ConfigError
from fas.export.layers import is_high_resolution, prelu_as_convs
from fas.inference.tflite_file import OUTPUT_KEY, TfliteError, read_metadata, require, write_metadata

log = logging.getLogger(__name__)

APP_SCALES = {2.7: "2_7", 4.0: "4_0"}  # the crop scales of the app's two files: spoof_model_scale_<scale>.tflite


@dataclass(frozen=True)
class TfliteRecipe:
    """What the LiteRT export writes (`configs/tflite/default.yaml`)."""

    int8: bool = True  # also write the full-integer INT8 file
    int8_io: bool = False  # INT8 file with int8 input and output instead of float
    softmax: bool = False  # add the softmax to both graphs: outputs are probabilities, not logits
    calibration_samples: int = 128
    float_stride: int = 4  # top-level blocks whose output is at most this many times smaller stay float; 0: none

    def __post_init__(self) -> None:
        if self.calibration_samples < 1:
            raise ConfigError(f"tflite.calibration_samples must be at least 1, got {self.calibration_samples}")
        if self.float_stride < 0:
            raise ConfigError(f"tflite.float_stride must be 0 (quantize every layer) or more, got {self.float_stride}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_names(info: ModelInfo) -> tuple[str, str]:
    """(FP32, INT8) file names: the Android app's `spoof_model_scale_2_7.tflite` / `_4_0` for Silent-Face's
    80x80 BGR 0-255 models with those crops, else `model.tflite`, `model_int8.tflite`."""
    convention = info.convention
    app_like = convention.color_order == "bgr" and convention.pixel_scale == 1.0 and convention.crop_mode == "shift"
    scale = APP_SCALES.get(convention.crop_scale)
    if app_like and scale and convention.input_size == 80 and info.class_scheme.real_class_index == 1:
        return f"spoof_model_scale_{scale}.tflite", f"spoof_model_scale_{scale}_int8.tflite"
    return "model.tflite", "model_int8.tflite"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the converter's and quantizer's progress bars, prints and warnings around a call."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def export_fp32(backbone: nn.Module, info: ModelInfo, path: str | Path, softmax: bool = False) -> Path:
    """Convert the backbone to an FP32 `.tflite` taking `[1, S, S, 3]` float32 NHWC, with fas metadata."""
    litert_torch = require("litert_torch")
    litert_torch.config.show_progress = False
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = info.convention.input_size
    model = prelu_as_convs(copy.deepcopy(backbone).eval().to(memory_format=torch.contiguous_format))
    if softmax:
        model = nn.Sequential(model, nn.Softmax(dim=1))
    channel_last = litert_torch.to_channel_last_io(model, args=[0]).eval()
    with torch.no_grad(), quiet():
        edge = litert_torch.convert(channel_last, (torch.zeros(1, size, size, 3),))
        edge.export(str(path))
    write_metadata(path, info, softmax)
    return path


def high_resolution_scopes(backbone: nn.Module, input_size: int, float_stride: int) -> list[str]:
    """Name patterns of the backbone's top-level blocks whose output map is at most `float_stride` times
    smaller than the input: the layers `quantize_int8` keeps float. litert-torch names each tensor after the
    module path that made it (`...fas.models.minifasnet.ConvBlock_conv1/...`): `.<Class>_<attribute>/`."""
    if not float_stride:
        return []
    model = copy.deepcopy(backbone).eval()
    children = dict(model.named_children())
    sides: dict[str, int] = {}
    for name, child in children.items():
        child.register_forward_hook(lambda module, inputs, output, name=name: sides.__setitem__(name, side_of(output)))
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    return [
        rf"\.{re.escape(type(children[name]).__name__)}_{re.escape(name)}/"
        for name, side in sides.items()
        if is_high_resolution(input_size, side, float_stride)
    ]


def side_of(output: Any) -> int:
    """The width of a feature map (N, C, H, W); 0 for anything else."""
    return output.shape[-1] if isinstance(output, torch.Tensor) and output.dim() == 4 else 0


def quantize_int8(
    fp32_path: str | Path,
    path: str | Path,
    calibration_nhwc: np.ndarray,
    int8_io: bool = False,
    float_scopes: list[str] | None = None,
) -> Path:
    """Full-integer INT8 (int8 weights and activations, the global min-max ranges of `calibration_nhwc`,
    N x S x S x 3) except the operations whose output tensor name matches one of `float_scopes`."""
    quantizer = require("ai_edge_quantizer.quantizer")
    calibrator = require("ai_edge_quantizer.calibrator")
    qsv_utils = require("ai_edge_quantizer.utils.qsv_utils")
    recipe_manager = require("ai_edge_quantizer.recipe_manager")
    qtyping = require("ai_edge_quantizer.qtyping")
    algorithms = require("ai_edge_quantizer.algorithm_manager").AlgorithmName
    interpreter = require("ai_edge_litert.interpreter")
    recipe = recipe_manager.RecipeManager()
    recipe.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
        algorithm_key=algorithms.MIN_MAX_UNIFORM_QUANT,
    )
    if float_scopes:  # the later, narrower scope wins
        recipe.add_quantization_config(
            regex="|".join(float_scopes),
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=algorithms.NO_QUANTIZE,
        )
    if not int8_io:  # graph input and output stay float: QUANTIZE / DEQUANTIZE at the edges
        for edge in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            recipe.add_quantization_config(regex=".*", operation_name=edge, algorithm_key=algorithms.NO_QUANTIZE)
    fp32_bytes = Path(fp32_path).read_bytes()
    signatures = interpreter.Interpreter(model_content=fp32_bytes).get_signature_list()
    ((signature, details),) = signatures.items()
    (input_name,) = details["inputs"]
    samples = [{input_name: image[None].astype(np.float32)} for image in calibration_nhwc]
    with quiet():
        # Quantizer.calibrate keeps a moving average of each crop's min and max; the global extremes are kept here
        threads = os.cpu_count() or 1
        ranges = calibrator.Calibrator(fp32_bytes, num_threads=threads, qsv_update_func=qsv_utils.min_max_update)
        ranges.calibrate({signature: samples}, recipe)
        engine = quantizer.Quantizer(fp32_bytes, recipe.get_quantization_recipe())
        result = engine.quantize(ranges.get_model_qsvs())
    path = Path(path)
    path.write_bytes(bytes(result.quantized_model))
    if float_scopes and not layer_counts(path)["float"]:
        raise TfliteError(
            f"{path}: no layer matched the float blocks {float_scopes} (has litert-torch changed how it names "
            "tensors?); export with tflite.float_stride=0 to quantize every layer"
        )
    info, extras = read_metadata(fp32_path)
    write_metadata(path, info, extras[OUTPUT_KEY] == "probabilities")
    return path


def export_quantized(
    model: nn.Module, info: ModelInfo, path: str | Path, int8_io: bool = False, softmax: bool = False
) -> Path:
    """A PT2E-quantized model (quantize/dequantize pairs in LiteRT's int8 scheme, `fas.export.qat.litert_form`) as a
    full-integer `.tflite` taking `[1, S, S, 3]` NHWC, with fas metadata: litert-torch turns every pair into the
    int8 type of its tensor, so each layer computes in int8 with exactly the model's scales. A `softmax` after the
    logits computes in float (its output is float also with `int8_io`)."""
    litert_torch = require("litert_torch")
    pt2e = require("litert_torch.quantize.pt2e_quantizer")
    quant_config = require("litert_torch.quantize.quant_config")
    litert_torch.config.show_progress = False
    path = Path(path)
    size = info.convention.input_size
    # the quantizer only selects litert-torch's static lowering of the pairs: the model is quantized already
    quantizer = pt2e.PT2EQuantizer().set_global(pt2e.get_symmetric_quantization_config(is_per_channel=True))
    if softmax:
        model = nn.Sequential(model, nn.Softmax(dim=1))
    channel_last = litert_torch.to_channel_last_io(model, args=[0])
    channel_last.training = False  # the model is in eval form already (an exported graph refuses `.eval()`)
    with torch.no_grad(), quiet():
        edge = litert_torch.convert(
            channel_last, (torch.zeros(1, size, size, 3),), quant_config=quant_config.QuantConfig(quantizer)
        )
        edge.export(str(path))
    if not int8_io:
        float_interface(path)
    write_metadata(path, info, softmax)
    return path


def float_interface(path: Path) -> None:
    """Give a `.tflite` with int8 input and output float32 ones, in place: a QUANTIZE after the input and a
    DEQUANTIZE before the output, as ai-edge-quantizer writes them. (litert-torch folds a quantized model's
    first quantize and last dequantize into its interface.)"""
    flatbuffer = require("ai_edge_litert.tools.flatbuffer_utils")
    schema = require("ai_edge_litert.schema_py_generated")
    model = flatbuffer.read_model_from_bytearray(bytearray(path.read_bytes()))
    graph, (signature,) = model.subgraphs[0], model.signatureDefs
    for ends, entries, operator in (
        (graph.inputs, signature.inputs, schema.BuiltinOperator.QUANTIZE),
        (graph.outputs, signature.outputs, schema.BuiltinOperator.DEQUANTIZE),
    ):
        for position, index in enumerate(ends):
            if graph.tensors[index].type != schema.TensorType.INT8:
                continue
            twin = float_twin(graph, index, schema)
            op = schema.OperatorT()
            op.opcodeIndex = operator_code(model, operator, schema)
            if operator == schema.BuiltinOperator.QUANTIZE:
                op.inputs, op.outputs = [twin], [index]
                graph.operators.insert(0, op)
            else:
                op.inputs, op.outputs = [index], [twin]
                graph.operators.append(op)
            ends[position] = twin
            for entry in entries:
                entry.tensorIndex = twin if entry.tensorIndex == index else entry.tensorIndex
    path.write_bytes(bytes(flatbuffer.convert_object_to_bytearray(model)))


def float_twin(graph: Any, index: int, schema: Any) -> int:
    """A new float32 tensor of the shape and name of tensor `index` (renamed `<name>_int8`); its index."""
    tensor = graph.tensors[index]
    twin = schema.TensorT()
    twin.name, twin.shape, twin.shapeSignature = tensor.name, tensor.shape, tensor.shapeSignature
    twin.type, twin.buffer = schema.TensorType.FLOAT32, 0
    tensor.name = tensor.name + b"_int8"
    graph.tensors.append(twin)
    return len(graph.tensors) - 1


def operator_code(model: Any, builtin: int, schema: Any) -> int:
    """The index of the model's operator code for `builtin`, added (version 2: int8) when it has none."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 2
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def layer_counts(path: str | Path) -> dict[str, int]:
    """How many convolutions and fully connected layers of a `.tflite` compute in int8 and how many in float (by
    the type of their input: a float layer with int8 weights dequantizes them)."""
    interpreter = require("ai_edge_litert.interpreter").Interpreter(model_path=str(path))
    tensors = {tensor["index"]: tensor for tensor in interpreter.get_tensor_details()}
    kinds = [tensors[op["inputs"][0]]["dtype"] for op in interpreter._get_ops_details() if op["op_name"] in LAYERS]
    return {"int8": sum(kind == np.int8 for kind in kinds), "float": sum(kind == np.float32 for kind in kinds)}
