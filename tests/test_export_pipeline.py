"""The export path end to end: the callback at the end of a short fit, `export(cfg)` and `export.py`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from fas.convention import ClassScheme, InputConvention
from fas.data.datamodule import datamodule_for
from fas.data.sample import with_targets
from fas.data.sources.celeba_spoof import read_split
from fas.export.pipeline import ExportError, calibration_images, export, export_model, labelled_images
from fas.export.quantize import QuantizationRecipe, quantize
from fas.inference.backends import load_backend
from fas.inference.onnx_file import read_metadata
from fas.train import train

from conftest import REPO_ROOT, TINY_DATA, celeba_datamodule, compose_config, compose_train

pytestmark = pytest.mark.slow  # a short fit, in-process and command-line exports: about a minute


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> tuple[Path, list[str]]:
    """A 3-epoch AdamW fit at 64x64 with the default callbacks (trained enough for its logits to differ
    from image to image); returns the run directory and train()'s log."""
    run_dir = tmp_path_factory.mktemp("export_fit")
    overrides = [
        f"data.root={tiny_data}",
        "convention.input_size=64",
        "optimizer=adamw",
        "trainer.max_epochs=3",
        "seed=0",
    ]
    cfg = compose_train([*TINY_DATA, *overrides], run_dir)
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("fas.train")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train(cfg)
    finally:
        logger.removeHandler(handler)
    return run_dir, messages


def best_checkpoint(run_dir: Path) -> Path:
    return next(p for p in (run_dir / "checkpoints").glob("epoch_*.ckpt"))


def test_training_ends_with_both_files_and_the_report(trained: tuple[Path, list[str]], tiny_data: Path) -> None:
    run_dir, messages = trained
    export_dir = run_dir / "export"
    assert {p.name for p in export_dir.iterdir()} == {"model.onnx", "model_int8.onnx", "report.json", "report.md"}
    report = json.loads((export_dir / "report.json").read_text())
    scheme = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1, 11: 1})
    assert report["test_images"] == len(with_targets(read_split(tiny_data, "test")[0], scheme, "test"))
    assert report["source"] == str(best_checkpoint(run_dir))
    assert report["fp32"]["max_abs_logit_diff_vs_pytorch"] <= 1e-4
    assert report["fp32"]["accuracy"] == pytest.approx(report["pytorch"]["accuracy"])
    int8 = report["int8"]
    assert 0.0 <= int8["decision_agreement"] <= 1.0 and int8["latency_ms"] > 0
    assert int8["accuracy_delta_points"] == pytest.approx(int8["accuracy"] - report["fp32"]["accuracy"])
    assert report["quantization"]["method"] == "static" and report["optimize"] is True
    assert "| accuracy (%) |" in (export_dir / "report.md").read_text()
    info = read_metadata(export_dir / "model.onnx")
    assert read_metadata(export_dir / "model_int8.onnx") == info
    assert info.convention.input_size == 64 and info.class_scheme == scheme
    assert info.config["backbone"] == "minifasnet_v2se" and info.config["ft_weight"] == 0.5
    assert any(m.startswith(f"Export: {export_dir / 'model.onnx'}") for m in messages), messages


def test_int8_is_bias_corrected_on_the_calibration_crops(
    ranked_checkpoint: Path, tiny_data: Path, tmp_path: Path
) -> None:
    cfg = compose_config("export", [f"ckpt_path={ranked_checkpoint}", *TINY_DATA, f"data.root={tiny_data}"], tmp_path)
    result = export(cfg)
    fp32 = load_backend(result.fp32)
    datamodule = datamodule_for(cfg.data, fp32.info)
    datamodule.setup()
    crops = calibration_images(datamodule, 128)
    fp32_logits, int8_logits = fp32.logits(crops), load_backend(result.int8).logits(crops)
    assert fp32_logits.std(axis=0).min() > 0.05  # a model whose logits vary from crop to crop
    np.testing.assert_allclose(int8_logits.mean(axis=0), fp32_logits.mean(axis=0), atol=0.02)


def test_float_stride_brings_int8_closer_to_fp32(ranked_checkpoint: Path, tiny_data: Path, tmp_path: Path) -> None:
    cfg = compose_config("export", [f"ckpt_path={ranked_checkpoint}", *TINY_DATA, f"data.root={tiny_data}"], tmp_path)
    result = export(cfg)  # the default recipe: float_stride=4
    assert result.report["quantization"]["float_stride"] == 4
    datamodule = datamodule_for(cfg.data, load_backend(result.fp32).info)
    datamodule.setup()
    calibration, test = calibration_images(datamodule, 128), labelled_images(datamodule.splits["test"]).images
    all_int8 = quantize(result.fp32, tmp_path / "all_int8.onnx", QuantizationRecipe(float_stride=0), calibration)
    fp32 = load_backend(result.fp32).logits(test)
    errors = {path.name: np.abs(load_backend(path).logits(test) - fp32).mean() for path in (result.int8, all_int8)}
    assert errors[result.int8.name] < 0.8 * errors[all_int8.name], errors


