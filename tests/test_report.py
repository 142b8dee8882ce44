"""The report files: stable JSON keys, Markdown and a self-contained HTML that a browser renders with its plots."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from fas.convention import ClassScheme, InputConvention, ModelInfo
from fas.metrics import METRIC_KEYS, Scores, ThresholdChoice, choose_threshold, pad_metrics
from fas.report import ModelEvaluation, log_to_wandb, unique_names, write_report

BINARY = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1})
INFO = ModelInfo(InputConvention(input_size=64), BINARY, "minifasnet_v2se")


def evaluation(name: str, seed: int, n: int = 400, types: tuple[int, ...] = (0, 1, 2, 7, 9)) -> ModelEvaluation:
    rng = np.random.default_rng(seed)
    spoof_type = rng.choice(types, size=n)
    illumination = rng.integers(1, 5, n) * (spoof_type != 0)
    scores = Scores(np.clip(rng.normal(0.3 + 0.4 * (spoof_type != 0), 0.2), 0, 1), spoof_type, illumination)
    threshold = choose_threshold("eer", scores) if 0 in types and len(types) > 1 else ThresholdChoice("eer", None)
    result = pad_metrics(scores, threshold.value, BINARY.spoof_type_classes)
    return ModelEvaluation(name, f"/models/{name}", INFO, threshold, scores, result)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    evaluations = [evaluation("a.ckpt", 0), evaluation("a.onnx", 1)]
    with pytest.warns(UserWarning):
        evaluations.append(evaluation("live_only.onnx", 2, types=(0,)))
    return write_report(tmp_path_factory.mktemp("report"), evaluations, split="test", data_root="/data")


def test_metrics_json_has_stable_keys_and_null_for_undefined(report) -> None:
    text = report.metrics.read_text()
    payload = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert payload["format"] == 1 and payload["split"] == "test" and payload["data_root"] == "/data"
    assert [m["name"] for m in payload["models"]] == ["a.ckpt", "a.onnx", "live_only.onnx"]
    first, _, live_only = payload["models"]
    # The flat summary (what sweep tables read): <model>/<split>/<metric> when several models are compared.
    assert len(payload["metrics"]) == 3 * len(METRIC_KEYS)
    assert payload["metrics"]["a.ckpt/test/auroc"] == first["metrics"]["auroc"]
    assert payload["metrics"]["live_only.onnx/test/auroc"] is None
    assert set(first) == {
        "name", "path", "backbone", "class_scheme", "convention", "threshold_choice",
        "counts", "metrics", "apcer_per_type", "confusion_matrix", "breakdowns", "undefined", "per_source", "stress",
        "video",
    }  # fmt: skip
    assert list(first["metrics"]) == list(METRIC_KEYS)
    assert first["apcer_per_type"]["a4"] is None and "apcer_per_type.a4" in first["undefined"]
    # breakdowns the data records: these scores carry illumination codes but no environment (all 0)
    assert set(first["breakdowns"]) == {"spoof_type", "illumination"}
    assert live_only["metrics"]["auroc"] is None and live_only["undefined"]["auroc"] == "no attack (spoof) samples"
    assert live_only["threshold_choice"]["value"] is None


def test_markdown_compares_the_models(report) -> None:
    text = report.markdown.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model | live | spoof | ROC-AUC"))
    assert "TPR@FPR=1e-3" in header
    rows = [line for line in text.splitlines() if line.startswith(("| a.ckpt |", "| a.onnx |", "| live_only.onnx |"))]
    assert len(rows) == 6  # two summary tables
    assert "| live_only.onnx | 0 " not in text and "undefined" in text
    for name in ("roc", "det", "pr", "histogram", "confusion"):
        assert f"![{name}](plots/{name}.png)" in text
        assert (report.markdown.parent / "plots" / f"{name}.png").is_file()


def test_html_is_self_contained(report) -> None:
    text = report.html.read_text()
    assert not re.search(r"src=['\"](?!data:)", text) and "<link" not in text
    images = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(images) == 5
    assert base64.b64decode(images[0]) == report.plots["roc"].read_bytes()
    assert "<td class='undefined'>undefined</td>" in text


def test_unique_names() -> None:
    assert unique_names(["runs/a/best.ckpt", "runs/a/model.onnx"]) == ["best.ckpt", "model.onnx"]
    assert unique_names(["runs/a/best.ckpt", "runs/b/best.ckpt"]) == ["a/best.ckpt", "b/best.ckpt"]
    assert unique_names(["best.ckpt", "best.ckpt"]) == ["best.ckpt #1", "best.ckpt #2"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# CI installs Chromium and sets FAS_REQUIRE_CHROMIUM=1 (.ci/run), so there the test runs or fails, never skips.
REQUIRE_CHROMIUM = os.environ.get("FAS_REQUIRE_CHROMIUM") == "1"


@pytest.mark.skipif(
    CHROMIUM is None and not REQUIRE_CHROMIUM,
    reason="no chromium on PATH to render report.html (apt-get install chromium)",
)
def test_html_renders_with_its_plots_in_headless_chromium(report, tmp_path: Path) -> None:
    assert CHROMIUM is not None, "FAS_REQUIRE_CHROMIUM=1 but no chromium on PATH"
    shot = tmp_path / "report.png"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
        "--window-size=1280,2200", f"--screenshot={shot}", report.html.as_uri(),
    ]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    image = cv2.imread(str(shot))
    assert image.shape[:2] == (2200, 1280)
    # The ROC / DET / PR curves of the first two models, in matplotlib's first two colours (BGR).
    blue = np.all(np.abs(image.astype(int) - (180, 119, 31)) <= 20, axis=2)
    orange = np.all(np.abs(image.astype(int) - (14, 127, 255)) <= 20, axis=2)
    assert blue.sum() > 500 and orange.sum() > 500
    # ... drawn below the tables, where the curve images sit.
    assert np.flatnonzero(blue.any(axis=1)).min() > 300


def test_wandb_offline_receives_the_table_and_plots(report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    evaluations = [evaluation("a.ckpt", 0)]
    wandb_logger = WandbLogger(project="fas-test", save_dir=str(tmp_path), offline=True)
    log_to_wandb([CSVLogger(tmp_path), wandb_logger], evaluations, report, prefix="test")
    wandb_logger.experiment.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run / "files" / "media"
    assert len(list((media / "images").glob("test/plots_*.png"))) == 5
    (table,) = (media / "table" / "test").glob("summary_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][:2] == ["model", "auroc"] and content["data"][0][0] == "a.ckpt"
