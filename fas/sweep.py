"""Sweeps: the Hydra callback that tabulates a multirun (one row per job, its overrides and its test
metrics). The `sweep_group` resolver that puts a sweep's jobs into one wandb group is in `fas.hydra_utils`."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows for every job directory under `sweep_dir` (those holding `.hydra/overrides.yaml`).

    The `overrides` column keeps only what differs between jobs; the shared ones are in multirun.yaml.
    """
    rows = []
    jobs = sorted(sweep_dir.glob("*/.hydra/overrides.yaml"), key=lambda p: _job_order(p.parents[1]))
    all_overrides = [yaml.safe_load(path.read_text()) or [] for path in jobs]
    shared = set.intersection(*(set(o) for o in all_overrides)) if len(all_overrides) > 1 else set()
    for overrides_file, overrides in zip(jobs, all_overrides, strict=True):
        job_dir = overrides_file.parents[1]
        report = job_dir / "report" / "metrics.json"
        metrics = json.loads(report.read_text())["metrics"] if report.is_file() else {}
        rows.append(
            {
                "job": job_dir.name,
                "overrides": " ".join(o for o in overrides if o not in shared),
                "status": "ok" if report.is_file() else "failed (no report/metrics.json)",
                **metrics,
            }
        )
    return rows


def _job_order(job_dir: Path) -> tuple[int, str]:
    return (int(job_dir.name), "") if job_dir.name.isdigit() else (1 << 30, job_dir.name)


def write_summary(
    sweep_dir: Path, rows: list[dict[str, Any]], columns: dict[str, str] | None = None
) -> tuple[Path, Path]:
    """Write `summary.csv` (every metric of every job) and `summary.md` into the sweep directory.

    With `columns` (metric key -> column title) summary.md shows only those metrics, and a last row with their
    mean over the jobs that ran (e.g. the mean HTER of a leave-one-out protocol); otherwise all of them.
    """
    every = list(dict.fromkeys(key for row in rows for key in row))
    csv_path, md_path = sweep_dir / "summary.csv", sweep_dir / "summary.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=every)
        writer.writeheader()
        writer.writerows(rows)
    shown = ["job", "overrides", "status", *columns] if columns else every
    titles = [columns.get(key, key) for key in shown] if columns else shown
    table = list(rows)
    if columns:
        finished = [row for row in rows if row.get("status") == "ok"]
        mean = {"job": "mean", "overrides": f"{len(finished)} job(s)"}
        for key in columns:
            values = [row[key] for row in finished if isinstance(row.get(key), int | float)]
            mean[key] = sum(values) / len(values) if values and len(values) == len(finished) else None
        table.append(mean)
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in shown) + " |" for row in table]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class SweepSummary(Callback):
    """At the end of `python train.py -m ...`, write the sweep's summary table next to its jobs; `columns`
    (metric key -> title, e.g. `configs/experiment/cross_dataset.yaml`'s) chooses what summary.md shows."""

    def __init__(self, columns: dict[str, str] | None = None) -> None:
        self.columns = dict(columns) if columns else None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_jobs(sweep_dir)
        if not rows:
            log.warning("No jobs found under %s; no sweep summary written", sweep_dir)
            return
        csv_path, md_path = write_summary(sweep_dir, rows, self.columns)
        log.info("Sweep summary (%d jobs): %s\n%s", len(rows), csv_path, md_path.read_text())
