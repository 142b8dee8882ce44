"""How the activation ranges are chosen, and how far that alone moves the every-layer-int8 model from FP32
(issue 22: `sensitivity.py` found the activations' rounding, not the weights', behind the missing agreement).

Each checkpoint is prepared as `quantization=qat` prepares it (`fas.export.qat.prepare`), its activation ranges
observed on 256 unaugmented training crops with one rule at a time; the test crops' logits are compared with
the FP32 model's (mean squared difference, decisions that flip) as calibrated, and again after the recipe's QAT
stage (`fas.export.qat.finetune` with `configs/quantization/qat.yaml`'s settings) with those ranges frozen:

- `moving average`: what `quantization=qat` observes while it trains (`fas.export.qat.ACTIVATION`: each
  batch's min/max, averaged with factor 0.01, the first batch's taken whole);
- `min/max`: the extremes over all calibration crops;
- `histogram`: the range that minimises the squared rounding + clipping error of the observed histogram
  (`HistogramObserver`, what PyTorch's x86 post-training recipes calibrate with).

    python experiments/qat/observers.py <fas .ckpt> [<fas .ckpt> ...] -- [export.py overrides, e.g. paths.data_dir=...]
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass

import torch
from sensitivity import CALIBRATION_CROPS, calibrate, describe, difference, export_config, images, start
from torch.utils.data import Dataset
from torchao.quantization.pt2e import FakeQuantize, HistogramObserver, MinMaxObserver
from torchao.quantization.pt2e.quantizer import QuantizationSpec

from fas.export import qat
from fas.export.pipeline import datamodule_for, prepare_export, training_crops
from fas.inference.backends import load_backend

TEST_CROPS = 10_000  # every test crop of the embedded data (301)


def activation_spec(observer: type) -> QuantizationSpec:
    """fas's activation spec with another range rule (the one object every activation shares)."""
    return QuantizationSpec(
        dtype=torch.uint8,
        quant_min=0,
        quant_max=255,
        qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=observer, eps=qat.EPS),
    )


RULES = {
    "moving average (fas)": qat.ACTIVATION,
    "min/max": activation_spec(MinMaxObserver),
    "histogram": activation_spec(HistogramObserver),
}


@dataclass
class Crops:
    """A checkpoint's FP32 model and the crops `export.py quantization=qat` would use."""

    teacher: torch.nn.Module
    input_size: int
    training: Dataset  # what the QAT stage learns on
    calibration: torch.Tensor
    test: torch.Tensor
    settings: qat.QatSettings


def crops(checkpoint: str, overrides: list[str]) -> Crops:
    """The model and crops of `checkpoint` as `export.py quantization=qat <overrides>` reads them."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = export_config(checkpoint, overrides, tmp)
        info = load_backend(checkpoint).info
        datamodule = datamodule_for(cfg.data, info, cfg.get("detector"))
        backend, _ = prepare_export(checkpoint, tmp, datamodule, None, "test")
        training = training_crops(datamodule)
        test = images(datamodule.splits["test"].without_augmentation(), TEST_CROPS)
    recipe = cfg.quantization
    settings = qat.QatSettings(
        recipe.qat_epochs, recipe.qat_max_steps, recipe.qat_batch_size, recipe.qat_lr, recipe.qat_seed
    )
    calibration = images(training, CALIBRATION_CROPS)
    return Crops(backend.model.eval(), info.convention.input_size, training, calibration, test, settings)


def calibrated(teacher: torch.nn.Module, input_size: int, calibration: torch.Tensor, spec: QuantizationSpec):
    """The QAT model of `teacher` with activation spec `spec`, its ranges observed on `calibration` and frozen."""
    qat.ACTIVATION = spec
    return calibrate(qat.prepare(teacher, input_size), calibration)


def main() -> None:
    checkpoints, overrides = start(sys.argv[1:])
    fas_rule = qat.ACTIVATION
    for checkpoint in checkpoints:
        data = crops(checkpoint, overrides)
        with torch.no_grad():
            reference = data.teacher(data.test)
        print(f"{checkpoint}: {len(data.calibration)} calibration, {len(data.test)} test crops", flush=True)
        for label, spec in RULES.items():
            model = calibrated(data.teacher, data.input_size, data.calibration, spec)
            print(f"  {label}, calibrated: {describe(*difference(model, data.test, reference))}", flush=True)
            figures = qat.finetune(model, data.teacher, data.training, data.settings)
            trained = describe(*difference(model, data.test, reference))
            print(f"  {label}, after {figures['steps']} QAT steps: {trained}", flush=True)
        qat.ACTIVATION = fas_rule
    print("(`quantization=qat` itself keeps observing the moving average while it trains; here every rule's")
    print(" ranges are frozen after calibration, so that the rules differ in the ranges alone)")


if __name__ == "__main__":
    main()
