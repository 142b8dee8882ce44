"""Checkpoint -> `model.onnx` (FP32, rewritten for CPU) -> `model_int8.onnx` -> parity and cost report, and
the same for LiteRT (`model.tflite`, `model_int8.tflite`).

`write_onnx` and `write_tflite` are the exporters of the format table (`fas.formats`), the one code path
behind the end-of-training callback (`fas.export.callback`) and `python export.py ckpt_path=...`
(`export`). Models are loaded with `load_backend`, so any format it reads as a PyTorch model can be
exported. Calibration crops are a seeded sample of the training split
and parity is measured on the test split, both cropped and normalised with the model's own input
convention and without augmentation.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import onnx
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset

from fas.convention import ModelInfo
from fas.data.datamodule import FaceDataModule, datamodule_for
from fas.data.datasets import Transform
from fas.errors import FasError
from fas.export import tflite
from fas.export.onnx import export_onnx
from fas.export.parity import INT8_ACCURACY_BUDGET, LabelledImages, parity, write_report
from fas.export.quantize import QuantizationRecipe, quantize
from fas.export.rewrite import optimize_for_cpu
from fas.export.tflite import TfliteRecipe
from fas.formats import parse_formats
from fas.hydra_utils import named_convention, register_resolvers, silence_library_noise
from fas.inference.backends import TorchBackend, load_backend

if TYPE_CHECKING:
    from fas.export.qat import MetricsSink, QatModel

log = logging.getLogger(__name__)

FP32_NAME, INT8_NAME = "model.onnx", "model_int8.onnx"
CALIBRATION_SEED = 0
PARITY_IMAGES = 8192  # the most test crops the export compares its files on (`parity_sample`)


class ExportError(FasError, RuntimeError):
    """The model cannot be exported, or its export does not match it."""


@dataclass(frozen=True)
class ExportSettings:
    """What the exporters write: the ONNX INT8 recipe (`configs/quantization/`), the LiteRT one
    (`configs/tflite/`) and whether the ONNX graph is rewritten for CPU; `log_metrics` is where the QAT
    stage's per-step losses go (the training run's loggers; export.py only logs them as text). `qat_models`
    keeps each model's quantization-aware training (by model path) for the formats after the first that needs
    it, so that `model_int8.onnx` and `model_int8.tflite` come from one trained model: one per export run."""

    quantization: QuantizationRecipe = field(default_factory=QuantizationRecipe)
    tflite: TfliteRecipe = field(default_factory=TfliteRecipe)
    optimize: bool = True
    log_metrics: MetricsSink | None = field(default=None, compare=False)
    qat_models: dict[str, QatModel] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    fp32: Path
    int8: Path | None
    report_json: Path
    report_md: Path
    report: dict[str, Any]

    def summary(self) -> str:
        fp32 = self.report["fp32"]
        text = f"{self.fp32} (max |dlogit| vs PyTorch {fp32['max_abs_logit_diff_vs_pytorch']:.1e})"
        if self.int8 is not None:
            int8 = self.report["int8"]
            text += (
                f", {self.int8} ({int8['file_bytes'] / 1024:.0f} KiB, accuracy {int8['accuracy_delta_points']:+.2f}"
                f" points vs FP32, {int8['latency_ms']:.2f} ms vs {fp32['latency_ms']:.2f} ms FP32)"
            )
        return f"{text}; report {self.report_md} (export took {self.report['export_seconds']:.0f} s)"


def export_model(
    model_path: str | Path,
    output_dir: str | Path,
    recipe: QuantizationRecipe,
    datamodule: FaceDataModule,
    optimize: bool = True,
    convention: str | None = None,
    log_metrics: MetricsSink | None = None,
    qat_models: dict[str, QatModel] | None = None,
) -> ExportResult:
    """Export `model_path` to ONNX (FP32, INT8) in `output_dir` and measure the files against the PyTorch model.

    `convention` names the input convention of a weights file that records none (see `load_backend`);
    `log_metrics` receives the per-step losses of quantization-aware training (`recipe.method == "qat"`), whose
    trained model `qat_models` keeps (`ExportSettings.qat_models`).
    """
    start = time.perf_counter()
    qat = recipe.method == "qat"  # needs the training split, and says so in its own words when there is none
    backend, directory = prepare_export(model_path, output_dir, datamodule, convention, "test" if qat else "fit")
    calibration = calibration_images(datamodule, recipe.calibration_samples) if recipe.needs_calibration else None
    fp32 = write_fp32(backend, directory / FP32_NAME, optimize, calibration)
    settings: dict[str, Any] = {"optimize": optimize, "quantization": recipe.to_dict()}
    if qat:
        from fas.export.qat import write_int8  # torchao (seconds to import) only when QAT runs

        trained = qat_model(model_path, backend, datamodule, recipe, log_metrics, qat_models)
        int8 = write_int8(trained, backend.info, directory / INT8_NAME, recipe.to_dict())
        settings["qat"] = trained.figures
    else:
        int8 = quantize(fp32, directory / INT8_NAME, recipe, calibration)
    return finish_export(model_path, backend, datamodule, fp32, int8, settings, start, "report")


def training_crops(datamodule: FaceDataModule, augmented: bool = False) -> Dataset:
    """The training split, unaugmented or with its augmentation (the fit's, or `export.py`'s `augmentation`), for
    quantization-aware training; one line when there is none."""
    split = datamodule.splits["train"]
    crops = split if augmented and split.transform is not None else split.without_augmentation()
    if augmented and split.transform is None:
        log.info("quantization.qat_augment=true, but the data has no training augmentation; QAT crops unaugmented")
    if len(crops) == 0:
        raise ExportError(
            f"{datamodule.describe()}: quantization=qat fine-tunes on the data's training split and there is none "
            "(a held-out or test-only source); give data with training images, e.g. data=celeba_spoof data.root=..."
        )
    return crops


def qat_model(
    model_path: str | Path,
    backend: TorchBackend,
    datamodule: FaceDataModule,
    recipe: QuantizationRecipe,
    log_metrics: MetricsSink | None,
    trained: dict[str, QatModel] | None,
) -> QatModel:
    """The model of quantization-aware training on the data's training crops: the one in `trained` when an earlier
    format of this export run trained it, else trained now (and kept there)."""
    from fas.export.qat import QatSettings, train

    key = str(model_path)
    if trained is not None and key in trained:
        return trained[key]
    crops = training_crops(datamodule, recipe.qat_augment)
    settings = QatSettings(
        recipe.qat_epochs,
        recipe.qat_max_steps,
        recipe.qat_batch_size,
        recipe.qat_lr,
        recipe.qat_seed,
        recipe.float_stride,
    )
    augmented = getattr(crops, "transform", None) is not None
    log.info("Quantization-aware training on %d training crops%s", len(crops), ", augmented" if augmented else "")
    size = backend.info.convention.input_size
    model = train(backend.model, size, crops, settings, log_metrics, datamodule.num_workers)
    if trained is not None:
        trained[key] = model
    return model


def write_onnx(
    model_path: str | Path,
    output_dir: str | Path,
    datamodule: FaceDataModule,
    settings: ExportSettings,
    convention: str | None = None,
) -> ExportResult:
    """The `onnx` format's exporter (`fas.formats`)."""
    return export_model(
        model_path,
        output_dir,
        settings.quantization,
        datamodule,
        settings.optimize,
        convention,
        settings.log_metrics,
        settings.qat_models,
    )


