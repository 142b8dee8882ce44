"""The torch side of the data: face-crop datasets (from image files or a packed cache), one split over
every source, and the epoch-seeded sampler that makes training order and augmentation a pure function of
(seed, epoch). `fas.data.datamodule.FaceDataModule` builds them from sample records.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from fas.convention import InputConvention
from fas.data.cache import images_path
from fas.data.crop import normalize
from fas.data.loading import load_crop
from fas.data.sample import Sample

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


def labels_of(sample: Sample) -> tuple[int, int, int, int]:
    return (sample.target, sample.spoof_type, sample.illumination, sample.environment)


class FaceCropDataset(Dataset):
    """Reads an image (or video frame), crops the face with the convention's rule, augments, normalises.

    Items are dicts: `image` (3xSxS float), `target` (class index), and the CelebA-Spoof
    `spoof_type`, `illumination`, `environment` codes for per-condition breakdowns.
    """

    def __init__(self, samples: Sequence[Sample], convention: InputConvention, transform: Transform | None = None):
        self.samples = list(samples)
        self.convention = convention
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def keys(self) -> list[str]:
        """Each item's `Sample.key`, in order."""
        return [sample.key for sample in self.samples]

    def load_crop(self, index: int) -> np.ndarray:
        """The face crop as HxWx3 uint8 RGB, before augmentation."""
        return load_crop(self.samples[index], self.convention)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        return face_item(self.load_crop(index), labels_of(self.samples[index]), self.convention, self.transform, seed)


class PackedCropDataset(Dataset):
    """Ready-made crops from a packed cache (fas/data/cache.py); items as FaceCropDataset's.

    Per-sample data lives in numpy arrays, not Python objects, so forked loader workers share it
    instead of copying it page by page; each worker maps the image arrays on first use.
    """

    def __init__(self, cache: Path, samples: Sequence[Sample], convention: InputConvention, transform=None):
        self.arrays = sorted({s.split or "all" for s in samples})
        self.paths = [images_path(cache, split) for split in self.arrays]
        self.array_of = np.array([self.arrays.index(s.split or "all") for s in samples], np.int64)
        self.rows = np.array([s.cache_row for s in samples], np.int64)
        self.labels = np.array([labels_of(s) for s in samples], np.int64)
        self.keys = np.array([s.key for s in samples], dtype=str)  # each item's `Sample.key`
        self.convention = convention
        self.transform = transform
        self._images: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None}  # workers map the files themselves; never pickle the pixels

    def load_crop(self, index: int) -> np.ndarray:
        if self._images is None:
            self._images = [np.load(path, mmap_mode="r") for path in self.paths]
        return np.array(self._images[self.array_of[index]][self.rows[index]])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        return face_item(self.load_crop(index), self.labels[index], self.convention, self.transform, seed)


class SplitDataset(Dataset):
    """One split over every source: the items of each source's dataset in turn, with the source's index
    (`source`) for per-source metrics. `transform` sets the augmentation of every part."""

    def __init__(self, parts: Sequence[tuple[int, Dataset]]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(dataset) for _, dataset in self.parts]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def transform(self) -> Transform | None:
        return self.parts[0][1].transform if self.parts else None

    @transform.setter
    def transform(self, transform: Transform | None) -> None:
        for _, dataset in self.parts:
            dataset.transform = transform

    def without_augmentation(self) -> SplitDataset:
        """The same items, unaugmented (calibration and parity crops), leaving this dataset as it is."""
        parts = [(source, copy.copy(dataset)) for source, dataset in self.parts]
        for _, dataset in parts:
            dataset.transform = None
        return SplitDataset(parts)

    def record_keys(self) -> list[tuple[int, str]]:
        """(source index, `Sample.key`) of each item, in order: what identifies a face across input
        conventions (two models' crops of one record), e.g. to fuse their scores."""
        return [(source, str(key)) for source, dataset in self.parts for key in dataset.keys]

    def source_of(self, index: int) -> int:
        return self.parts[bisect.bisect_right(self.offsets, index) - 1][0]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        part = bisect.bisect_right(self.offsets, index) - 1
        source, dataset = self.parts[part]
        local = index - self.offsets[part]
        return {**dataset[(local, seed) if seed is not None else local], "source": source}


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
    With `weights` (one per sample, e.g. its source's sampling weight) or an `epoch_size` other than `size`,
    an epoch draws `epoch_size` samples (default: as many as there are) with replacement, each with probability
    proportional to its weight, and each draw has its own augmentation seed (a small source oversampled several
    times an epoch is not shown the same augmented crop each time).
    Under torch.distributed each rank takes every world-size-th pair of the same permutation (padded
    to equal length), which is why `trainer=ddp` sets `use_distributed_sampler: false`.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        epoch: int = 0,
        weights: Sequence[float] | None = None,
        epoch_size: int | None = None,
    ) -> None:
        self.size = size
        self.seed = seed
        self.epoch = epoch
        self.epoch_size = epoch_size or size
        if weights is None and self.epoch_size != size:
            weights = [1.0] * size
        self.weights = torch.as_tensor(weights, dtype=torch.float64) if weights is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return -(-self.epoch_size // self._world()[1])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
            seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=generator)[order]  # one per sample
        else:
            order = torch.multinomial(self.weights, self.epoch_size, replacement=True, generator=generator)
            seeds = torch.randint(0, 2**31 - 1, (self.epoch_size,), generator=generator)  # one per draw
        rank, world = self._world()
        padding = len(self) * world - self.epoch_size
        order, seeds = torch.cat([order, order[:padding]]), torch.cat([seeds, seeds[:padding]])
        for position in range(rank, len(order), world):
            yield int(order[position]), int(seeds[position])
