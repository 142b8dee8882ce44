"""Backends turn a preprocessed NCHW float32 batch into logits, whatever the model's format.

Evaluation, export parity checks and prediction all go through `load_backend(path)`, so a Lightning
checkpoint, a published Silent-Face / suri-liveness `.pth` and their ONNX exports are scored by one
code path. Each backend carries the `ModelInfo` (input convention, class scheme) that says how to
preprocess for it and how to read its output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
import torch

from fas.convention import ClassScheme, InputConvention, ModelInfo
from fas.formats import format_of_file
from fas.inference import tflite_file
from fas.inference.onnx_file import OnnxFileError, has_metadata, read_metadata, read_onnx
from fas.models import build_backbone
from fas.models.checkpoint import (
    CheckpointMismatchError,
    backbone_state_dict,
    check_fits,
    first_line,
    read_checkpoint,
)
from fas.models.pretrained import import_published
from fas.registry import published


class Backend(Protocol):
    info: ModelInfo

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32, already normalised per `info.convention` -> (N, classes) float32."""
        ...


class TorchBackend:
    """A PyTorch backbone. It scores channels-last (NHWC in memory): on CPU that runs MiniFASNet 2-2.5x faster
    than NCHW (oneDNN's depthwise kernels), with the same numbers up to float rounding."""

    def __init__(self, model: torch.nn.Module, info: ModelInfo, device: str = "cpu") -> None:
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        self.info = info
        self.device = device

    @classmethod
    def from_lightning_checkpoint(
        cls, path: str | Path, device: str = "cpu", checkpoint: dict[str, Any] | None = None
    ) -> TorchBackend:
        """The backbone of a fas Lightning checkpoint, read safely (`read_checkpoint`) and rebuilt from its
        recorded hyperparameters, so nothing in the file but tensors and plain values is ever loaded."""
        checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
        if not is_lightning_checkpoint(checkpoint):
            raise CheckpointMismatchError(
                f"{path}: not a fas Lightning checkpoint (no state_dict and hyper_parameters)"
            )
        settings = checkpoint["hyper_parameters"]
        try:
            convention = InputConvention.from_dict(settings["convention"])
            class_scheme = ClassScheme.from_dict(settings["class_scheme"])
            backbone = build_backbone(
                settings["backbone"],
                input_size=convention.input_size,
                num_classes=class_scheme.num_classes,
                embedding_size=settings.get("embedding_size", 128),
                dropout=settings.get("dropout", 0.2),
            )
            state = backbone_state_dict(checkpoint)
            check_fits(backbone, state, settings["backbone"], path)
            backbone.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointMismatchError(f"{path}: not a fas Lightning checkpoint ({first_line(error)})") from None
        plain = {k: v for k, v in settings.items() if isinstance(v, bool | int | float | str)}
        info = ModelInfo(convention, class_scheme, settings["backbone"], plain, recorded_threshold(checkpoint))
        return cls(backbone, info, device)

    @classmethod
    def from_weights_file(cls, path: str | Path, device: str = "cpu", convention: str | None = None) -> TorchBackend:
        """A fas Lightning checkpoint, or a published MiniFASNet file (see `import_published`)."""
        checkpoint = read_checkpoint(path)
        if is_lightning_checkpoint(checkpoint):
            return cls.from_lightning_checkpoint(path, device, checkpoint)
        model, info = import_published(path, checkpoint, convention)
        return cls(model, info, device)

    @torch.inference_mode()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        return self.model(images).float().cpu().numpy()


