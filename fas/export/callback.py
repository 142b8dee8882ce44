"""End-of-training export: the best checkpoint -> `model.onnx`, `model_int8.onnx` and their report (and, with
`formats=[onnx,tflite]`, the LiteRT files for phones and theirs)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, WandbLogger

from fas.data.datamodule import FaceDataModule
from fas.export.pipeline import ExportResult, export_formats, export_model, export_tflite_model
from fas.export.quantize import QuantizationRecipe
from fas.export.tflite import TfliteRecipe, require

log = logging.getLogger(__name__)


class OnnxExport(Callback):
    """After `fit`, export the best checkpoint (the last one if none is ranked) on rank 0.

    Configured by `configs/callbacks/export.yaml`; the recipe comes from `configs/quantization/`.
    `result` holds the paths and the report once the export ran.
    """

    def __init__(
        self,
        output_dir: str | Path,
        quantization: QuantizationRecipe,
        optimize: bool = True,
        formats: Sequence[str] = ("onnx",),
        tflite: TfliteRecipe | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.quantization = quantization
        self.optimize = optimize
        self.formats = export_formats(formats)
        self.tflite = tflite or TfliteRecipe()
        if "tflite" in self.formats:
            require("litert_torch")  # a missing extra stops the run before training, not after it
        self.result: ExportResult | None = None  # the ONNX export (the first format written otherwise)
        self.results: dict[str, ExportResult] = {}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.result = self._export(trainer)
        trainer.strategy.barrier("fas_onnx_export")

    def _export(self, trainer: L.Trainer) -> ExportResult | None:
        checkpoint = trainer.checkpoint_callback
        path = checkpoint and (checkpoint.best_model_path or checkpoint.last_model_path)
        datamodule = trainer.datamodule
        if not path or not isinstance(datamodule, FaceDataModule):
            log.warning(
                "ONNX export skipped: it needs a saved checkpoint (ModelCheckpoint callback) and a FaceDataModule"
            )
            return None
        for kind in self.formats:
            if kind == "onnx":
                result = export_model(path, self.output_dir, self.quantization, datamodule, self.optimize)
            else:
                result = export_tflite_model(path, self.output_dir, self.tflite, datamodule)
            log.info("Exported %s", result.summary())
            log_artifact(trainer.loggers, result)
            self.results[kind] = result
        return self.results.get("onnx") or next(iter(self.results.values()))


def log_artifact(loggers: list[Logger], result: ExportResult) -> None:
    """The exported files and their report as one wandb artifact of type `model` (parity figures as its
    metadata), for every wandb logger."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb  # only with a wandb logger, which needs it anyway

        run = logger.experiment
        kind = "onnx" if result.fp32.suffix == ".onnx" else "tflite"
        artifact = wandb.Artifact(f"{kind}-{run.id}", type="model", metadata=result.report)
        for path in (result.fp32, result.int8, result.report_json, result.report_md):
            if path is not None:
                artifact.add_file(str(path))
        run.log_artifact(artifact, aliases=["latest", "best"])
