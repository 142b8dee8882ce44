"""Multirun and Optuna sweeps write one summary row per job."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.types import RunMode

from fas.hydra_utils import sweep_group
from fas.sweep import collect_jobs, write_summary

from conftest import REPO_ROOT, wandb_records

QUICK = ["data=celeba_spoof", "data.num_workers=0", "data.batch_size=8", "trainer.max_epochs=1"]
QUICK += ["+trainer.limit_train_batches=2", "+trainer.enable_progress_bar=false", "~callbacks.export"]


def run_sweep(tiny_data: Path, cwd: Path, *overrides: str) -> list[dict[str, str]]:
    """Run `python train.py <overrides>` in `cwd`; the rows of the sweep's summary."""
    command = [sys.executable, str(REPO_ROOT / "train.py"), *overrides, *QUICK, f"data.root={tiny_data}"]
    result = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_SILENT": "true", "WANDB_DATA_DIR": str(cwd / "wandb_data")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = cwd.glob("logs/train/multiruns/*/summary.csv")
    return list(csv.DictReader(summary.open()))


@pytest.mark.slow
def test_two_job_multirun_writes_its_summary(tiny_data: Path, tmp_path: Path) -> None:
    sweep = ("-m", "model=minifasnet_v2,minifasnet_v2se", "model.ft_weight=0,0.5")
    rows = run_sweep(tiny_data, tmp_path, *sweep)  # into the default logs/train/multiruns/<date>/
    (sweep_dir,) = tmp_path.glob("logs/train/multiruns/*")
    assert [r["overrides"] for r in rows] == [
        "model=minifasnet_v2 model.ft_weight=0",
        "model=minifasnet_v2 model.ft_weight=0.5",
        "model=minifasnet_v2se model.ft_weight=0",
        "model=minifasnet_v2se model.ft_weight=0.5",
    ]
    assert all(r["status"] == "ok" and 0 <= float(r["test/auroc"]) <= 1 for r in rows)
    assert (sweep_dir / "summary.md").read_text().count("\n") == 6
    assert all((sweep_dir / str(i) / "report" / "metrics.json").is_file() for i in range(4))


@pytest.mark.slow
def test_two_trial_optuna_sweep_in_one_wandb_group(tiny_data: Path, tmp_path: Path) -> None:
    rows = run_sweep(
        tiny_data,
        tmp_path,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "logger=wandb",
        "logger.wandb.offline=true",
    )
    assert len(rows) == 2 and all("model.optimizer.lr=" in r["overrides"] for r in rows)
    assert all(r["val/auroc"] != "" for r in rows)
    (sweep_dir,) = tmp_path.glob("logs/train/multiruns/*")
    assert (sweep_dir / "optimization_results.yaml").is_file()
    runs = [next(r.run for r in wandb_records(sweep_dir / job) if r.HasField("run")) for job in ("0", "1")]
    assert [run.run_group for run in runs] == [f"train_{sweep_dir.name}"] * 2  # train_<date>_<time>
    assert runs[0].run_id != runs[1].run_id  # each job its own run, though both ran in one process


def test_sweep_group_is_the_sweep_for_multirun_jobs_and_the_task_otherwise() -> None:
    assert sweep_group(RunMode.MULTIRUN, "logs/train/multiruns/2026-11-24_21-00-00", "train") == (
        "train_2026-11-24_21-00-00"
    )
    assert sweep_group(RunMode.RUN, "logs/train/multiruns/2026-11-24_21-00-00", "train") == "train"


def test_summary_marks_failed_jobs(tmp_path: Path) -> None:
    for job, overrides in (("0", "- a=1\n- b=1\n"), ("1", "- a=1\n- b=2\n")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(overrides)
    (tmp_path / "0" / "report").mkdir()
    (tmp_path / "0" / "report" / "metrics.json").write_text('{"metrics": {"test/auroc": 0.75}}')
    rows = collect_jobs(tmp_path)
    assert rows == [
        {"job": "0", "overrides": "b=1", "status": "ok", "test/auroc": 0.75},
        {"job": "1", "overrides": "b=2", "status": "failed (no report/metrics.json)"},
    ]
    _, md = write_summary(tmp_path, rows)
    assert "| 1 | b=2 | failed (no report/metrics.json) |  |" in md.read_text()


def test_summary_columns_and_their_mean(tmp_path: Path) -> None:
    """`columns` (as configs/experiment/cross_dataset.yaml sets them): summary.md shows those metrics under their
    titles and a mean row over the jobs that ran; summary.csv keeps every metric."""
    rows = [
        {"job": "0", "overrides": "data.held_out=oulu", "status": "ok", "test/auroc": 0.9, "test/eer": 0.1, "x": 1.0},
        {"job": "1", "overrides": "data.held_out=msu", "status": "ok", "test/auroc": 0.7, "test/eer": 0.3, "x": 2.0},
        {"job": "2", "overrides": "data.held_out=casia", "status": "failed (no report/metrics.json)"},
    ]
    csv_path, md_path = write_summary(tmp_path, rows, {"test/auroc": "ROC-AUC", "test/eer": "HTER at test EER"})
    lines = md_path.read_text().splitlines()
    assert lines[0] == "| job | overrides | status | ROC-AUC | HTER at test EER |"
    assert lines[2] == "| 0 | data.held_out=oulu | ok | 0.9000 | 0.1000 |"
    assert lines[-1] == "| mean | 2 job(s) |  | 0.8000 | 0.2000 |"
    assert list(csv.DictReader(csv_path.open()))[1]["x"] == "2.0"


@pytest.mark.slow
def test_leave_one_dataset_out_is_a_multirun(tiny_data: Path, tiny_folder: Path, reference_dir: Path, tmp_path: Path):
    """Train on every source but one, test on that one: one job per held-out source, the summary its table."""
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    command = [
        sys.executable, str(REPO_ROOT / "train.py"), "-m", "data=mix", "data.held_out=celeba_spoof,folder",
        f"data.sources.celeba_spoof.root={tiny_data}", f"data.sources.folder.root={tiny_folder}",
        f"detector.model_path={yunet}", f"paths.data_dir={tmp_path / 'data'}", "convention.input_size=48",
        *[q for q in QUICK if not q.startswith("data=")],
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = tmp_path.glob("logs/train/multiruns/*/summary.csv")
    rows = list(csv.DictReader(summary.open()))
    assert [r["overrides"] for r in rows] == ["data.held_out=celeba_spoof", "data.held_out=folder"]
    assert all(r["status"] == "ok" and 0 <= float(r["test/auroc"]) <= 1 for r in rows)
    for index, held_out in enumerate(("celeba_spoof", "folder")):
        report = json.loads((summary.parent / str(index) / "report" / "metrics.json").read_text())
        (model,) = report["models"]
        assert report["data_root"].startswith("celeba_spoof (") and model["per_source"] == {}  # one source tested
        assert model["counts"]["live"] > 0 and model["counts"]["spoof"] > 0, held_out
        log = (summary.parent / str(index) / "train.log").read_text()
        other = "folder" if held_out == "celeba_spoof" else "celeba_spoof"
        assert f"{other}: its " in log and f"held_out={held_out} is the test data" in log


