"""ONNX model files: reading them safely, and the fas metadata they carry.

Metadata keys (ONNX `metadata_props`, all strings):
  fas.convention    JSON of `InputConvention.to_dict()` (size, colour order, scale, mean/std, crop rule)
  fas.class_scheme  JSON of `ClassScheme.to_dict()` (class names, real-class index, spoof-type map)
  fas.backbone      registry name of the backbone
  fas.config        optional JSON of the training config
  fas.threshold     optional JSON of the decision threshold chosen on validation data
"""

from __future__ import annotations

from pathlib import Path

import onnx

from fas.convention import ModelInfo
from fas.errors import ModelFileError
from fas.registry import published_conventions


class OnnxMetadataError(ModelFileError):
    """The ONNX file lacks the metadata fas needs to preprocess its input."""


class OnnxFileError(ModelFileError):
    """The file is not a self-contained ONNX model."""


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
            f"(convention=<{'|'.join(published_conventions())}>), or export it with `python export.py` so its "
            "preprocessing is recorded"
        )
    try:
        return ModelInfo.from_properties(props)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise OnnxMetadataError(f"{name}: its fas metadata is malformed ({error}); export it again") from None
