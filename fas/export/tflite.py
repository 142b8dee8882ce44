"""LiteRT (TFLite) export for phones: an FP32 and a full-integer INT8 `.tflite` with the Android app's layout.

The published Android integration of MiniFASNet feeds each model `[1, S, S, 3]` float32 NHWC in the
model's own convention (for Silent-Face's: BGR 0-255 crops at 2.7x and 4.0x the face box) and reads
`[1, classes]`. `export_fp32` converts the backbone with litert-torch behind its channel-last wrapper
(`litert_torch.to_channel_last_io`), so the file takes exactly that, its PReLUs written with operations the
integer kernels run (`fas.export.layers.PReluAsConvs`); `quantize_int8` quantizes it with
ai-edge-quantizer (installed with litert-torch): int8 weights and int8 activations whose ranges are
calibrated on the data config's training crops. The INT8 file keeps float input and output (a QUANTIZE
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
    if float_scopes and not float_operations(path):
        raise TfliteError(
            f"{path}: no layer matched the float blocks {float_scopes} (has litert-torch changed how it names "
            "tensors?); export with tflite.float_stride=0 to quantize every layer"
        )
    info, extras = read_metadata(fp32_path)
    write_metadata(path, info, extras[OUTPUT_KEY] == "probabilities")
    return path


def float_operations(path: str | Path) -> int:
    """How many convolutions of a `.tflite` compute in float (their input is float32)."""
    interpreter = require("ai_edge_litert.interpreter").Interpreter(model_path=str(path))
    tensors = {tensor["index"]: tensor for tensor in interpreter.get_tensor_details()}
    return sum(
        op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D") and tensors[op["inputs"][0]]["dtype"] == np.float32
        for op in interpreter._get_ops_details()
    )
