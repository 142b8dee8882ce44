"""Quantization-aware training (`quantization=qat`, `fas.export.qat`): the INT8 file of a trained checkpoint,
from `export(cfg)` (what `python export.py ... quantization=qat` runs) and from the end of a training run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hydra.utils import instantiate

from fas.data.datamodule import datamodule_for
from fas.errors import ConfigError
from fas.export.pipeline import ExportResult, export, labelled_images, training_augmentation, training_crops
from fas.export.quantize import QuantizationRecipe
from fas.inference.backends import load_backend
from fas.inference.onnx_file import read_metadata
from fas.train import train

from conftest import REPO_ROOT, TINY_DATA, celeba_datamodule, compose_config, compose_train

# A few steps keep the file fast: QAT of the 64x64 checkpoint on its 36 training crops, 8 steps of 8 crops.
QAT_RUN = ["quantization=qat", "quantization.qat_max_steps=8", "quantization.qat_batch_size=8"]
# Measured on the 22 test crops: 21 or 22 decisions agree with FP32 over learning rates 2e-6 to 1e-4 and
# 1 to 100 steps (fas's static recipe with every layer in 8 bits: 20 of 22); mean |logit difference| 0.17-0.22
# for logits whose spread (std over the crops) is 1.4-1.6.
MIN_AGREEMENT = 19 / 22
MAX_MEAN_LOGIT_DIFFERENCE = 0.35


@pytest.fixture(scope="module")
def qat_export(ranked_checkpoint: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    run_dir = tmp_path_factory.mktemp("qat_export")
    overrides = [f"ckpt_path={ranked_checkpoint}", *TINY_DATA, f"data.root={tiny_data}", *QAT_RUN]
    return export(compose_config("export", overrides, run_dir))


def optimized_ops(path: Path, folder: Path) -> Counter:
    """The operators of the graph ONNX Runtime runs, once it has fused the file's QDQ pairs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_every_conv_and_gemm_runs_in_int8(qat_export: ExportResult, tmp_path: Path) -> None:
    convolutions = Counter(node.op_type for node in onnx.load(str(qat_export.fp32)).graph.node)["Conv"]
    ops = optimized_ops(qat_export.int8, tmp_path)
    assert convolutions == 88 and ops["QLinearConv"] == convolutions and ops["QGemm"] == 1, ops
    assert not {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "BatchNormalization"} & set(ops), ops
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 0  # in once, logits out as float
    assert qat_export.report["int8"]["layers"] == {"int8": 89, "float": 0}
    assert qat_export.report["fp32"]["layers"] == {"int8": 0, "float": 89}


def test_the_int8_file_agrees_with_fp32(qat_export: ExportResult, tiny_data: Path) -> None:
    int8 = qat_export.report["int8"]
    assert int8["decision_agreement"] >= MIN_AGREEMENT, int8
    fp32, quantized = load_backend(qat_export.fp32), load_backend(qat_export.int8)
    datamodule = celeba_datamodule(tiny_data, fp32.info.class_scheme, convention=fp32.info.convention)
    datamodule.setup("test")
    test = labelled_images(datamodule.splits["test"]).images
    fp32_logits, int8_logits = fp32.logits(test), quantized.logits(test)
    assert fp32_logits.std(axis=0).min() > 0.5  # a trained model: its logits vary from crop to crop
    assert np.abs(int8_logits - fp32_logits).mean() <= MAX_MEAN_LOGIT_DIFFERENCE


