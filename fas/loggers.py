"""What a training run writes as it goes: Lightning's CSV logger, made to continue a run's `metrics.csv` when
the run is resumed in its own folder, and `EpochLog`, each epoch's speed in the run's log."""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from fas.progress import ProgressLog

log = logging.getLogger(__name__)


class ContinuingCSVLogger(CSVLogger):
    """`CSVLogger` (configs/logger/csv.yaml) that a resumed run continues instead of starting `version_1`.

    `continue_from(step)` (called by `fas.train.train` when it resumes from a checkpoint) picks the
    newest existing version, drops the rows the interrupted process logged at or after the
    checkpoint's step (the resumed run logs them again) and appends to what is left, so one file holds
    the whole run as if it had never stopped. Plain Lightning would delete that file.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._continue_step: int | None = None

    def continue_from(self, step: int) -> None:
        versions = sorted(
            int(path.name.removeprefix("version_"))
            for path in Path(self.root_dir).glob("version_*")
            if path.name.removeprefix("version_").isdigit() and (path / ExperimentWriter.NAME_METRICS_FILE).is_file()
        )
        if versions and self._experiment is None:
            self._version = versions[-1]
            self._continue_step = step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            if self._continue_step is None:
                self._experiment = ExperimentWriter(log_dir=self.log_dir)
            else:
                self._experiment = AppendingWriter(self.log_dir, self._continue_step)
        return self._experiment


class AppendingWriter(ExperimentWriter):
    """Keeps an existing `metrics.csv`, cut to the rows logged before `step`, and appends to it."""

    def __init__(self, log_dir: str, step: int) -> None:
        self.keep_before_step = step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if row.get("step", "").isdigit() and int(row["step"]) < self.keep_before_step]
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.metrics_keys = header


def batch_size(batch: Any) -> int:
    return len(batch["image"]) if isinstance(batch, dict) and "image" in batch else 0


class EpochLog(Callback):
    """Each epoch's training and validation images, seconds and images/s in the run's log (one line each, on
    terminals too, where Lightning's bar is gone once the epoch ends), and, when stderr is not a terminal, a
    `ProgressLog` line every 30 s of a long training epoch (`configs/callbacks/epoch_log.yaml`)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.num_training_batches if isinstance(trainer.num_training_batches, int) else None
        self.progress = ProgressLog(f"Epoch {trainer.current_epoch} training", total, "batches")
        self.trained = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.progress.update()
        self.trained += batch_size(batch)
        self.trained_until = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After the epoch's validation (Lightning validates first): its time is counted up to the last batch."""
        if self.trained:
            speed_line(trainer.current_epoch, "trained on", self.trained, self.progress.start, self.trained_until)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_start, self.validated = time.monotonic(), 0

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.validated += batch_size(batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            speed_line(trainer.current_epoch, "validated", self.validated, self.validation_start, time.monotonic())


def speed_line(epoch: int, what: str, images: int, start: float, end: float) -> None:
    seconds = max(end - start, 1e-9)
    log.info("Epoch %d: %s %s images in %.1f s (%.1f images/s)", epoch, what, f"{images:,}", seconds, images / seconds)
