"""Loader and train-step throughput at 128 px: individual images vs the packed cache, our pipeline vs a plain loop.

    python experiments/loader_throughput/benchmark.py --clock wall   # 2 threads, wall time (a quiet machine)
    python experiments/loader_throughput/benchmark.py --clock cpu    # 1 thread, CPU time (a shared machine)

Each run updates its clock's part of results.json and rewrites results.md. On a machine shared with
other jobs, wall time measures the neighbours as much as the code; the CPU time of one thread
(`time.process_time`, no thread-pool spinning) is the cost of the work itself and keeps the ratios.

Data: the embedded synthetic dataset, its images re-saved at `--image-size` (default 960x720, JPEG q90),
about the size of a CelebA-Spoof photo (77 GB over 625k images is ~120 KB a file), then prepared into a
packed cache with `fas.data.prepare` (128 px, scale 2.7, shift). Both paths read from a warm page cache,
which favours individual files: on the real 77 GB they also wait for the disk.

1. Loader: images/s of one process (= per loader worker): read, crop, `silentface` augmentation,
   normalise, collate into batches of 64; and with no augmentation.
2. Train step: MiniFASNetV2SE + FT head at 128 px, batch 64, SGD, loader in the training process
   (num_workers=0), so a step costs loading plus compute:
   - plain loop as Silent-Face trains: individual images, the FT target computed per sample in numpy
     inside the dataset (its `generate_FT`, from the crop before augmentation), NCHW float32, a bare
     PyTorch loop;
   - ours: LivenessModule under the Lightning Trainer, FT target batched with torch.fft from the
     augmented batch, channels_last; from individual images and from the packed cache; fp32 and
     bf16-mixed autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fas.convention import ClassScheme, InputConvention
from fas.data.cache import read_cached_split
from fas.data.datasets import FaceCropDataset, PackedCropDataset, face_item
from fas.data.prepare import prepare
from fas.data.sample import with_targets
from fas.data.sources.celeba_spoof import read_split
from fas.data.synthetic import SyntheticConfig, generate
from fas.losses import fourier_target, to_gray_255
from fas.models import FTHead, build_backbone
from fas.module import LivenessModule

CLOCK = time.perf_counter  # time.process_time with --clock cpu
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SIZE, BATCH = 128, 64
BINARY_ALL = ClassScheme("binary_all", ("live", "spoof"), 0, {t: int(t != 0) for t in range(11)})
CONVENTION = InputConvention(input_size=SIZE, crop_scale=2.7, crop_mode="shift")


def make_data(work: Path, images: int, image_size: tuple[int, int]) -> tuple[Path, Path]:
    """A synthetic CelebA-Spoof tree re-saved at `image_size`, and its packed cache."""
    subjects = max(2, images // 64)
    root = work / f"tree_{images}_{image_size[0]}x{image_size[1]}"
    marker = root / "resized.json"
    if not marker.is_file():
        generate(root, SyntheticConfig(train_subjects=subjects, test_subjects=1, images_per_subject=64), workers=2)
        for path in sorted((root / "Data").rglob("*.jpg")):
            image = cv2.resize(cv2.imread(str(path)), image_size, interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        marker.write_text(json.dumps({"size": image_size}))
    return root, fresh_cache(root, work / f"cache_{images}_{image_size[0]}x{image_size[1]}")


def fresh_cache(root: Path, cache: Path) -> Path:
    """Prepare `root` into a new cache (the tree may have been regenerated since the last run)."""
    shutil.rmtree(cache, ignore_errors=True)
    prepare(
        root,
        cache,
        InputConvention(input_size=SIZE, crop_scale=2.7, crop_mode="shift"),
        splits=("train",),
        workers=2,
        progress=False,
    )
    return cache


def silentface_augmentation() -> Any:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"convention.input_size={SIZE}"])
    return instantiate(cfg.augmentation.train)


def images_per_second(loader: DataLoader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # warm-up: first reads, memory map, allocator
    start = CLOCK()
    seen = 0
    for _ in range(batches):
        seen += len(next(iterator)["image"])
    return seen / (CLOCK() - start)


def loader_throughput(root: Path, cache: Path, batches: int, repeats: int) -> dict[str, dict[str, float]]:
    """In this process with one torch thread: what a DataLoader worker runs (PyTorch gives each one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    file_samples = with_targets(read_split(root, "train")[0], BINARY_ALL, "train")
    packed_samples = with_targets(read_cached_split(cache, "train", "celeba_spoof"), BINARY_ALL, "train")
    loaders = {}
    for name, augmentation in (("silentface", silentface_augmentation()), ("none", None)):
        loaders[f"files, {name}"] = FaceCropDataset(file_samples, CONVENTION, augmentation)
        loaders[f"packed, {name}"] = PackedCropDataset(cache, packed_samples, CONVENTION, augmentation)
    measured: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, dataset in loaders.items():
            loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)
            measured[name].append(images_per_second(loader, batches))
            print(f"loader {name:20s} {measured[name][-1]:7.1f} img/s", flush=True)
    torch.set_num_threads(threads)
    return summarise(measured)