def test_float_stride_keeps_the_high_resolution_layers_float(
    qat_export: ExportResult, ranked_checkpoint: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """`quantization=qat quantization.float_stride=4`: the layers whose output is at least a quarter of the 64-px
    input train and run float (their weights stored as float16, as the static recipe's), the rest int8."""
    overrides = [f"ckpt_path={ranked_checkpoint}", *TINY_DATA, f"data.root={tiny_data}", *QAT_RUN]
    result = export(compose_config("export", [*overrides, "quantization.float_stride=4"], tmp_path))
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(result.fp32)))
    shapes = {v.name: v.type.tensor_type.shape.dim for v in inferred.graph.value_info}
    sides = [shapes[n.output[0]][-1].dim_value for n in inferred.graph.node if n.op_type == "Conv"]
    high_resolution = sum(side >= 64 // 4 for side in sides)
    assert 0 < high_resolution < len(sides) == 88
    assert result.report["quantization"]["float_stride"] == 4
    assert result.report["int8"]["layers"] == {"int8": 89 - high_resolution, "float": high_resolution}
    graph = onnx.load(str(result.int8)).graph
    halves = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    assert len(halves) == high_resolution  # one float16 weight per float Conv
    assert result.report["int8"]["decision_agreement"] >= qat_export.report["int8"]["decision_agreement"]


def test_the_int8_file_is_read_like_any_other(qat_export: ExportResult) -> None:
    assert read_metadata(qat_export.int8) == read_metadata(qat_export.fp32)  # convention, classes, threshold
    assert read_metadata(qat_export.int8).threshold is not None
    recorded = {p.key: p.value for p in onnx.load(str(qat_export.int8)).metadata_props}
    assert json.loads(recorded["fas.quantization"])["method"] == "qat"


def test_the_report_describes_the_qat_stage(qat_export: ExportResult) -> None:
    report = qat_export.report
    assert report["quantization"] == {
        "method": "qat",
        "per_channel": True,
        "float_stride": 0,
        "qat_epochs": 2,
        "qat_max_steps": 8,
        "qat_batch_size": 8,
        "qat_lr": 1e-5,
        "qat_seed": 0,
        "qat_augment": False,
    }
    assert report["qat"]["steps"] == 8 and report["qat"]["batch_size"] == 8  # 36 crops: 4 batches x 2 epochs
    assert report["int8"]["latency_ms"] > 0 and report["int8"]["file_bytes"] < report["fp32"]["file_bytes"] / 2
    text = qat_export.report_md.read_text()
    assert "| Conv/Gemm layers run in int8 / float by ONNX Runtime | - | 0 / 89 | 89 / 0 |" in text
    assert "Quantization-aware training: 8 steps of 8 training crops" in text


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"qat_epochs": 0}, "quantization.qat_epochs=0: give a positive whole number"),
        ({"qat_max_steps": 1.5}, "quantization.qat_max_steps=1.5: give a positive whole number"),
        ({"qat_batch_size": -8}, "quantization.qat_batch_size=-8: give a positive whole number"),
        ({"qat_lr": 0.0}, "quantization.qat_lr=0.0: the learning rate must be a positive number"),
        ({"per_channel": False}, "quantization.per_channel=false: quantization=qat quantizes weights per channel"),
        ({"qat_augment": "yes"}, "quantization.qat_augment='yes': give true or false"),
    ],
)
def test_bad_qat_settings_are_one_line(setting: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        QuantizationRecipe(**{"method": "qat", "float_stride": 0, **setting})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_qat_config_composes_to_a_valid_recipe(tmp_path: Path) -> None:
    cfg = compose_config("export", ["ckpt_path=model.ckpt", "quantization=qat"], tmp_path)
    recipe = instantiate(cfg.quantization)
    assert recipe.method == "qat" and recipe.float_stride == 0 and recipe.qat_max_steps == 300
    assert recipe.qat_augment is False


def test_qat_crops_are_augmented_as_the_fit_and_seeded(ranked_checkpoint: Path, tiny_data: Path, tmp_path: Path):
    """`export.py quantization=qat` augments the training crops with its `augmentation` preset, sized for the
    checkpoint (64 px here, though the preset reads a convention export.py does not name); each (crop, seed) pair
    is one augmentation, which the QAT sampler draws per epoch."""
    overrides = [f"ckpt_path={ranked_checkpoint}", *TINY_DATA, f"data.root={tiny_data}", *QAT_RUN]
    cfg = compose_config("export", [*overrides, "quantization.qat_augment=true"], tmp_path)
    info = load_backend(ranked_checkpoint).info
    transform = training_augmentation(cfg.augmentation, info)
    assert [type(t).__name__ for t in transform.transforms] == [
        "RandomResizedCrop",
        "ColorJitter",
        "Rotate",
        "HorizontalFlip",
    ]
    assert tuple(transform.transforms[0].size) == (64, 64) == (info.convention.input_size,) * 2
    datamodule = datamodule_for(cfg.data, info, cfg.get("detector"))
    datamodule.train_transform = transform
    datamodule.setup("test")
    plain, augmented = training_crops(datamodule), training_crops(datamodule, augmented=True)
    assert len(plain) == len(augmented) == 36
    first, again, other = (augmented[(0, seed)]["image"] for seed in (7, 7, 8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, plain[0]["image"]) and first.shape == plain[0]["image"].shape == (3, 64, 64)
    assert training_augmentation(None, info) is None


def test_export_cli_without_a_training_split_is_one_line(ranked_checkpoint: Path, tiny_data: Path) -> None:
    """`data.held_out` makes the one source test data only: QAT has nothing to learn on."""
    command = [
        sys.executable,
        str(REPO_ROOT / "export.py"),
        f"ckpt_path={ranked_checkpoint}",
        "data=celeba_spoof",
        f"data.root={tiny_data}",
        "data.held_out=celeba_spoof",
        "quantization=qat",
    ]
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "quantization=qat fine-tunes on the data's training split and there is none" in lines[0]


def test_training_ends_with_a_qat_stage_in_its_logs(tiny_data: Path, tmp_path: Path) -> None:
    """`python train.py quantization=qat`: the export callback fine-tunes the best checkpoint with QAT and logs
    its losses after the fit's steps (one epoch on 64x64 crops: fidelity is the tests above's business)."""
    overrides = [f"data.root={tiny_data}", "convention.input_size=64", "trainer.max_epochs=1", "seed=0"]
    qat = ["quantization=qat", "quantization.qat_max_steps=3", "quantization.qat_batch_size=8"]
    augmented = "quantization.qat_augment=true"  # the fit's augmented crops
    train(compose_train([*TINY_DATA, *overrides, *qat, augmented, "trainer.log_every_n_steps=1"], tmp_path))
    report = json.loads((tmp_path / "export" / "report.json").read_text())
    assert report["quantization"]["method"] == "qat" and report["qat"]["steps"] == 3
    assert report["quantization"]["qat_augment"] is True
    assert report["int8"]["layers"] == {"int8": 89, "float": 0}
    (metrics,) = tmp_path.glob("csv/*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    fit_steps = max(int(row["step"]) for row in rows if row.get("train/loss"))
    qat_steps = [int(row["step"]) for row in rows if row.get("qat/loss")]
    assert len(qat_steps) == 3 and min(qat_steps) > fit_steps, (fit_steps, qat_steps)
