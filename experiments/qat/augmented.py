"""Does QAT agree with FP32 more when it distils on augmented crops? (issue 22, seventh session)

The fourth session found that more QAT steps fit the 734 unaugmented training crops of the embedded data better
and the held-out crops no better: the stage overfits. Distillation needs no labels, and the FP32 teacher scores
whatever crop the student sees, so the training augmentation (`augmentation=silentface`, the fit's own) gives a
new set of crops every epoch. Each checkpoint is trained three ways with `fas.export.qat.train`:

- `plain`: the recipe (`configs/quantization/qat.yaml`), unaugmented crops;
- `augmented`: the same steps on augmented crops;
- `augmented, long`: 10x the epochs (at most `LONG_STEPS` steps) and 10x the learning rate on augmented crops;

and each trained model is written as `quantization=qat` writes it (`fas.export.qat.write_int8`) and run by ONNX
Runtime on the test crops (subjects held out from training and QAT). Printed: how many test crops the FP32 model
puts near its decision boundary (the crops any rounding can flip), decisions that differ from FP32 (argmax, as the
export report counts them) in the simulation and in ORT, and the mean squared logit difference.

    python experiments/qat/augmented.py <fas .ckpt> [<fas .ckpt> ...] -- [export.py overrides, e.g. paths.data_dir=...]
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from observers import crops
from sensitivity import CONFIGS, difference, start

from fas.export import qat
from fas.hydra_utils import register_resolvers
from fas.inference.backends import load_backend

LONG_STEPS = 440


def augmentation(input_size: int):
    """The default training augmentation (`configs/augmentation/silentface.yaml`) at `input_size`."""
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=[f"convention.input_size={input_size}"])
    return instantiate(cfg.augmentation.train)


def ort_logits(model: qat.QatModel, checkpoint: str, crops: torch.Tensor) -> np.ndarray:
    """The test crops' logits as ONNX Runtime computes them from the file `quantization=qat` writes."""
    info = load_backend(checkpoint).info
    with tempfile.TemporaryDirectory() as tmp:
        path = qat.write_int8(model, info, Path(tmp) / "model_int8.onnx", {})
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: crops.numpy()})[0]


def main() -> None:
    checkpoints, overrides = start(sys.argv[1:])
    for checkpoint in checkpoints:
        data = crops(checkpoint, overrides)
        augmented = data.training.without_augmentation()
        augmented.transform = augmentation(data.input_size)
        long = dataclasses.replace(
            data.settings, epochs=10 * data.settings.epochs, max_steps=LONG_STEPS, lr=10 * data.settings.lr
        )
        with torch.no_grad():
            reference = data.teacher(data.test)
        margin = (reference[:, 0] - reference[:, 1]).abs()
        near = ", ".join(f"{int((margin < bound).sum())} within {bound}" for bound in (0.1, 0.2, 0.5))
        print(f"{checkpoint}: {len(data.training)} training, {len(data.test)} test crops", flush=True)
        print(f"  FP32 logit margins |live - spoof| on the test crops: {near}", flush=True)
        for label, training, settings in (
            ("plain", data.training, data.settings),
            ("augmented", augmented, data.settings),
            ("augmented, long", augmented, long),
        ):
            model = qat.train(data.teacher, data.input_size, training, settings)
            mse, flips = difference(model.prepared, data.test, reference)
            logits = ort_logits(model, checkpoint, data.test)
            ort_flips = int((logits.argmax(1) != reference.numpy().argmax(1)).sum())
            ort_mse = float(((logits - reference.numpy()) ** 2).mean())
            print(
                f"  {label} ({model.figures['steps']} steps, lr {settings.lr:g}, {model.figures['seconds']} s): "
                f"simulated {flips} flips (mse {mse:.4f}); ORT {ort_flips} flips of {len(reference)} "
                f"({100 * (1 - ort_flips / len(reference)):.2f}% agree, mse {ort_mse:.4f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