@pytest.mark.slow
def test_the_cross_dataset_protocol_is_one_multirun(tiny_folder: Path, reference_dir: Path, tmp_path: Path) -> None:
    """experiment=cross_dataset_scratch on five generated trees named as the public sets (oulu as face crops):
    holding out CASIA trains on OULU, Replay and MSU and tests CASIA whole, NUAA unread; holding out NUAA trains
    on the four; summary.md is the protocol's table, FP32 and INT8, with its mean row."""
    import shutil

    from test_folder import face_crop_tree

    trees = tmp_path / "trees"
    face_crop_tree(trees / "oulu")
    for name in ("casia", "replay", "msu", "nuaa"):
        shutil.copytree(tiny_folder, trees / name, ignore=shutil.ignore_patterns("manifest*"))
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    command = [
        sys.executable, str(REPO_ROOT / "train.py"), "-m", "experiment=cross_dataset_scratch", f"data.root={trees}",
        "data.held_out=casia,nuaa", "convention.input_size=32", "data.epoch_size=32", "data.batch_size=8",
        "data.num_workers=0", "trainer.max_epochs=1", "+trainer.enable_progress_bar=false",
        f"detector.model_path={yunet}", f"paths.data_dir={tmp_path / 'data'}", "data.skip_bad_samples=true",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("logs/cross_dataset_scratch/multiruns/*")
    table = (sweep_dir / "summary.md").read_text().splitlines()
    assert table[0].startswith("| job | overrides | status | ROC-AUC | HTER (recorded threshold) | HTER at test EER")
    assert "INT8 ROC-AUC" in table[0] and table[-1].startswith("| mean | 2 job(s) |")
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [r["overrides"] for r in rows] == ["data.held_out=casia", "data.held_out=nuaa"]
    assert all(0 <= float(r["int8/test/auroc"]) <= 1 for r in rows)
    for job, held_out, trained_on in (("0", "casia", "oulu, replay, msu"), ("1", "nuaa", "oulu, casia, replay, msu")):
        report = json.loads((sweep_dir / job / "report" / "metrics.json").read_text())
        model = report["models"][0]
        assert set(model["per_source"]) <= {held_out} and model["counts"]["spoof"] > 0
        used = [part.split(" (")[0] for part in report["data_root"].split(", ")]
        assert sorted(used) == sorted([*trained_on.split(", "), held_out])
        log = (sweep_dir / job / "cross_dataset_scratch.log").read_text()
        assert ("Holding casia out; not reading nuaa" in log) == (held_out == "casia")