def write_tflite(
    model_path: str | Path,
    output_dir: str | Path,
    datamodule: FaceDataModule,
    settings: ExportSettings,
    convention: str | None = None,
) -> ExportResult:
    """The `tflite` format's exporter (`fas.formats`)."""
    qat = settings.quantization if settings.quantization.method == "qat" else None
    return export_tflite_model(
        model_path, output_dir, settings.tflite, datamodule, convention, qat, settings.log_metrics, settings.qat_models
    )


def export_tflite_model(
    model_path: str | Path,
    output_dir: str | Path,
    recipe: TfliteRecipe,
    datamodule: FaceDataModule,
    convention: str | None = None,
    qat: QuantizationRecipe | None = None,
    log_metrics: MetricsSink | None = None,
    qat_models: dict[str, QatModel] | None = None,
) -> ExportResult:
    """Export `model_path` to LiteRT (FP32, full-integer INT8) in `output_dir`; report like the ONNX export's
    (`report_tflite.json` / `.md`). The files take NHWC input in the model's own convention.

    With a `qat` recipe the INT8 file is the model of quantization-aware training (the one in `qat_models` when
    the ONNX export trained it) with the ranges it learned, every layer in 8 bits; else `recipe` calibrates it.
    """
    start = time.perf_counter()
    backend, directory = prepare_export(model_path, output_dir, datamodule, convention, "test" if qat else "fit")
    fp32_name, int8_name = tflite.file_names(backend.info)
    fp32 = tflite.export_fp32(backend.model, backend.info, directory / fp32_name, recipe.softmax)
    int8, method = None, "full-integer int8" if recipe.int8 else "none"
    settings: dict[str, Any] = {"quantization": {"method": method, **recipe.to_dict()}}
    if recipe.int8 and qat is not None:
        from fas.export.qat import litert_form

        trained = qat_model(model_path, backend, datamodule, qat, log_metrics, qat_models)
        path = directory / int8_name
        int8 = tflite.export_quantized(litert_form(trained), backend.info, path, recipe.int8_io, recipe.softmax)
        io = {"int8_io": recipe.int8_io, "softmax": recipe.softmax}
        settings = {"quantization": {**qat.to_dict(), **io}, "qat": trained.figures}
    elif recipe.int8:
        calibration = calibration_images(datamodule, recipe.calibration_samples).transpose(0, 2, 3, 1)
        size = backend.info.convention.input_size
        float_scopes = tflite.high_resolution_scopes(backend.model, size, recipe.float_stride)
        int8 = tflite.quantize_int8(fp32, directory / int8_name, calibration, recipe.int8_io, float_scopes)
    return finish_export(model_path, backend, datamodule, fp32, int8, settings, start, "report_tflite")


