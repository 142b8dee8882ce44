"""FP32 ONNX export of a backbone, with the model's input convention and class scheme as metadata
(`fas.inference.onnx_file` reads and writes it).

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
from fas.inference.onnx_file import write_metadata

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


def export_onnx(backbone: nn.Module, info: ModelInfo, path: str | Path, opset: int = OPSET) -> Path:
    """Export `backbone` (classifier only, no FT head) to `path` and check it with `onnx.checker`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(backbone).eval().to(memory_format=torch.contiguous_format)
    proto = onnx_graph(model, info.convention.input_size, opset)
    write_metadata(proto, info)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, path)
    return path


def onnx_graph(model: nn.Module, input_size: int, opset: int = OPSET) -> onnx.ModelProto:
    """`model` as it is (no copy, no mode change) through the dynamo exporter: input `input` (N, 3, S, S) with a
    dynamic batch axis, output `logits`, without the exporter's per-node debug notes."""
    example = torch.zeros(2, 3, input_size, input_size)
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
    return proto


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