def summarise(measured: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median and best of the rounds: on a shared machine the best is the nearest to a quiet one."""
    return {name: {"median": float(np.median(v)), "best": float(np.max(v))} for name, v in measured.items()}


# --------------------------------------------------------------------------- the plain loop (original style)


def numpy_ft_target(crop_rgb: np.ndarray, size: int) -> np.ndarray:
    """Silent-Face's `generate_FT` and resize, per sample: numpy FFT, min and max found row by row in Python."""
    gray = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY)
    spectrum = np.log(np.abs(np.fft.fftshift(np.fft.fft2(gray))) + 1)
    high, low = -1.0, 100000.0
    for row in spectrum:
        high, low = max(high, max(row)), min(low, min(row))
    return cv2.resize(((spectrum - low + 1) / (high - low + 1)).astype(np.float32), (size, size))


class PlainFTDataset(Dataset):
    """Individual images, FT target per sample in numpy from the un-augmented crop, as Silent-Face's dataset."""

    def __init__(self, files: FaceCropDataset, ft_size: int):
        self.files = files
        self.ft_size = ft_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.files.samples[index]
        crop = self.files.load_crop(index)
        ft = torch.from_numpy(numpy_ft_target(crop, self.ft_size))[None]
        labels = (sample.target, sample.spoof_type, sample.illumination, sample.environment)
        return {**face_item(crop, labels, CONVENTION, self.files.transform), "ft": ft}


def plain_loop(dataset: Dataset, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    backbone = build_backbone("minifasnet_v2se", SIZE, 2)
    head = FTHead(backbone.feature_channels)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    cross_entropy, mse = nn.CrossEntropyLoss(), nn.MSELoss()
    backbone.train()
    head.train()
    loader = iter(DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True))
    for step in range(warmup + steps):
        if step == warmup:
            start = CLOCK()
        batch = next(loader)
        features = backbone.features(batch["image"])
        logits, ft_map = backbone.classify(features), head(features)
        loss = 0.5 * cross_entropy(logits, batch["target"]) + 0.5 * mse(ft_map, batch["ft"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * BATCH / (CLOCK() - start)


# --------------------------------------------------------------------------- our pipeline (Lightning)


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = CLOCK()
        self.end = CLOCK()


class FixedData(L.LightningDataModule):
    def __init__(self, dataset: Dataset) -> None:
        super().__init__()
        self.dataset = dataset

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True)


def our_pipeline(dataset: Dataset, precision: str, warmup: int, steps: int, work: Path) -> float:
    torch.manual_seed(0)
    model = LivenessModule(
        "minifasnet_v2se",
        CONVENTION.to_dict(),
        BINARY_ALL.to_dict(),
        ft_weight=0.5,
        channels_last=True,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
    )
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        default_root_dir=work,
    )
    trainer.fit(model, datamodule=FixedData(dataset))
    return steps * BATCH / (timer.end - timer.start)


def train_throughput(
    root: Path, cache: Path, warmup: int, steps: int, repeats: int, work: Path
) -> dict[str, dict[str, float]]:
    """`repeats` rounds; each runs every pipeline once, so changes of load hit them alike."""
    augmentation = silentface_augmentation()
    file_samples = with_targets(read_split(root, "train")[0], BINARY_ALL, "train")
    files = FaceCropDataset(file_samples, CONVENTION, augmentation)
    packed = PackedCropDataset(
        cache,
        with_targets(read_cached_split(cache, "train", "celeba_spoof"), BINARY_ALL, "train"),
        CONVENTION,
        augmentation,
    )
    ft_size = 2 * ((SIZE + 15) // 16)
    runs = {
        "plain loop: files, numpy FT per sample, NCHW fp32": lambda: plain_loop(
            PlainFTDataset(files, ft_size), warmup, steps
        ),
        "ours: files, batched FT, channels_last fp32": lambda: our_pipeline(files, "32-true", warmup, steps, work),
        "ours: packed, batched FT, channels_last fp32": lambda: our_pipeline(packed, "32-true", warmup, steps, work),
        "ours: packed, batched FT, channels_last bf16-mixed": lambda: our_pipeline(
            packed, "bf16-mixed", warmup, steps, work
        ),
    }
    measured: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            measured[name].append(run())
            print(f"train {name:55s} {measured[name][-1]:6.1f} img/s", flush=True)
    return summarise(measured)


def ft_target_cost(root: Path, repeats: int) -> dict[str, float]:
    """Milliseconds per image of the FT target (best of `repeats`, after a warm-up): Silent-Face's
    per-sample numpy vs our batched torch.fft."""
    samples = with_targets(read_split(root, "train")[0], BINARY_ALL, "train")
    crops = [FaceCropDataset(samples, CONVENTION).load_crop(i) for i in range(BATCH)]
    batch = torch.stack([face_item(c, (0, 0, 0, 0), CONVENTION, None)["image"] for c in crops])

    def per_sample() -> None:
        for crop in crops:
            numpy_ft_target(crop, 16)

    def batched() -> None:
        fourier_target(to_gray_255(batch, CONVENTION), (16, 16))

    costs = {}
    variants = (("per-sample numpy (Silent-Face generate_FT)", per_sample), ("batched torch.fft (ours)", batched))
    for name, run in variants:
        run()
        times = []
        for _ in range(repeats):
            start = CLOCK()
            run()
            times.append(CLOCK() - start)
        costs[name] = min(times) / BATCH * 1e3
        print(f"FT target {name}: {costs[name]:.2f} ms/img", flush=True)
    return costs


def write_results(results: dict[str, Any]) -> None:
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Loader and train-step throughput at 128 px",
        "",
        "Median and best of the rounds; each round runs every variant once, in turn. Wall-clock figures",
        "depend on what else runs: each run records the load average it started under.",
        "",
    ]
    for clock, run in results.items():
        lines += [f"## Clock: {clock}", "", f"`{run['command']}` on {run['machine']}.", ""]
        lines += data_sections(run["data"], unit="img/s" if clock == "wall" else "img per CPU-s")
    (HERE / "results.md").write_text("\n".join(lines))