def prepare_export(
    model_path: str | Path,
    output_dir: str | Path,
    datamodule: FaceDataModule,
    convention: str | None,
    stage: str = "fit",
) -> tuple[TorchBackend, Path]:
    """The PyTorch model of `model_path`, its data set up for `stage` (`fit` requires a training and a test
    split, `test` only the test split), and the output folder made."""
    backend = load_backend(model_path, convention=convention)
    if not isinstance(backend, TorchBackend):
        raise ExportError(f"{model_path}: export needs a PyTorch model (a .ckpt or .pth), not an exported file")
    check_data_fits(backend.info, datamodule, model_path)
    datamodule.prepare_data()
    datamodule.setup(stage)
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return backend, directory


def finish_export(
    model_path: str | Path,
    backend: TorchBackend,
    datamodule: FaceDataModule,
    fp32: Path,
    int8: Path | None,
    settings: dict[str, Any],
    start: float,
    report_name: str,
) -> ExportResult:
    """Measure the files on the test split (`parity_sample` of it), write the report and check the FP32 file
    matches PyTorch."""
    test = labelled_images(parity_sample(datamodule.splits["test"]))
    report = {
        "source": str(model_path),
        "backbone": backend.info.backbone,
        "input_size": backend.info.convention.input_size,
        "class_names": list(backend.info.class_scheme.class_names),
        "real_class_index": backend.info.class_scheme.real_class_index,
        "threshold": backend.info.threshold,
        **settings,
        **parity(backend, fp32, int8, test, backend.info.class_scheme.real_class_index),
        "test_split_images": len(datamodule.splits["test"]),
    }
    report["export_seconds"] = round(time.perf_counter() - start, 1)
    report_json, report_md = write_report(report, fp32.parent, report_name)
    result = ExportResult(fp32.parent, fp32, int8, report_json, report_md, report)
    check_parity(result)
    return result


def write_fp32(backend: TorchBackend, path: Path, optimize: bool, calibration: np.ndarray | None) -> Path:
    """The clean export, rewritten for CPU (and range-equalized for INT8 when there are calibration crops)."""
    with tempfile.TemporaryDirectory() as tmp:
        proto = onnx.load(str(export_onnx(backend.model, backend.info, Path(tmp) / FP32_NAME)))
    if optimize:
        proto = optimize_for_cpu(proto, calibration)
    onnx.save_model(proto, path)
    return path


def check_data_fits(info: ModelInfo, datamodule: FaceDataModule, model_path: str | Path) -> None:
    if datamodule.convention != info.convention or datamodule.class_scheme != info.class_scheme:
        raise ExportError(
            f"{model_path}: the data module crops with {datamodule.convention} and scheme "
            f"'{datamodule.class_scheme.name}', but the model expects {info.convention} and "
            f"'{info.class_scheme.name}'; build the data module with `fas.data.datamodule.datamodule_for`"
        )


