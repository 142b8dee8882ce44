"""FP32 ONNX export of a backbone, with the model's input convention and class scheme as metadata.

Metadata keys (ONNX `metadata_props`, all strings):
  fas.convention    JSON of `InputConvention.to_dict()` (size, colour order, scale, mean/std, crop rule)
  fas.class_scheme  JSON of `ClassScheme.to_dict()` (class names, real-class index, spoof-type map)
  fas.backbone      registry name of the backbone
  fas.config        optional JSON of the training config
Graph: input `input` (N, 3, S, S) float32 with a dynamic batch axis, output `logits` (N, classes).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
from torch import nn

from fas.convention import ModelInfo
from fas.errors import FasError
from fas.models.pretrained import CONVENTIONS

INPUT_NAME, OUTPUT_NAME = "input", "logits"
OPSET = 18
# Library loggers that narrate every export step at INFO (Hydra runs log INFO); the registration one
# warns on every export that torchvision, which fas does not use, is not installed.
EXPORTER_LOGGERS = {
    "onnxscript": logging.WARNING,
    "onnx_ir": logging.WARNING,
    "torch.onnx": logging.WARNING,
    "torch.onnx._internal.exporter._registration": logging.ERROR,
}


class OnnxMetadataError(FasError, ValueError):
    """The ONNX file lacks the metadata fas needs to preprocess its input."""


class OnnxFileError(FasError, ValueError):
    """The file is not a self-contained ONNX model."""


def export_onnx(backbone: nn.Module, info: ModelInfo, path: str | Path, opset: int = OPSET) -> Path:
    """Export `backbone` (classifier only, no FT head) to `path` and check it with `onnx.checker`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = info.convention.input_size
    model = copy.deepcopy(backbone).eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), quiet_loggers(EXPORTER_LOGGERS):
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    for node in proto.graph.node:  # the exporter's per-node debug notes are a third of the file
        del node.metadata_props[:]
    write_metadata(proto, info)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, path)
    return path


@contextmanager
def quiet_loggers(levels: dict[str, int]) -> Iterator[None]:
    """Set the level of the named loggers for the duration of a call."""
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    previous = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in previous.items():
            logger.setLevel(level)


def write_metadata(proto: onnx.ModelProto, info: ModelInfo) -> None:
    values = info.to_properties()
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file that is self-contained; one clear line when it is not ONNX or is broken.

    Tensors stored in external files are refused rather than followed: a model file handed to fas must
    not make it read other files (a path in it could point anywhere on the machine).
    """
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError for a non-ONNX or cut file, OSError, ...
        first_line = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise OnnxFileError(
            f"{path}: not an ONNX model, or a truncated or corrupt one ({first_line}); export or copy it again"
        ) from None
    if not proto.graph.node or not proto.graph.input:
        raise OnnxFileError(f"{path}: not an ONNX model (no graph); export or copy it again")
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise OnnxFileError(
            f"{path}: keeps {len(external)} tensor(s) in external data files (e.g. {external[0]}); fas loads only "
            "self-contained ONNX files: save it with onnx.save_model(model, path, save_as_external_data=False)"
        )
    return proto


def has_metadata(proto: onnx.ModelProto) -> bool:
    return {"fas.convention", "fas.class_scheme"} <= {p.key for p in proto.metadata_props}


def read_metadata(source: str | Path | onnx.ModelProto, name: str | Path | None = None) -> ModelInfo:
    """Read the fas metadata of an ONNX file (or proto); a clear error when it is not a fas export."""
    proto = source if isinstance(source, onnx.ModelProto) else read_onnx(source)
    name = name or ("the model" if isinstance(source, onnx.ModelProto) else str(source))
    props = {p.key: p.value for p in proto.metadata_props}
    if not has_metadata(proto):
        raise OnnxMetadataError(
            f"{name} has no fas input-convention metadata; name the convention it was trained with "
            f"(convention=<{'|'.join(CONVENTIONS)}>), or export it with `python export.py` so its preprocessing "
            "is recorded"
        )
    try:
        return ModelInfo.from_properties(props)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise OnnxMetadataError(f"{name}: its fas metadata is malformed ({error}); export it again") from None