class OnnxBackend:
    """An ONNX file on ONNX Runtime (CPU). A fas export says its convention in its metadata; a file made
    elsewhere (suri-liveness's, uniface's) takes the named `convention`, its size and class count read
    from the graph. A graph that ends in Softmax gives probabilities; their log serves as logits (the
    softmax of log p is p again), so every metric and fusion reads it as it reads logits."""

    def __init__(self, path: str | Path, threads: int | None = None, convention: str | None = None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        proto = read_onnx(path)
        if has_metadata(proto) or convention is None:
            self.info = read_metadata(proto, path)
        else:
            self.info = foreign_onnx_info(proto, path, convention)
        self.outputs_probabilities = proto.graph.node[-1].op_type == "Softmax"
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT's Fail / InvalidGraph / NotImplemented for a broken or exotic graph
            raise OnnxFileError(f"{path}: ONNX Runtime cannot run it ({first_line(error)})") from None
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        output = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        return np.log(np.maximum(output, 1e-30)) if self.outputs_probabilities else output


def foreign_onnx_info(proto: onnx.ModelProto, path: str | Path, convention: str) -> ModelInfo:
    """The `ModelInfo` of an ONNX file without fas metadata, from a named published convention."""
    (graph_input,) = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    dims = [d.dim_value or None for d in graph_input.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, None):
        raise OnnxFileError(f"{path}: input {graph_input.name} has shape {dims}; fas feeds (N, 3, S, S) images")
    classes = [d.dim_value or None for d in proto.graph.output[0].type.tensor_type.shape.dim]
    if len(classes) != 2 or classes[1] is None:
        raise OnnxFileError(f"{path}: output {proto.graph.output[0].name} has shape {classes}; fas reads (N, classes)")
    named = published(convention)
    input_convention = named.input_convention(input_size=dims[2] or named.default_size)
    scheme = named.class_scheme(classes[1], path)
    return ModelInfo(input_convention, scheme, "unknown", {"imported_from": Path(path).name, "source": convention})


class TfliteBackend:
    """A LiteRT (.tflite) file on the ai-edge-litert interpreter (CPU, XNNPACK), one image per invoke, as on a
    phone. It takes NHWC input: batches are transposed, and quantized for an int8-input file. A fas export
    says its convention in its metadata; a file made elsewhere (e.g. the Android app's own) takes the named
    `convention`, its size and class count read from its input and output shapes."""

    def __init__(self, path: str | Path, threads: int | None = None, convention: str | None = None) -> None:
        interpreter = tflite_file.require("ai_edge_litert.interpreter")
        self.path = Path(path)
        properties = tflite_file.read_properties(self.path)
        try:
            self.interpreter = interpreter.Interpreter(model_path=str(self.path), num_threads=threads or 1)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise tflite_file.TfliteError(f"{self.path}: LiteRT cannot run it ({first_line(error)})") from None
        self.input, self.output = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        if properties or convention is None:
            self.info, extras = tflite_file.read_metadata(self.path)
            self.outputs_probabilities = extras[tflite_file.OUTPUT_KEY] == "probabilities"
        else:
            size, classes = int(self.input["shape"][1]), int(self.output["shape"][-1])
            named = published(convention)
            input_convention, scheme = named.input_convention(input_size=size), named.class_scheme(classes, path)
            self.info = ModelInfo(
                input_convention, scheme, "unknown", {"imported_from": self.path.name, "source": convention}
            )
            self.outputs_probabilities = False

    def logits(self, batch: np.ndarray) -> np.ndarray:
        outputs = []
        for image in np.asarray(batch, np.float32):
            value = image.transpose(1, 2, 0)[None]
            if self.input["dtype"] != np.float32:
                scale, zero = self.input["quantization"]
                info = np.iinfo(self.input["dtype"])
                value = np.clip(np.round(value / scale + zero), info.min, info.max).astype(self.input["dtype"])
            self.interpreter.set_tensor(self.input["index"], value)
            self.interpreter.invoke()
            output = self.interpreter.get_tensor(self.output["index"]).astype(np.float32)
            if self.output["dtype"] != np.float32:
                scale, zero = self.output["quantization"]
                output = (output - zero) * scale
            outputs.append(output[0])
        logits = np.stack(outputs) if outputs else np.empty((0, int(self.output["shape"][-1])), np.float32)
        return np.log(np.maximum(logits, 1e-30)) if self.outputs_probabilities else logits


THRESHOLD_KEY = "fas_threshold"  # where LivenessModule.on_save_checkpoint records the validation threshold


def recorded_threshold(checkpoint: dict) -> dict[str, Any] | None:
    """The decision threshold a fas checkpoint's validation chose (`{"value", "rule", "split"}`), or None."""
    choice = checkpoint.get(THRESHOLD_KEY)
    if not isinstance(choice, dict) or not isinstance(choice.get("value"), int | float):
        return None
    return {"value": float(choice["value"]), "rule": choice.get("rule"), "split": choice.get("split")}


def is_lightning_checkpoint(checkpoint: dict) -> bool:
    return "state_dict" in checkpoint and "hyper_parameters" in checkpoint


def load_backend(
    path: str | Path, device: str = "cpu", threads: int | None = None, convention: str | None = None
) -> Backend:
    """A backend for an `.onnx` or `.tflite` export, a Lightning checkpoint or published weights (`.pth`, ...).

    The kind of a weights file is told from its content, never its suffix: a Lightning checkpoint,
    suri-liveness's dict with `model_state_dict`, a Silent-Face or hairymax file (whose name carries its
    crop); an export by its format's suffix (`fas.formats`). `convention` (a convention name of
    `models/registry.yaml`) is used only by files that record no convention of their own: plain
    state_dicts and ONNX / LiteRT files made outside fas.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: model file not found; check the path")
    model_format = format_of_file(path)
    if model_format is not None:
        return model_format.backend_class()(path, threads, convention)
    return TorchBackend.from_weights_file(path, device, convention)