def check_parity(result: ExportResult) -> None:
    fp32, int8 = result.report["fp32"], result.report.get("int8")
    onnx_file = result.fp32.suffix == ".onnx"
    if fp32["max_abs_logit_diff_vs_pytorch"] > fp32["tolerance"]:
        fix = "export with optimize=false (callbacks.export.optimize=false in training) and " if onnx_file else ""
        raise ExportError(
            f"{result.fp32} differs from the PyTorch model by {fp32['max_abs_logit_diff_vs_pytorch']:.2e} "
            f"(tolerance {fp32['tolerance']:.0e}); {fix}report the model"
        )
    if int8 is not None and abs(int8["accuracy_delta_points"]) > INT8_ACCURACY_BUDGET:
        fix = (
            "keep more layers float (quantization.float_stride=8), try another quantization.calibration_method "
            "or more calibration_samples, or use quantization=none"
            if onnx_file
            else "try more tflite.calibration_samples, or ship the FP32 file"
        )
        if result.report["quantization"].get("method") == "qat":
            fix = "train longer (quantization.qat_epochs, qat_max_steps), or keep layers float with quantization=static"
        log.warning(
            "%s changes test accuracy by %+.2f points against FP32 (budget %.1f; %.1f%% of live/spoof decisions "
            "agree); %s",
            result.int8.name,
            int8["accuracy_delta_points"],
            INT8_ACCURACY_BUDGET,
            100 * int8["decision_agreement"],
            fix,
        )


def parity_sample(test: Dataset) -> Dataset:
    """The test crops the export compares PyTorch, FP32 and INT8 on: all of them, or a seeded `PARITY_IMAGES` of a
    larger split. The comparison holds its crops in memory as float32 (CelebA-Spoof's 67,000 test crops at 128 px
    would take 13 GB); `train.py`'s report scores the INT8 file on the whole split."""
    if len(test) <= PARITY_IMAGES:
        return test
    rng = np.random.default_rng(CALIBRATION_SEED)
    return Subset(test, sorted(rng.choice(len(test), size=PARITY_IMAGES, replace=False).tolist()))


def calibration_images(datamodule: FaceDataModule, count: int) -> np.ndarray:
    """A seeded sample of `count` training crops through the model's preprocessing, unaugmented."""
    plain = datamodule.splits["train"].without_augmentation()  # individual files or the packed cache alike
    rng = np.random.default_rng(CALIBRATION_SEED)
    chosen = rng.choice(len(plain), size=min(count, len(plain)), replace=False)
    return labelled_images(Subset(plain, sorted(chosen.tolist()))).images


def labelled_images(dataset: Dataset) -> LabelledImages:
    images, targets = [], []
    for batch in DataLoader(dataset, batch_size=64, shuffle=False, num_workers=0):
        images.append(batch["image"].numpy())
        targets.append(torch.as_tensor(batch["target"]).numpy())
    return LabelledImages(np.concatenate(images).astype(np.float32), np.concatenate(targets))


def export(cfg: DictConfig) -> ExportResult:
    """`python export.py ckpt_path=... [format=onnx|tflite|[onnx,tflite]]`: the datamodule follows the
    checkpoint's convention. Returns the result of the last format written."""
    silence_library_noise()
    register_resolvers()  # the augmentation presets' `${input_size:...}`
    formats = parse_formats(cfg.get("format", "onnx"))
    convention = named_convention(cfg)
    info = load_backend(cfg.ckpt_path, convention=convention).info
    output_dir = Path(cfg.paths.output_dir) / "export"
    datamodule = datamodule_for(cfg.data, info, cfg.get("detector"))
    settings = ExportSettings(
        hydra.utils.instantiate(cfg.quantization), hydra.utils.instantiate(cfg.tflite), cfg.optimize
    )
    if settings.quantization.method == "qat" and settings.quantization.qat_augment:
        datamodule.train_transform = training_augmentation(cfg.get("augmentation"), info)
    for model_format in formats:
        result = model_format.export_function()(cfg.ckpt_path, output_dir, datamodule, settings, convention)
        log.info("Exported %s", result.summary())
    return result


def training_augmentation(augmentation: DictConfig | None, info: ModelInfo) -> Transform | None:
    """`export.py`'s `augmentation` preset (what QAT trains on) at the checkpoint's input size: the presets size
    their crops with `${input_size:...}` of the config's convention, and `export.py` takes it from the checkpoint."""
    if augmentation is None:
        return None
    convention = {"_target_": "fas.convention.InputConvention", **info.convention.to_dict()}
    scoped = OmegaConf.create({"convention": convention, "augmentation": OmegaConf.to_container(augmentation)})
    return hydra.utils.instantiate(scoped.augmentation.train)
