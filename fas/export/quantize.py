"""INT8 recipes (`configs/quantization/`): static QDQ (default), dynamic, or none.

- `static`: QDQ format, signed per-channel weights, unsigned activations whose ranges are calibrated
  on real training crops (Percentile, MinMax or Entropy), after `quant_pre_process`. ONNX Runtime
  runs it as QLinearConv/QLinearAdd; with AVX-512 VNNI it is the fastest CPU form. Activations, not
  weights, carry the error (16-bit activations with 8-bit weights agree with FP32 on 99.3% of
  live/spoof decisions, plain 8-bit on 96-97%). Four measures bring 8-bit to 98-99%: the 99.999th
  percentile range, channel ranges equalized before quantization (`rewrite.equalize_channel_ranges`),
  float logits, and the classifier's bias corrected for the mean shift quantization causes. A fifth
  brings it to 99-99.7%: `float_stride` keeps the high-resolution layers (output at most that many
  times smaller than the input) in float. They lose the most signal to 8-bit rounding, because its
  noise is the same high-frequency texture they detect (`experiments/int8_fidelity`).
- `dynamic`: weights only, activation ranges measured per inference (ConvInteger +
  DynamicQuantizeLinear), as in the published suri-liveness INT8 file; no calibration data, but
  slower than FP32 on CPU (experiments/export_latency).
- `qat`: quantization-aware training, the same scheme as `static` learned on the training crops instead of
  calibrated on them (`fas.export.qat`; the `qat_*` settings), every layer 8-bit unless `float_stride` is set.
- `none`: FP32 only.

The static and dynamic files are then compacted without changing any value (`compact`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from fas.errors import ConfigError
from fas.export.layers import is_high_resolution
from fas.export.onnx import INPUT_NAME, quiet_loggers

METHODS = ("static", "dynamic", "qat", "none")
QAT_KEYS = ("qat_epochs", "qat_max_steps", "qat_batch_size", "qat_lr", "qat_seed", "qat_augment")
CALIBRATION_KEYS = ("calibration_method", "calibration_samples")
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass(frozen=True)
class QuantizationRecipe:
    """How to make `model_int8.onnx`; `calibration_samples` training crops are used by `static`, the `qat_*`
    settings by `qat` (at most `qat_max_steps` steps of `qat_batch_size` crops over `qat_epochs` epochs, the crops
    augmented as the fit's with `qat_augment`)."""

    method: str = "static"
    calibration_method: str = "percentile"
    calibration_samples: int = 128
    per_channel: bool = True
    float_stride: int = 4
    qat_epochs: int = 2
    qat_max_steps: int = 300
    qat_batch_size: int = 32
    qat_lr: float = 1e-5
    qat_seed: int = 0
    qat_augment: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"quantization.method must be one of {', '.join(METHODS)}, got '{self.method}'")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"quantization.calibration_method must be one of {', '.join(CALIBRATION_METHODS)}, "
                f"got '{self.calibration_method}'"
            )
        if self.method == "static" and self.calibration_samples < 1:
            raise ConfigError("quantization.calibration_samples must be at least 1 for static quantization")
        if self.float_stride < 0:
            raise ConfigError(
                f"quantization.float_stride must be 0 (quantize every layer) or more, got {self.float_stride}"
            )
        if self.method == "qat":
            self.check_qat()

    def check_qat(self) -> None:
        for key in ("qat_epochs", "qat_max_steps", "qat_batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"quantization.{key}={value!r}: give a positive whole number")
        if isinstance(self.qat_lr, bool) or not isinstance(self.qat_lr, int | float) or not 0 < self.qat_lr < math.inf:
            raise ConfigError(
                f"quantization.qat_lr={self.qat_lr!r}: the learning rate must be a positive number, e.g. 1e-5"
            )
        if not isinstance(self.qat_augment, bool):
            raise ConfigError(f"quantization.qat_augment={self.qat_augment!r}: give true or false")
        if not self.per_channel:
            raise ConfigError("quantization.per_channel=false: quantization=qat quantizes weights per channel only")

    @property
    def needs_calibration(self) -> bool:
        return self.method == "static"

    def to_dict(self) -> dict[str, Any]:
        """The settings the method uses (what the report and the INT8 file's metadata record)."""
        unused = CALIBRATION_KEYS if self.method == "qat" else QAT_KEYS
        return {key: value for key, value in asdict(self).items() if key not in unused}


class ArrayReader(CalibrationDataReader):
    """Feeds calibration images to ONNX Runtime's calibrator one at a time: its histogram calibrators
    (percentile, entropy) stack the outputs of all batches and fail when the last batch is smaller."""

    def __init__(self, images: np.ndarray) -> None:
        self.batches: Iterator[np.ndarray] = iter(
            np.ascontiguousarray(images[i : i + 1], dtype=np.float32) for i in range(len(images))
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize(
    fp32_path: str | Path, int8_path: str | Path, recipe: QuantizationRecipe, calibration: np.ndarray | None = None
) -> Path | None:
    """Write the INT8 model of `fp32_path` to `int8_path` (None for recipe `none`); metadata is kept."""
    if recipe.method == "none":
        return None
    if recipe.method == "qat":
        raise ConfigError("quantization=qat trains the PyTorch model: export it with fas.export.pipeline.export_model")
    if recipe.needs_calibration and (calibration is None or len(calibration) == 0):
        raise ConfigError("static quantization needs calibration images; use quantization=dynamic or none without data")
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory() as tmp, quiet_loggers({"onnxruntime.quantization": logging.WARNING}):
        prepared = Path(tmp) / "prepared.onnx"
        raw = Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        if recipe.method == "static":
            float_nodes = name_nodes_up_to_stride(prepared, recipe.float_stride)
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
                quantize_static(
                    str(prepared),
                    str(raw),
                    ArrayReader(calibration),
                    quant_format=QuantFormat.QDQ,
                    per_channel=recipe.per_channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CALIBRATION_METHODS[recipe.calibration_method],
                    nodes_to_exclude=float_nodes,
                    # the classifier's logits stay float: rounding them to 8 bits flips borderline decisions
                    extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]},
                )
            model = onnx.load(str(raw))
            store_float_weights_as_half(model)
            correct_output_bias(onnx.load(str(prepared)), model, calibration)
        else:
            quantize_dynamic(str(prepared), str(raw), weight_type=QuantType.QUInt8, per_channel=recipe.per_channel)
            model = onnx.load(str(raw))
        model = compact(model)
    copy_metadata(onnx.load(str(fp32_path), load_external_data=False), model)
    model.metadata_props.add(key="fas.quantization", value=json.dumps(recipe.to_dict()))
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, int8_path)
    return int8_path


