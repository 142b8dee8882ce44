"""Face-crop dataset and the LightningDataModule shared by `data=celeba_spoof` and `data=synthetic`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fas.convention import ClassScheme, InputConvention
from fas.data.cache import CropSpec, images_path, open_cache, read_cached_split, skipped_path
from fas.data.celeba_spoof import (
    DEFAULT_PROTOCOL,
    BadSample,
    DatasetError,
    Sample,
    box_problem,
    crop_sample,
    read_split,
)
from fas.data.crop import bb224_to_pixels, normalize
from fas.data.image_check import check_images
from fas.data.synthetic import SyntheticConfig, generate
from fas.download import cache_dir
from fas.errors import ConfigError

log = logging.getLogger(__name__)

Transform = Callable[..., dict[str, Any]]


def face_item(
    crop_rgb: np.ndarray,
    labels: Sequence[int],
    convention: InputConvention,
    transform: Transform | None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Augment a crop and build the item dict; `labels` = (target, spoof type, illumination, environment).

    With a `seed` the augmentation is a pure function of (sample, seed), whatever process runs it.
    """
    if transform is not None:
        if seed is not None:
            transform.set_random_seed(seed)
        crop_rgb = transform(image=crop_rgb)["image"]
    target, spoof_type, illumination, environment = (int(v) for v in labels)
    return {
        "image": torch.from_numpy(normalize(crop_rgb[..., ::-1], convention)),
        "target": target,
        "spoof_type": spoof_type,
        "illumination": illumination,
        "environment": environment,
    }


class FaceCropDataset(Dataset):
    """Reads an image, crops the face with the convention's rule, augments, normalises.

    Items are dicts: `image` (3xSxS float), `target` (class index), and the CelebA-Spoof
    `spoof_type`, `illumination`, `environment` codes for per-condition breakdowns.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        convention: InputConvention,
        transform: Transform | None = None,
        interpolation: str | None = None,
    ):
        self.samples = list(samples)
        self.convention = convention
        self.transform = transform
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.samples)

    def load_crop(self, index: int) -> np.ndarray:
        """The face crop as HxWx3 uint8 RGB, before augmentation."""
        sample = self.samples[index]
        return crop_sample(sample.image_path, sample.box_224, self.convention, self.interpolation)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        labels = (sample.target, sample.spoof_type, sample.illumination, sample.environment)
        return face_item(self.load_crop(index), labels, self.convention, self.transform, seed)


class PackedCropDataset(Dataset):
    """Ready-made crops from a packed cache (fas/data/cache.py); items as FaceCropDataset's.

    Per-sample data lives in numpy arrays, not Python objects, so forked loader workers share it
    instead of copying it page by page; each worker maps the image array on first use.
    """

    def __init__(
        self,
        images: Path,
        samples: Sequence[Sample],
        convention: InputConvention,
        transform: Transform | None = None,
    ):
        self.images_path = Path(images)
        self.rows = np.array([s.cache_row for s in samples], np.int64)
        self.labels = np.array([(s.target, s.spoof_type, s.illumination, s.environment) for s in samples], np.int64)
        self.convention = convention
        self.transform = transform
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None}  # workers map the file themselves; never pickle the pixels

    def load_crop(self, index: int) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return np.array(self._images[self.rows[index]])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        return face_item(self.load_crop(index), self.labels[index], self.convention, self.transform, seed)


def single_threaded_opencv(worker_id: int) -> None:
    """Loader workers are the parallelism: each worker's own OpenCV thread pool (one thread per core)
    only oversubscribes the CPU. 0 turns it off; 1 can hang a forked worker whose parent had used the
    pool (experiments/gpu_train_throughput: +20-55% images/s with 12 workers on 16 cores)."""
    cv2.setNumThreads(0)


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Training order and augmentation seeds as a pure function of (seed, epoch): `(index, sample_seed)` pairs.

    Lightning calls `set_epoch` every epoch, so a run resumed from a checkpoint replays exactly the
    order and augmentations an uninterrupted run would have seen, with any number of loader workers.
    It starts at `epoch`: Lightning creates the first iterator before its first `set_epoch`, and loader
    workers prefetch from it at once, so a sampler created at epoch 0 would feed a resumed run the
    first batches (with persistent workers, the whole first epoch) in epoch 0's order.
    Under torch.distributed each rank takes every world-size-th pair of the same permutation (padded
    to equal length), which is why `trainer=ddp` sets `use_distributed_sampler: false`.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return -(-self.size // self._world()[1])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=generator)
        rank, world = self._world()
        padded = torch.cat([order, order[: len(self) * world - self.size]])
        for position in range(rank, len(padded), world):
            index = int(padded[position])
            yield index, int(seeds[index])


def split_by_subject(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out a seeded random `val_fraction` of subjects; no subject lands in both parts."""
    subjects = sorted({s.subject for s in samples})
    rng = np.random.default_rng(seed)
    n_val = max(1, round(len(subjects) * val_fraction)) if val_fraction > 0 else 0
    if n_val >= len(subjects):
        raise DatasetError(
            f"Cannot hold out {val_fraction:.0%} of {len(subjects)} subjects for validation; lower data.val_fraction."
        )
    val_subjects = set(rng.permutation(subjects)[:n_val].tolist())
    train = [s for s in samples if s.subject not in val_subjects]
    val = [s for s in samples if s.subject in val_subjects]
    return train, val