def test_export_without_int8_in_process(trained: tuple[Path, list[str]], tiny_data: Path, tmp_path: Path) -> None:
    run_dir, _ = trained
    cfg = compose_config(
        "export",
        [f"ckpt_path={best_checkpoint(run_dir)}", "data=celeba_spoof", f"data.root={tiny_data}", "quantization=none"],
        tmp_path,
    )
    result = export(cfg)
    assert result.fp32 == tmp_path / "export" / "model.onnx" and result.int8 is None
    assert "int8" not in result.report and "not made" in result.report_md.read_text()
    assert read_metadata(result.fp32).convention.input_size == 64  # the checkpoint's, not data.input_size


def test_export_cli_with_dynamic_quantization(trained: tuple[Path, list[str]], tiny_data: Path, tmp_path: Path) -> None:
    run_dir, _ = trained
    command = [
        sys.executable,
        str(REPO_ROOT / "export.py"),
        f"ckpt_path={best_checkpoint(run_dir)}",
        "data=celeba_spoof",
        f"data.root={tiny_data}",
        "quantization=dynamic",
        "optimize=false",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (int8,) = tmp_path.glob("logs/export/runs/*/export/model_int8.onnx")
    ops = Counter(node.op_type for node in onnx.load(str(int8)).graph.node)
    assert ops["ConvInteger"] > 0 and ops["PRelu"] == 33  # optimize=false keeps the plain graph
    report = json.loads((int8.parent / "report.json").read_text())
    assert report["quantization"]["method"] == "dynamic" and report["optimize"] is False


def test_export_cli_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO_ROOT / "export.py"), "ckpt_path=missing.ckpt"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and lines == ["error: missing.ckpt: model file not found; check the path"]


def test_data_with_another_convention_is_refused(trained: tuple[Path, list[str]], tiny_data: Path) -> None:
    run_dir, _ = trained
    scheme = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1})
    datamodule = celeba_datamodule(tiny_data, scheme, convention=InputConvention(input_size=80))
    with pytest.raises(ExportError, match=r"the model expects .*input_size=64.*datamodule_for"):
        export_model(best_checkpoint(run_dir), run_dir / "other", QuantizationRecipe(), datamodule)


def test_published_weights_export_with_their_own_convention(reference_dir: Path, tiny_data: Path, tmp_path: Path):
    """`export.py ckpt_path=best_model.pth`: the suri-liveness file becomes a drop-in ONNX replacement."""
    suri = reference_dir / "suri-liveness" / "best_model.pth"
    cfg = compose_config("export", [f"ckpt_path={suri}", *TINY_DATA, f"data.root={tiny_data}"], tmp_path)
    result = export(cfg)
    info = read_metadata(result.int8)
    assert (info.convention.input_size, info.convention.crop_scale, info.convention.crop_mode) == (128, 1.5, "reflect")
    assert info.class_scheme.class_names == ("live", "spoof") and info.class_scheme.real_class_index == 0
    assert result.report["fp32"]["max_abs_logit_diff_vs_pytorch"] <= 1e-4


def test_the_training_report_scores_the_int8_export_as_evaluate_does(
    trained: tuple[Path, list[str]], tiny_data: Path, tmp_path: Path
) -> None:
    """train's report has the INT8 file beside the checkpoint (`int8/test/*`, at the checkpoint's threshold),
    with the figures `evaluate.py` gives that file on the same test split."""
    from fas.evaluate import evaluate

    run_dir, _ = trained
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    checkpoint, int8 = report["models"]
    assert int8["name"] == "model_int8.onnx" and int8["counts"] == checkpoint["counts"]
    assert int8["threshold_choice"] == checkpoint["threshold_choice"]
    metrics = report["metrics"]
    assert metrics["int8/test/auroc"] == int8["metrics"]["auroc"] and "test/auroc" in metrics
    overrides = [f"ckpt_path={run_dir / 'export' / 'model_int8.onnx'}", "data=celeba_spoof", f"data.root={tiny_data}"]
    files = evaluate(compose_config("evaluate", [*overrides, "data.num_workers=0"], tmp_path))
    (evaluated,) = json.loads(files.metrics.read_text())["models"]
    for key in ("auroc", "eer", "hter", "tpr_at_fpr_1e-2"):
        assert metrics[f"int8/test/{key}"] == pytest.approx(evaluated["metrics"][key], abs=1e-9), key


def test_a_large_test_split_is_compared_on_a_seeded_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """The export's own file comparison holds its crops in memory: past PARITY_IMAGES it takes a seeded sample."""
    from fas.export import pipeline

    monkeypatch.setattr(pipeline, "PARITY_IMAGES", 5)
    assert len(pipeline.parity_sample(list(range(5)))) == 5
    sample = pipeline.parity_sample(list(range(12)))
    chosen = [sample[i] for i in range(len(sample))]
    assert len(chosen) == 5 == len(set(chosen)) and chosen == sorted(chosen)
    assert chosen == [pipeline.parity_sample(list(range(12)))[i] for i in range(5)]  # the same each time
