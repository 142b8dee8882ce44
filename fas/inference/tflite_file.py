"""LiteRT (.tflite) model files: the fas metadata they carry, and the optional `mobile` extra that reads them.

A fas `.tflite` holds the same properties as our ONNX exports (`ModelInfo.to_properties`, in the
flatbuffer's `metadata` table) plus `fas.layout` (`nhwc`) and `fas.output` (`logits`, or `probabilities`
when the softmax is in the graph).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from fas.convention import ModelInfo
from fas.errors import ModelFileError

MOBILE_EXTRA = "pip install -e '.[mobile]' && pip install 'typing-extensions>=4.14'"
LAYOUT_KEY, OUTPUT_KEY = "fas.layout", "fas.output"


class TfliteError(ModelFileError):
    """A LiteRT file cannot be written or read (or the mobile extra is missing)."""


def require(module: str) -> Any:
    """Import a module of the mobile extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TfliteError(
            f"LiteRT (.tflite) files need the mobile extra, which is not installed: {MOBILE_EXTRA}"
        ) from None


def write_metadata(path: Path, info: ModelInfo, softmax: bool) -> None:
    """Put the model's `ModelInfo` properties, its layout and output kind into the file's metadata table."""
    flatbuffer = require("ai_edge_litert.tools.flatbuffer_utils")
    schema = require("ai_edge_litert.schema_py_generated")
    model = flatbuffer.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    properties = {**info.to_properties(), LAYOUT_KEY: "nhwc", OUTPUT_KEY: "probabilities" if softmax else "logits"}
    kept = [m for m in (model.metadata or []) if m.name.decode() not in properties]
    model.metadata = kept
    for key, value in properties.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.encode(), np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = key.encode(), len(model.buffers) - 1
        model.metadata.append(entry)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_bytes(bytes(flatbuffer.convert_object_to_bytearray(model)))
    os.replace(tmp, path)


def read_properties(path: str | Path) -> dict[str, str]:
    """The string metadata of a `.tflite` (one line naming the file when it is not one)."""
    flatbuffer = require("ai_edge_litert.tools.flatbuffer_utils")
    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TfliteError(f"{path}: not a LiteRT (.tflite) model, or a truncated one; export or copy it again")
    try:
        model = flatbuffer.read_model_from_bytearray(bytearray(data))
        return {
            m.name.decode(): bytes(np.asarray(model.buffers[m.buffer].data, np.uint8)).decode()
            for m in (model.metadata or [])
            if m.name.decode().startswith("fas.")
        }
    except Exception as error:  # a damaged flatbuffer: IndexError, struct.error, UnicodeDecodeError, ...
        raise TfliteError(f"{path}: a damaged LiteRT model ({type(error).__name__}); export or copy it again") from None


def read_metadata(path: str | Path) -> tuple[ModelInfo, dict[str, str]]:
    """The `ModelInfo` of a fas `.tflite` and its layout and output kind (`fas.layout`, `fas.output`)."""
    properties = read_properties(path)
    try:
        info = ModelInfo.from_properties(properties)
    except KeyError:
        raise TfliteError(
            f"{path} has no fas input-convention metadata; export it with `python export.py format=tflite`, "
            "or name the convention it was trained with (convention=<name>)"
        ) from None
    except (ValueError, TypeError, AttributeError) as error:
        raise TfliteError(f"{path}: its fas metadata is malformed ({error}); export it again") from None
    return info, {LAYOUT_KEY: properties.get(LAYOUT_KEY, "nhwc"), OUTPUT_KEY: properties.get(OUTPUT_KEY, "logits")}
