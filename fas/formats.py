"""The model-file formats fas writes and reads: one table that the export callback, `export.py`,
`evaluate.py` and `fas.predict` all consult.

Each entry names, by import path, the backend class that scores a file of the format
(`fas.inference.backends`) and the function that writes one from a PyTorch model (`fas.export.pipeline`);
they are imported when first used, so this table sits below both layers. A third format is one entry
here, a backend class and an export function (README "Extending", docs/architecture.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fas.errors import ConfigError


@dataclass(frozen=True)
class ModelFormat:
    """`name` is what `format=` and `callbacks.export.formats` take; `suffix` is how its files are recognised.

    backend: `module:Class`, built as `Class(path, threads, convention)`, with `info` and `logits(batch)`.
    exporter: `module:function`, called as `function(model_path, output_dir, datamodule, settings, convention)`
        (`fas.export.pipeline.ExportSettings`), returning an `ExportResult`.
    """

    name: str
    suffix: str
    backend: str
    exporter: str
    description: str

    def backend_class(self) -> Any:
        return load(self.backend)

    def export_function(self) -> Any:
        return load(self.exporter)


FORMATS = {
    "onnx": ModelFormat(
        "onnx",
        ".onnx",
        "fas.inference.backends:OnnxBackend",
        "fas.export.pipeline:write_onnx",
        "ONNX Runtime: model.onnx (FP32, rewritten for CPU) and model_int8.onnx",
    ),
    "tflite": ModelFormat(
        "tflite",
        ".tflite",
        "fas.inference.backends:TfliteBackend",
        "fas.export.pipeline:write_tflite",
        "LiteRT for phones: model.tflite (FP32) and model_int8.tflite (full integer); the mobile extra",
    ),
}


def load(reference: str) -> Any:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def format_of_file(path: str | Path) -> ModelFormat | None:
    """The export format a file's suffix names, or None (PyTorch weights, whose kind comes from their content)."""
    suffix = Path(path).suffix.lower()
    return next((f for f in FORMATS.values() if f.suffix == suffix), None)


def parse_formats(value: str | Sequence[str]) -> list[ModelFormat]:
    """`onnx`, `tflite` or a list of them -> their formats, checked."""
    names = [value] if isinstance(value, str) else list(value)
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        choices = ", ".join(FORMATS)
        raise ConfigError(f"format={value}: choose one or more of {choices}, e.g. format=onnx or format=[onnx,tflite]")
    return [FORMATS[name] for name in names]
