"""Backends turn a preprocessed NCHW float32 batch into logits, whatever the model's format.

Evaluation, export parity checks and prediction all go through `load_backend(path)`, so a Lightning
checkpoint, a published Silent-Face / suri-liveness `.pth` and their ONNX exports are scored by one
code path. Each backend carries the `ModelInfo` (input convention, class scheme) that says how to
preprocess for it and how to read its output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch

from fas.convention import ModelInfo
from fas.export.onnx import INPUT_NAME, read_metadata
from fas.models.checkpoint import CheckpointMismatchError, read_checkpoint
from fas.models.pretrained import import_published


class Backend(Protocol):
    info: ModelInfo

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32, already normalised per `info.convention` -> (N, classes) float32."""
        ...


class TorchBackend:
    def __init__(self, model: torch.nn.Module, info: ModelInfo, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.info = info
        self.device = device

    @classmethod
    def from_lightning_checkpoint(cls, path: str | Path, device: str = "cpu") -> TorchBackend:
        from fas.module import LivenessModule

        try:
            module = LivenessModule.load_from_checkpoint(path, map_location=device, weights_only=False)
        except (KeyError, TypeError) as error:
            raise CheckpointMismatchError(f"{path} is not a fas Lightning checkpoint ({error})") from None
        settings = {k: v for k, v in module.hparams.items() if isinstance(v, bool | int | float | str)}
        info = ModelInfo(module.convention, module.class_scheme, module.hparams.backbone, settings)
        return cls(module.backbone.to(memory_format=torch.contiguous_format), info, device)

    @classmethod
    def from_weights_file(cls, path: str | Path, device: str = "cpu") -> TorchBackend:
        """A published Silent-Face or suri-liveness file (or a Lightning checkpoint under another suffix)."""
        checkpoint = read_checkpoint(path)
        if is_lightning_checkpoint(checkpoint):
            return cls.from_lightning_checkpoint(path, device)
        model, info = import_published(path, checkpoint)
        return cls(model, info, device)

    @torch.no_grad()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


class OnnxBackend:
    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.info = read_metadata(path)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def is_lightning_checkpoint(checkpoint: dict) -> bool:
    return "state_dict" in checkpoint and "hyper_parameters" in checkpoint


def load_backend(path: str | Path, device: str = "cpu", threads: int | None = None) -> Backend:
    """A backend for an `.onnx` export, a `.ckpt` (Lightning) or published weights (`.pth`, `.pt`).

    The kind of a weights file is told from its content: a Lightning checkpoint, suri-liveness's dict
    with `model_state_dict`, or Silent-Face's bare state_dict (whose name carries its crop).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: model file not found; check the path")
    if path.suffix == ".onnx":
        return OnnxBackend(path, threads)
    if path.suffix == ".ckpt":
        return TorchBackend.from_lightning_checkpoint(path, device)
    return TorchBackend.from_weights_file(path, device)
