"""Validation (forward only) against training (forward, backward, step) in images/s: MiniFASNetV2SE + FT head,
channels_last as `fas.module.LivenessModule` runs it, at each evaluation batch size, on random inputs in memory
(the model's own cost, no loader).

    python experiments/cross_dataset/validation_speed.py            # 128 px and 80 px, batch 32 to 256

Every configuration is timed in turn, round after round, in one process (interleaved, so a neighbour's load
falls on all of them alike); the median round is reported. Writes validation_speed.json beside this file and
prints a table with the ratio of each validation batch size's images/s to the training step's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fas.hardware import cpu_info, describe_cpu
from fas.module import LivenessModule

HERE = Path(__file__).resolve().parent


def module(size: int) -> LivenessModule:
    model = LivenessModule(
        backbone="minifasnet_v2se",
        convention={"input_size": size, "crop_scale": 1.5, "crop_mode": "reflect"},
        class_scheme={"name": "binary", "class_names": ["live", "spoof"], "real_class_index": 0},
    )
    return model


def timed(step, images: int, rounds: int) -> list[float]:
    step()  # warm-up: oneDNN picks its kernels for the shape
    speeds = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        speeds.append(images / (time.perf_counter() - start))
    return speeds


def measure(size: int, args: argparse.Namespace) -> dict[str, float]:
    """Median images/s of a training step and of a validation pass at each batch size, interleaved."""
    model = module(size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_images = torch.rand(args.train_batch, 3, size, size)
    target = torch.randint(0, 2, (args.train_batch,))

    def train_step() -> None:
        model.train()
        features = model.backbone.features(model._layout(train_images))
        loss = torch.nn.functional.cross_entropy(model.backbone.classify(features), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def eval_pass(batch: int) -> None:
        model.eval()
        with torch.inference_mode():
            for _ in range(args.images // batch):
                model(torch.rand(batch, 3, size, size))

    configurations = {"train": (train_step, args.train_batch)}
    configurations |= {f"eval_{b}": (lambda b=b: eval_pass(b), args.images // b * b) for b in args.eval_batches}
    speeds: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(args.rounds):
        for name, (step, images) in configurations.items():
            speeds[name] += timed(step, images, 1)
    return {name: statistics.median(values) for name, values in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 80])
    parser.add_argument("--eval-batches", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=512, help="images per timed validation pass")
    args = parser.parse_args()
    torch.set_num_threads(2)
    info = cpu_info()
    print(describe_cpu(info))
    results = {"cpu": info, "threads": torch.get_num_threads(), "by_input_size": {}}
    for size in args.sizes:
        medians = measure(size, args)
        results["by_input_size"][str(size)] = {
            name: {"images_per_s": round(value, 1), "vs_train": round(value / medians["train"], 2)}
            for name, value in medians.items()
        }
        print(f"\n{size} px   images/s   x training")
        for name, value in medians.items():
            print(f"{name:>9}  {value:9.1f}   {value / medians['train']:5.2f}")
    (HERE / "validation_speed.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
