"""End to end: `train(cfg)` on generated data, the backbone/size/FT grid, and one-line user errors."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fas.errors import ConfigError
from fas.metrics import METRIC_KEYS
from fas.models import BACKBONES
from fas.models.checkpoint import CheckpointMismatchError
from fas.train import train

from conftest import REPO_ROOT, TINY_DATA, TINY_RUN, compose_train, wandb_records


def epoch_means(metrics_csv: Path, key: str) -> list[float]:
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get(key)]
    epochs = sorted({int(r["epoch"]) for r in rows})
    return [
        sum(float(r[key]) for r in rows if int(r["epoch"]) == e) / sum(int(r["epoch"]) == e for r in rows)
        for e in epochs
    ]


def test_short_fit_lowers_both_losses(short_fit: Path) -> None:
    metrics_csv = short_fit / "csv" / "version_0" / "metrics.csv"
    for key in ("train/loss_ce", "train/loss_ft"):
        means = epoch_means(metrics_csv, key)
        assert len(means) == 6
        # Six epochs on 24 images are noisy one by one; the last three together must sit well below the first.
        assert sum(means[3:]) / 3 < 0.8 * means[0], (key, means)


def test_run_directory_holds_checkpoints_and_report(short_fit: Path) -> None:
    assert (short_fit / "checkpoints" / "last.ckpt").is_file()
    report = json.loads((short_fit / "report" / "metrics.json").read_text())
    (model,) = report["models"]
    assert list(model["metrics"]) == list(METRIC_KEYS)
    test_metrics = {f"test/{key}": value for key, value in model["metrics"].items()}
    assert report["metrics"] == {**test_metrics, "val/auroc": pytest.approx(report["metrics"]["val/auroc"])}
    assert 0.0 <= report["metrics"]["val/auroc"] <= 1.0  # the tested checkpoint's monitored score
    assert 0.0 <= model["metrics"]["auroc"] <= 1.0
    assert model["backbone"] == "minifasnet_v2se" and model["convention"]["input_size"] == 64
    assert Path(model["path"]).parent == short_fit / "checkpoints"
    assert model["threshold_choice"]["rule"] == "eer" and model["threshold_choice"]["split"] == "val"
    assert (short_fit / "report" / "report.md").is_file() and (short_fit / "report" / "report.html").is_file()
    # The test step logs the very numbers of the report (one metric implementation).
    logged = [r for r in csv.DictReader((short_fit / "csv" / "version_0" / "metrics.csv").open()) if r["test/auroc"]]
    for key in ("auroc", "eer", "acer", "tpr_at_fpr_1e-2"):
        assert float(logged[-1][f"test/{key}"]) == pytest.approx(model["metrics"][key], abs=1e-6)


def test_resume_with_another_head_is_refused(short_fit: Path, tiny_data: Path, tmp_path: Path) -> None:
    ckpt = short_fit / "checkpoints" / "last.ckpt"
    cfg = compose_train(
        [*TINY_RUN, f"data.root={tiny_data}", "convention.input_size=64", f"ckpt_path={ckpt}", "model.ft_weight=0"],
        tmp_path,
    )
    with pytest.raises(
        CheckpointMismatchError, match=r"trained with the Fourier head; resume it with model.ft_weight=0.5"
    ):
        train(cfg)
    cfg = compose_train(
        [*TINY_RUN, f"data.root={tiny_data}", "convention.input_size=128", f"ckpt_path={ckpt}"], tmp_path
    )
    with pytest.raises(
        CheckpointMismatchError, match=r"does not fit backbone minifasnet_v2se: .*convention.input_size=64"
    ):
        train(cfg)


def test_wandb_offline_run_holds_config_losses_metrics_and_the_onnx_artifact(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # artifact staging, not ~/.local
    overrides = [
        f"data.root={tiny_data}",
        "convention.input_size=48",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
    ]
    overrides += ["logger=wandb", "logger.wandb.offline=true", "quantization=none"]
    train(compose_train([*TINY_DATA, *overrides], tmp_path))
    records = wandb_records(tmp_path)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "train" and run.project == "fas"
    updates = [item for r in records if r.HasField("config") for item in r.config.update]
    config = {item.key: json.loads(item.value_json) for item in updates}
    assert config["model"]["ft_weight"] == 0.5 and config["convention"]["input_size"] == 48  # the resolved config
    history = [item for r in records if r.HasField("history") for item in r.history.item]
    logged = {item.key or "/".join(item.nested_key) for item in history}
    assert {"train/loss_ce", "train/loss_ft", "val/auroc", "test/auroc", "test/eer"} <= logged
    assert {"test/plots/count", "test/summary/nrows"} <= logged  # the report's plots and comparison table
    (artifact,) = [r.artifact for r in records if r.HasField("artifact") and r.artifact.type == "model"]
    assert artifact.name == f"onnx-{run.run_id}"
    assert sorted(entry.path for entry in artifact.manifest.contents) == ["model.onnx", "report.json", "report.md"]
    assert json.loads(artifact.metadata)["fp32"]["max_abs_logit_diff_vs_pytorch"] <= 1e-4


GRID = [(name, size, ft) for name in sorted(BACKBONES) for size in (80, 128) for ft in (0.0, 0.5)]


@pytest.mark.parametrize(("backbone", "size", "ft_weight"), GRID, ids=[f"{b}-{s}-ft{f}" for b, s, f in GRID])
def test_every_backbone_size_and_ft_weight_trains(
    backbone: str, size: int, ft_weight: float, tiny_data: Path, tmp_path: Path
) -> None:
    cfg = compose_train(
        [
            *TINY_DATA,
            "debug=fdr",  # also drops the callbacks
            f"data.root={tiny_data}",
            f"model={backbone}",
            f"convention.input_size={size}",
            f"model.ft_weight={ft_weight}",
        ],
        tmp_path,
    )
    _, metrics = train(cfg)
    assert "test/auroc" in metrics


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), *overrides], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_cli_missing_data_root(tmp_path: Path) -> None:
    line = error_line(run_cli("data=celeba_spoof", cwd=tmp_path))
    assert "data.root is not set: pass data.root=/path/to/CelebA_Spoof" in line


@pytest.mark.parametrize("size", ["abc", "-8", "7", "80.5"])
def test_invalid_input_size_names_the_key(size: str, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=rf"convention.input_size={size!r}|convention.input_size={size}: give the model's input"
    ):
        train(compose_train([*TINY_RUN, "data.root=unused", f"convention.input_size={size}"], tmp_path))


def test_cli_input_size_and_root_errors_are_one_line(tmp_path: Path, tiny_data: Path) -> None:
    line = error_line(run_cli("convention.input_size=abc", cwd=tmp_path))
    assert line == (
        "error: convention.input_size='abc': give the model's input side in pixels, an integer of at least 16 "
        "(e.g. convention.input_size=80 or convention.input_size=128)"
    )
    a_file = tiny_data / "metas" / "intra_test" / "train_label.json"
    line = error_line(run_cli("data=celeba_spoof", f"data.root={a_file}", cwd=tmp_path))
    assert line == f"error: {a_file}: the root is a file, not a folder; point it at your CelebA-Spoof copy"


def test_cli_unknown_backbone(tmp_path: Path, tiny_data: Path) -> None:
    line = error_line(run_cli("data=celeba_spoof", f"data.root={tiny_data}", "model.backbone=resnet50", cwd=tmp_path))
    assert "Unknown backbone 'resnet50'. Choose one of: minifasnet_v1" in line


def test_cli_unknown_model_config(tmp_path: Path) -> None:
    result = run_cli("model=resnet50", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/resnet50'" in result.stderr and "minifasnet_v2se" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_wrong_pretrained_checkpoint(tmp_path: Path, tiny_data: Path, reference_dir: Path) -> None:
    weights = reference_dir / "suri-liveness" / "best_model.pth"
    line = error_line(
        run_cli(
            "data=celeba_spoof", f"data.root={tiny_data}", "model=minifasnet_v1", f"pretrained={weights}", cwd=tmp_path
        )
    )
    assert "does not fit backbone minifasnet_v1" in line and "model=minifasnet_v2se, convention.input_size=128" in line


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def fit(tiny_data: Path, run_dir: Path, *overrides: str) -> dict:
    base = [*TINY_RUN, f"data.root={tiny_data}", "convention.input_size=48", "trainer.deterministic=true", "seed=7"]
    _, metrics = train(compose_train([*base, *overrides], run_dir))
    return metrics


# Loader workers and learning-rate steps inside the run: what a resumed run must replay exactly.
# Six epochs: after the first, a Ctrl-C dropped in a loader's finalizer must be resent while the fit still runs.
RESUMED = ["data.num_workers=2", "model.scheduler.milestones=[1,2]", "trainer.max_epochs=6"]


def kill_mid_training(command: list[str], run_dir: Path, signal_number: int) -> subprocess.CompletedProcess:
    """Start a real `train.py`, let it finish its first epoch (last.ckpt appears), then signal it mid-epoch."""
    process = subprocess.Popen(command, cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal_number)
    # A Ctrl-C that lands while Python runs a finalizer (a loader iterator's __del__ between epochs) is printed
    # and dropped by the interpreter; a user presses it again, and so does this test, twice a second (tiny epochs
    # end fast: once a second, the fit could end between two presses and the second land in the test phase).
    for _ in range(60):
        try:
            stdout, stderr = process.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            process.send_signal(signal_number)
    else:
        stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_run_resumes_to_the_same_weights(signal_number: int, tiny_data: Path, tmp_path: Path) -> None:
    fit(tiny_data, tmp_path / "whole", *RESUMED)
    run_dir = tmp_path / "killed"
    base = [*TINY_RUN, f"data.root={tiny_data}", "convention.input_size=48", "trainer.deterministic=true", "seed=7"]
    command = [sys.executable, str(REPO_ROOT / "train.py"), *base, *RESUMED, f"hydra.run.dir={run_dir}"]
    killed = kill_mid_training(command, run_dir, signal_number)
    assert killed.returncode != 0 and not (run_dir / "report").exists(), killed.stderr[-2000:]
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    total = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < stopped_at < total  # it stopped part way

    resumed = subprocess.run(
        [*command, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole, again = final_weights(tmp_path / "whole"), final_weights(run_dir)
    assert whole.keys() == again.keys()
    for key in whole:
        assert torch.equal(whole[key], again[key]), key

    # One log for the whole run: the resumed process continued the CSV (no version_1) and train.log.
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]
    rows = list(csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open()))
    expected = list(csv.DictReader((tmp_path / "whole" / "csv" / "version_0" / "metrics.csv").open()))
    assert len([r for r in rows if r["lr-SGD"]]) == 6  # one learning-rate row per epoch, none twice
    assert [(r["epoch"], r["step"], r["lr-SGD"]) for r in rows] == [
        (r["epoch"], r["step"], r["lr-SGD"]) for r in expected
    ]
    log_text = (run_dir / "train.log").read_text()
    assert f"Resuming from {run_dir / 'checkpoints' / 'last.ckpt'} (saved in epoch" in log_text
    if signal_number == signal.SIGINT:
        assert "Interrupted in epoch" in log_text and "Resume with: python train.py" in log_text


@pytest.mark.slow
def test_same_seed_same_metrics_twice(tiny_data: Path, tmp_path: Path) -> None:
    first = fit(tiny_data, tmp_path / "a", "trainer.max_epochs=2", "data.num_workers=0")
    second = fit(tiny_data, tmp_path / "b", "trainer.max_epochs=2", "data.num_workers=2")
    assert {k: float(v) for k, v in first.items()} == {k: float(v) for k, v in second.items()}
    for key, value in final_weights(tmp_path / "a").items():
        assert torch.equal(value, final_weights(tmp_path / "b")[key]), key


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_a_single_process_evaluation(tiny_data: Path, tmp_path: Path) -> None:
    from fas.evaluate import evaluate

    from conftest import compose_config

    run_dir = tmp_path / "ddp"
    overrides = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2"]
    result = run_cli(
        *TINY_DATA,
        f"data.root={tiny_data}",
        "convention.input_size=48",
        *overrides,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == [  # written once, by rank 0
        "model.onnx",
        "model_int8.onnx",
        "report.json",
        "report.md",
    ]
    ddp, _ = json.loads((run_dir / "report" / "metrics.json").read_text())["models"]  # the checkpoint, its INT8 file
    single = compose_config(
        "evaluate", [f"ckpt_path={ddp['path']}", *TINY_DATA, f"data.root={tiny_data}"], tmp_path / "eval"
    )
    (alone,) = json.loads(evaluate(single).metrics.read_text())["models"]
    assert ddp["threshold_choice"]["value"] == pytest.approx(alone["threshold_choice"]["value"], rel=1e-6)
    for key in METRIC_KEYS:
        assert ddp["metrics"][key] == pytest.approx(alone["metrics"][key], abs=1e-6), key


def own_data(tiny_folder: Path, reference_dir: Path, run_dir: Path) -> list[str]:
    """Overrides that train on the folder twin: YuNet from ../shared, the automatic caches under the run."""
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    return [*TINY_RUN, "convention.input_size=48", f"detector.model_path={yunet}", f"paths.data_dir={run_dir / 'data'}"]


def test_training_on_a_folder_tree(tiny_folder: Path, reference_dir: Path, tmp_path: Path) -> None:
    overrides = [*own_data(tiny_folder, reference_dir, tmp_path), "data=folder", f"data.root={tiny_folder}"]
    _, metrics = train(compose_train([*overrides, "trainer.max_epochs=1"], tmp_path))
    assert 0 <= float(metrics["test/auroc"]) <= 1
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["data_root"] == f"folder ({tiny_folder})"  # the report names the source
    assert len(list((tmp_path / "data" / "prepared").glob("folder-48px-*/manifest.json"))) == 1


def test_mixed_sources_report_per_source_metrics_and_resume_exactly(
    tiny_folder: Path, tiny_data: Path, reference_dir: Path, tmp_path: Path
) -> None:
    overrides = [
        *own_data(tiny_folder, reference_dir, tmp_path),
        "data=mix",
        f"data.sources.celeba_spoof.root={tiny_data}",
        f"data.sources.folder.root={tiny_folder}",
        "data.sources.folder.weight=2",
        "trainer.deterministic=true",
        "seed=3",
    ]
    _, metrics = train(compose_train([*overrides, "trainer.max_epochs=2"], tmp_path / "whole"))
    for source in ("celeba_spoof", "folder"):
        for key in ("auroc", "eer", "acer"):
            assert f"test/{source}/{key}" in metrics
    rows = list(csv.DictReader((tmp_path / "whole" / "csv" / "version_0" / "metrics.csv").open()))
    assert any(r.get("val/folder/auroc") for r in rows) and any(r.get("val/celeba_spoof/auroc") for r in rows)
    (model,) = json.loads((tmp_path / "whole" / "report" / "metrics.json").read_text())["models"]
    assert set(model["per_source"]) == {"celeba_spoof", "folder"}
    counts = [model["per_source"][name]["counts"] for name in ("celeba_spoof", "folder")]
    assert sum(c["live"] + c["spoof"] for c in counts) == model["counts"]["live"] + model["counts"]["spoof"]
    assert "## Per data source" in (tmp_path / "whole" / "report" / "report.md").read_text()

    train(compose_train([*overrides, "trainer.max_epochs=1"], tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(compose_train([*overrides, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "first"))
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(tmp_path / "first")
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_a_best_checkpoint_from_the_resumed_run_says_so(tmp_path: Path) -> None:
    from fas.train import resumed_note

    old, new = tmp_path / "old_run", tmp_path / "new_run"
    assert resumed_note(str(old / "checkpoints/epoch_003.ckpt"), new).startswith(
        " (written by the run this one resumed from"
    )
    assert resumed_note(str(new / "checkpoints/epoch_005.ckpt"), new) == ""
    assert resumed_note(None, new) == ""
