"""Lightning's CSV logger, made to continue a run's `metrics.csv` when the run is resumed in its own folder."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


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