def data_sections(sections: list[dict[str, Any]], unit: str) -> list[str]:
    lines = []
    for data in sections:
        loader, train = data["loader_img_per_s"], data["train_img_per_s"]
        lines += [
            f"### Images {data['image_size']} (mean JPEG {data['mean_jpeg_kb']:.0f} KB), {data['images']} images",
            "",
            f"| loader, one process (= per worker) | {unit} median | {unit} best |",
            "|---|---|---|",
            *(f"| {name} | {v['median']:.1f} | {v['best']:.1f} |" for name, v in loader.items()),
            "",
            "Packed / individual files, silentface augmentation: **{median:.1f}x** (median), {best:.1f}x (best)".format(
                **data["packed_speedup"]
            ),
            "",
        ]
        if train:
            base = next(iter(train.values()))
            lines += [
                f"| train step, batch 64, loader in-process | {unit} median | vs plain | {unit} best | vs plain |",
                "|---|---|---|---|---|",
                *(
                    f"| {name} | {v['median']:.1f} | {v['median'] / base['median']:.2f}x "
                    f"| {v['best']:.1f} | {v['best'] / base['best']:.2f}x |"
                    for name, v in train.items()
                ),
                "",
                "| FT target | ms / image |",
                "|---|---|",
                *(f"| {name} | {value:.2f} |" for name, value in data["ft_target_ms_per_image"].items()),
                "",
            ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="training images to generate")
    parser.add_argument("--image-size", default="960x720,native", help="comma-separated WxH, or 'native'")
    parser.add_argument("--loader-batches", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--work", type=Path, default=REPO / "data" / "loader_throughput")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    threads = 2 if args.clock == "wall" else 1
    torch.set_num_threads(threads)
    arguments = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "work")
    run: dict[str, Any] = {
        "command": f"python experiments/loader_throughput/benchmark.py {arguments}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{threads} training thread(s), load average {os.getloadavg()[0]:.1f} at the start",
        "data": [],
    }
    results_file = HERE / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results = {clock: value for clock, value in results.items() if clock in ("wall", "cpu")}
    results[args.clock] = run
    for index, size_text in enumerate(args.image_size.split(",")):
        size = None if size_text == "native" else tuple(int(v) for v in size_text.split("x"))
        root, cache = make_data(args.work, args.images, size) if size else make_native(args.work, args.images)
        jpegs = list((root / "Data").rglob("*.jpg"))
        print(f"data {size_text}: {len(jpegs)} images, mean {np.mean([p.stat().st_size for p in jpegs]) / 1e3:.0f} KB")
        loader = loader_throughput(root, cache, args.loader_batches, args.repeats)
        first = index == 0  # the train step and FT target are timed on the first (realistic) image size
        train = train_throughput(root, cache, args.warmup, args.steps, args.repeats, args.work) if first else {}
        ft_ms = ft_target_cost(root, args.repeats) if first else {}
        run["data"].append(
            {
                "image_size": size_text,
                "images": len(jpegs),
                "mean_jpeg_kb": float(np.mean([p.stat().st_size for p in jpegs]) / 1e3),
                "loader_img_per_s": loader,
                "packed_speedup": {
                    stat: loader["packed, silentface"][stat] / loader["files, silentface"][stat]
                    for stat in ("median", "best")
                },
                "train_img_per_s": train,
                "ft_target_ms_per_image": ft_ms,
            }
        )
        write_results(results)


def make_native(work: Path, images: int) -> tuple[Path, Path]:
    """The synthetic tree at its own size (about 250x300 px): a lower bound for the packed speed-up."""
    root = work / f"tree_{images}_native"
    generate(root, SyntheticConfig(train_subjects=max(2, images // 64), test_subjects=1, images_per_subject=64))
    return root, fresh_cache(root, work / f"cache_{images}_native")


if __name__ == "__main__":
    main()
