"""End-of-training export: the best checkpoint -> `model.onnx`, `model_int8.onnx` and their report."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, WandbLogger

from fas.data.datamodule import FaceDataModule
from fas.export.pipeline import ExportResult, export_model
from fas.export.quantize import QuantizationRecipe

log = logging.getLogger(__name__)


class OnnxExport(Callback):
    """After `fit`, export the best checkpoint (the last one if none is ranked) on rank 0.

    Configured by `configs/callbacks/export.yaml`; the recipe comes from `configs/quantization/`.
    `result` holds the paths and the report once the export ran.
    """

    def __init__(self, output_dir: str | Path, quantization: QuantizationRecipe, optimize: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.quantization = quantization
        self.optimize = optimize
        self.result: ExportResult | None = None

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
        result = export_model(path, self.output_dir, self.quantization, datamodule, self.optimize)
        log.info("Exported %s", result.summary())
        log_artifact(trainer.loggers, result)
        return result


def log_artifact(loggers: list[Logger], result: ExportResult) -> None:
    """The exported files and their report as one wandb artifact of type `model` (parity figures as its
    metadata), for every wandb logger."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb  # only with a wandb logger, which needs it anyway

        run = logger.experiment
        artifact = wandb.Artifact(f"onnx-{run.id}", type="model", metadata=result.report)
        for path in (result.fp32, result.int8, result.report_json, result.report_md):
            if path is not None:
                artifact.add_file(str(path))
        run.log_artifact(artifact, aliases=["latest", "best"])
