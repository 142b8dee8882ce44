"""Which 8-bit roundings of the every-layer-int8 scheme move a model's logits (issue 22: why agreement with
FP32 stops short of 99.5%).

The checkpoint is prepared for quantization-aware training exactly as `quantization=qat` prepares it
(`fas.export.qat.prepare`: export form, BatchNorm folded, fake quantization of every weight and activation),
its activation ranges observed on 256 unaugmented training crops, and nothing trained. Then the test crops'
logits are compared with the FP32 model's (mean squared difference, decisions that flip) with every
fake-quantizer on, with only the weights' on, with only the activations' on, and with each quantizer turned
off alone (the ten that matter most are printed).

    python experiments/qat/sensitivity.py <fas .ckpt> [hydra overrides of export.py, e.g. paths.data_dir=...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch.utils.data import Dataset, Subset
from torchao.quantization.pt2e import disable_observer

from fas.export.pipeline import datamodule_for, labelled_images, prepare_export, training_crops
from fas.export.qat import prepare
from fas.hardware import describe_cpu
from fas.hydra_utils import silence_library_noise
from fas.inference.backends import load_backend

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")
CALIBRATION_CROPS, TEST_CROPS = 256, 96


def images(dataset: Dataset, count: int) -> torch.Tensor:
    """The first `count` crops of `dataset` (only those are read)."""
    return torch.from_numpy(labelled_images(Subset(dataset, range(min(count, len(dataset))))).images)


def difference(model: torch.nn.Module, crops: torch.Tensor, reference: torch.Tensor) -> tuple[float, int]:
    """(mean squared logit difference, decisions that differ) of `model` against the FP32 logits."""
    with torch.no_grad():
        logits = model(crops)
    flips = int((logits.argmax(1) != reference.argmax(1)).sum())
    return float(((logits - reference) ** 2).mean()), flips


def describe(mse: float, flips: int) -> str:
    return f"mse {mse:.4f}, {flips} decisions flip"


def calibrate(model: torch.nn.Module, calibration: torch.Tensor) -> torch.nn.Module:
    """`model` (a prepared QAT model) with its ranges observed on `calibration`, 32 crops a batch, then frozen."""
    with torch.no_grad():
        for start in range(0, len(calibration), 32):
            model(calibration[start : start + 32])
    model.apply(disable_observer)
    return model


def start(argv: list[str]) -> tuple[list[str], list[str]]:
    """The study scripts' start: one PyTorch thread, the CPU printed, `<ckpt> ... -- <overrides>` split."""
    silence_library_noise()
    torch.set_num_threads(1)
    split = argv.index("--") if "--" in argv else len(argv)
    print("CPU:", describe_cpu(), flush=True)
    return argv[:split], argv[split + 1 :]


def export_config(checkpoint: str, overrides: list[str], output_dir: str) -> DictConfig:
    """`export.py ckpt_path=<checkpoint> quantization=qat <overrides>`'s config, its run folder `output_dir`."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(
            "export",
            overrides=[f"ckpt_path={checkpoint}", "quantization=qat", f"hydra.run.dir={output_dir}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    return cfg


def main() -> None:
    silence_library_noise()
    torch.set_num_threads(1)
    checkpoint, overrides = sys.argv[1], sys.argv[2:]
    print("CPU:", describe_cpu(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = export_config(checkpoint, overrides, tmp)
        info = load_backend(checkpoint).info
        datamodule = datamodule_for(cfg.data, info, cfg.get("detector"))
        backend, _ = prepare_export(checkpoint, tmp, datamodule, None, "test")
        teacher = backend.model.eval()
        calibration = images(training_crops(datamodule), CALIBRATION_CROPS)
        test = images(datamodule.splits["test"].without_augmentation(), TEST_CROPS)
    with torch.no_grad():
        reference = teacher(test)
    model = calibrate(prepare(teacher, info.convention.input_size), calibration)
    quantizers = {n: m for n, m in model.named_modules() if hasattr(m, "disable_fake_quant")}
    weights = {n for n, m in quantizers.items() if m.qscheme == torch.per_channel_symmetric}
    print(f"{len(test)} test crops, {len(quantizers) - len(weights)} activation and {len(weights)} weight quantizers")
    print("every quantizer on:", describe(*difference(model, test, reference)))
    for label, off in (("weights only", set(quantizers) - weights), ("activations only", weights)):
        for name in off:
            quantizers[name].disable_fake_quant()
        print(f"{label} int8:", describe(*difference(model, test, reference)))
        for name in off:
            quantizers[name].enable_fake_quant()
    single = []
    for name, quantizer in quantizers.items():
        quantizer.disable_fake_quant()
        single.append((*difference(model, test, reference), name))
        quantizer.enable_fake_quant()
    print("one quantizer off (the ten that matter most):")
    for mse, flips, name in sorted(single)[:10]:
        print(f"  {name} ({'weight' if name in weights else 'activation'}):", describe(mse, flips))


if __name__ == "__main__":
    main()