class FaceDataModule(L.LightningDataModule):
    """CelebA-Spoof-layout data: official train/test split, validation held out by subject.

    Crops come from the original images under `root`, or, with `cache` set, from a packed cache made
    by `python -m fas.data.prepare` (whose crop settings must match these). With `synthetic` set,
    `prepare_data` first generates the embedded dataset under `root`.
    """

    def __init__(
        self,
        root: str | None,
        class_scheme: ClassScheme,
        input_size: int = 80,
        crop_scale: float = 2.7,
        crop_mode: str = "shift",
        crop_interpolation: str | None = None,
        color_order: str = "rgb",
        pixel_scale: float = 1.0 / 255.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        protocol: str = DEFAULT_PROTOCOL,
        val_fraction: float = 0.15,
        split_seed: int = 0,
        seed: int = 0,
        skip_bad_samples: bool = False,
        check_images: bool = True,
        bad_samples_dir: str | None = None,
        train_transform: Transform | None = None,
        synthetic: dict[str, Any] | None = None,
        cache: str | None = None,
    ) -> None:
        super().__init__()
        if root is None and cache is None:
            raise ConfigError(
                "Neither data.root nor data.cache is set: pass data.cache=<folder made by python -m fas.data.prepare>, "
                "or data=celeba_spoof data.root=/path/to/CelebA_Spoof"
            )
        self.root = Path(root) if root is not None else None
        self.cache = Path(cache) if cache is not None else None
        self.class_scheme = class_scheme
        self.convention = InputConvention(
            input_size=input_size,
            color_order=color_order,
            pixel_scale=pixel_scale,
            mean=tuple(mean),
            std=tuple(std),
            crop_scale=crop_scale,
            crop_mode=crop_mode,
        )
        self.crop = CropSpec(input_size, crop_scale, crop_mode, crop_interpolation)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.protocol = protocol
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.seed = seed
        self.skip_bad_samples = skip_bad_samples
        self.check_images = check_images
        self.bad_samples_dir = Path(bad_samples_dir) if bad_samples_dir else None
        self.train_transform = train_transform
        self.synthetic = SyntheticConfig(**synthetic) if synthetic is not None else None
        self.splits: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        if self.cache is not None:
            open_cache(self.cache, self.crop, self.protocol)
        elif self.synthetic is not None:
            generate(self.root, self.synthetic)
        elif self.root.exists() and not self.root.is_dir():
            raise DatasetError(f"{self.root}: data.root is a file, not a folder; point it at your CelebA-Spoof copy")
        elif not self.root.is_dir():
            raise DatasetError(f"{self.root}: data.root does not exist; point it at your CelebA-Spoof copy")

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.cache is not None:
            manifest = open_cache(self.cache, self.crop, self.protocol)
            log.info("Reading crops from the cache %s (prepared from %s)", self.cache, manifest["source"])
        train_samples = self._read("train")
        test_samples = self._read("test")
        train, val = split_by_subject(train_samples, self.val_fraction, self.split_seed)
        self.splits = {
            "train": self._dataset("train", train, self.train_transform),
            "val": self._dataset("train", val),
            "test": self._dataset("test", test_samples),
        }
        log.info("Samples: %s", {name: len(ds) for name, ds in self.splits.items()})

    def _dataset(self, source_split: str, samples: list[Sample], transform: Transform | None = None) -> Dataset:
        if self.cache is not None:
            return PackedCropDataset(images_path(self.cache, source_split), samples, self.convention, transform)
        return FaceCropDataset(samples, self.convention, transform, self.crop.interpolation)

    def _read(self, split: str) -> list[Sample]:
        if self.cache is not None:
            samples = read_cached_split(self.cache, split, self.class_scheme)
            skipped = open_cache(self.cache, self.crop, self.protocol)["counts"][split]["skipped"]
            if skipped:
                log.warning(
                    "%d %s sample(s) could not be cropped when the cache was prepared; see %s",
                    skipped,
                    split,
                    skipped_path(self.cache),
                )
        else:
            samples, bad = read_split(self.root, split, self.class_scheme, self.protocol)
            if self.check_images:
                samples, undecodable = self._decodable(samples)
                bad += undecodable
            if bad:
                self._handle_bad(split, bad)
        if not samples:
            source = self.cache or self.root
            raise DatasetError(
                f"{source}: the {split} split has no usable samples for class scheme '{self.class_scheme.name}'"
            )
        targets = {s.target for s in samples}
        if len(targets) < 2:
            log.warning("%s split holds only class(es) %s of %s", split, sorted(targets), self.class_scheme.class_names)
        return samples

    def _decodable(self, samples: list[Sample]) -> tuple[list[Sample], list[BadSample]]:
        """Split samples into those whose image decodes and holds the face box, and the others with why."""
        checks = check_images([s.image_path for s in samples], self.root, cache_dir(), max(1, self.num_workers))
        kept, bad = [], []
        for sample in samples:
            check = checks[sample.image_path]
            problem = check.reason or box_problem(
                bb224_to_pixels(sample.box_224, check.width, check.height), check.width, check.height
            )
            if problem:
                bad.append(BadSample(sample.image_path, problem))
            else:
                kept.append(sample)
        return kept, bad

    def _handle_bad(self, split: str, bad: list[BadSample]) -> None:
        listing = "\n".join(f"{b.path}\t{b.reason}" for b in bad)
        where = ""
        if self.bad_samples_dir is not None:
            self.bad_samples_dir.mkdir(parents=True, exist_ok=True)
            path = self.bad_samples_dir / f"bad_samples_{split}.tsv"
            path.write_text("path\treason\n" + listing + "\n")
            where = f" (all listed in {path})"
        first = "; ".join(f"{b.path}: {b.reason}" for b in bad[:3])
        if not self.skip_bad_samples:
            raise DatasetError(
                f"{len(bad)} unusable sample(s) in the {split} split{where}, e.g. {first}. "
                "Fix or remove them, or set data.skip_bad_samples=true to train without them."
            )
        log.warning("Skipping %d unusable sample(s) in the %s split%s, e.g. %s", len(bad), split, where, first)

    def _loader(self, split: str, sampler: Sampler | None = None) -> DataLoader:
        training = split == "train"
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size if training else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=single_threaded_opencv,
            pin_memory=torch.cuda.is_available(),  # a page-locked batch reaches the GPU a third faster
            drop_last=training and len(self.splits[split]) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        # The epoch Lightning will pass to set_epoch (on a resumed run, `current_epoch` still counts the
        # restored epoch as unfinished while it is being set up).
        epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
        return self._loader("train", EpochSeededSampler(len(self.splits["train"]), self.seed, epoch))

    def val_dataloader(self) -> DataLoader:
        """The whole validation split, on every rank: exact metrics, no padding duplicates."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
