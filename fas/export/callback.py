"""End-of-training export: the best checkpoint -> every format of `formats` (`fas.formats`): by default
`model.onnx`, `model_int8.onnx` and their report; with `formats=[onnx,tflite]` also the LiteRT files for
phones and theirs. With `quantization=qat` the INT8 file comes from a quantization-aware training stage on the
fit's data, whose per-step losses (`qat/loss`) go to the run's loggers after the fit's."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, WandbLogger

from fas.data.datamodule import FaceDataModule
from fas.export.pipeline import ExportResult, ExportSettings
from fas.export.quantize import QuantizationRecipe
from fas.export.tflite import TfliteRecipe
from fas.formats import parse_formats
from fas.inference.tflite_file import require

if TYPE_CHECKING:
    from fas.export.qat import MetricsSink

log = logging.getLogger(__name__)


class ModelExport(Callback):
    """After `fit`, export the best checkpoint (the last one if none is ranked) on rank 0, to every format.

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
        self.formats = parse_formats(formats)
        self.settings = ExportSettings(quantization, tflite or TfliteRecipe(), optimize)
        if any(f.name == "tflite" for f in self.formats):
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
            log.warning("Export skipped: it needs a saved checkpoint (ModelCheckpoint callback) and a FaceDataModule")
            return None
        settings = dataclasses.replace(self.settings, log_metrics=after_fit(trainer), qat_models={})
        for model_format in self.formats:
            result = model_format.export_function()(path, self.output_dir, datamodule, settings)
            for logger in trainer.loggers:
                logger.save()  # what the export logged (the QAT stage's losses)
            log.info("Exported %s", result.summary())
            log_artifact(trainer.loggers, result, model_format.name)
            self.results[model_format.name] = result
        return self.results.get("onnx") or next(iter(self.results.values()))


def after_fit(trainer: L.Trainer) -> MetricsSink:
    """Log an export stage's per-step metrics (QAT's `qat/loss`, `qat/lr`) to the run's loggers, its steps
    numbered on from the fit's last, so wandb and the CSV log show its curve after the fit's."""
    first = trainer.global_step

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, first + step)

    return log_metrics


def log_artifact(loggers: list[Logger], result: ExportResult, kind: str) -> None:
    """The exported files and their report as one wandb artifact of type `model` (parity figures as its
    metadata), for every wandb logger."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb  # only with a wandb logger, which needs it anyway

        run = logger.experiment
        artifact = wandb.Artifact(f"{kind}-{run.id}", type="model", metadata=result.report)
        for path in (result.fp32, result.int8, result.report_json, result.report_md):
            if path is not None:
                artifact.add_file(str(path))
        run.log_artifact(artifact, aliases=["latest", "best"])