def name_nodes_up_to_stride(path: Path, float_stride: int) -> list[str]:
    """Name every node of the model at `path` (saved back) and return the names of those whose output
    map is at most `float_stride` times smaller than the input: the high-resolution layers to keep float.
    """
    model = onnx.load(str(path))
    shapes = {v.name: v.type.tensor_type.shape.dim for v in (*model.graph.value_info, *model.graph.output)}
    input_side = model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    chosen = []
    for index, node in enumerate(model.graph.node):
        node.name = node.name or f"node_{index}"
        dims = shapes.get(node.output[0])
        side = dims[-1].dim_value if dims is not None and len(dims) == 4 else 0
        if is_high_resolution(input_side, side, float_stride):
            chosen.append(node.name)
    onnx.save_model(model, str(path))
    return chosen


def store_float_weights_as_half(model: onnx.ModelProto) -> None:
    """Store the float32 weights of the layers left in float (`float_stride`) as float16, read through a
    Cast: ONNX Runtime folds the Cast when the session starts, so they run as float32 Convs at full
    speed, and the file grows by 2 bytes per such weight instead of 4."""
    constants = {t.name: t for t in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type != "Conv" or node.input[1] not in constants:
            continue
        weight = constants[node.input[1]]
        values = numpy_helper.to_array(weight)
        if values.dtype != np.float32 or np.abs(values).max() > np.finfo(np.float16).max:
            continue
        half, restored = f"{weight.name}_fp16", f"{weight.name}_fp32"
        model.graph.initializer.append(numpy_helper.from_array(values.astype(np.float16), half))
        cast = onnx.helper.make_node("Cast", [half], [restored], to=onnx.TensorProto.FLOAT)
        model.graph.node.insert(list(model.graph.node).index(node), cast)
        node.input[1] = restored
    drop_unused_initializers(model.graph)


def mean_outputs(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [session.run(None, {INPUT_NAME: images[i : i + 32]})[0] for i in range(0, len(images), 32)]
    return np.concatenate(outputs).astype(np.float64).mean(axis=0)


def correct_output_bias(fp32: onnx.ModelProto, int8: onnx.ModelProto, calibration: np.ndarray) -> None:
    """Empirical bias correction of the classifier: quantization noise shifts the mean logits (by 0.1-0.4
    on MiniFASNet), which tilts borderline decisions one way; subtract the shift measured on the
    calibration crops from the final layer's int32 bias. Nothing is done if the graph ends otherwise.
    """
    producers = {name: node for node in int8.graph.node for name in node.output}
    constants = {t.name: t for t in int8.graph.initializer}
    last = producers.get(int8.graph.output[0].name)
    if last is None or last.op_type not in ("Gemm", "Conv") or len(last.input) < 3:
        return
    bias = producers.get(last.input[2])
    if bias is None or bias.op_type != "DequantizeLinear" or bias.input[0] not in constants:
        return
    values, scale = constants[bias.input[0]], constants[bias.input[1]]
    shift = mean_outputs(int8, calibration) - mean_outputs(fp32, calibration)
    steps = np.round(shift.reshape(-1) / numpy_helper.to_array(scale)).astype(np.int64)
    corrected = numpy_helper.to_array(values).astype(np.int64) - steps
    values.CopyFrom(numpy_helper.from_array(corrected.astype(np.int32), values.name))


def copy_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    fas_keys = {p.key: p.value for p in source.metadata_props if p.key.startswith("fas.")}
    kept = [p for p in target.metadata_props if p.key not in fas_keys]
    del target.metadata_props[:]
    target.metadata_props.extend(kept)
    for key, value in fas_keys.items():
        target.metadata_props.add(key=key, value=value)


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shrink a quantized model without changing a number.

    The quantizer stores an all-zero zero-point array for every weight and bias, and long derived
    names ("<layer>.weight_DequantizeLinear_Output"): together about a quarter of the file. Zero
    points equal to the default are dropped, tensors get short names (graph input and output names
    are kept), and node names and shape annotations go.
    """
    drop_default_zero_points(model.graph)
    rename_tensors(model.graph)
    del model.graph.value_info[:]
    return model


def drop_default_zero_points(graph: onnx.GraphProto) -> None:
    """Remove all-zero zero points of DequantizeLinear on int8/int32 constants read by a Conv.

    0 is the default of the optional input. ORT fuses such a Conv into QLinearConv all the same;
    its Gemm fusion (QGemm) wants the input present, so Gemm weights keep theirs.
    """
    constants = {t.name: t for t in graph.initializer}
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[0] not in constants:
            continue
        zero_point = constants.get(node.input[2])
        if zero_point is None or readers.get(node.output[0]) != {"Conv"}:
            continue
        values = numpy_helper.to_array(zero_point)
        if values.dtype in (np.int8, np.int32) and not values.any():
            del node.input[2]
    drop_unused_initializers(graph)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def rename_tensors(graph: onnx.GraphProto) -> None:
    """Give every internal tensor a short base-36 name; clear node names and doc strings."""
    fixed = {"", *(i.name for i in graph.input), *(o.name for o in graph.output)}
    candidates = (f"t{np.base_repr(i, 36).lower()}" for i in itertools.count())
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if name in fixed:
            return name
        if name not in names:
            names[name] = next(c for c in candidates if c not in fixed)
        return names[name]

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
        tensor.doc_string = ""
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        del node.metadata_props[:]
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
