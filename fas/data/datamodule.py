"""Face-crop datasets and the LightningDataModule of every data config (CelebA-Spoof, folders, manifests, mixes).

The datamodule reads `Sample` records from its sources, whatever their format, and builds the train,
val and test splits from them: a source's own `train`/`val`/`test` parts where it has them, the
validation part held out by subject from its training part, and a source without parts split by
subject into all three (or, for evaluation, wholly the evaluated part). Crops come from the files
(CelebA-Spoof, checked up front) or from a packed cache: the one `data.cache` names, or, for folder
and manifest sources, one the datamodule prepares itself so faces are detected and videos decoded once.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fas.convention import ClassScheme, InputConvention
from fas.data.cache import (
    CropSpec,
    cached_splits,
    images_path,
    open_cache,
    read_cached_split,
    read_manifest,
    skipped_path,
)
from fas.data.celeba_spoof import DEFAULT_PROTOCOL, CelebASpoofSource
from fas.data.crop import normalize
from fas.data.image_check import check_images
from fas.data.loading import box_problem, load_crop, pixel_box
from fas.data.prepare import Source, prepare
from fas.data.sample import BadSample, DatasetError, Sample, with_targets
from fas.download import cache_dir
from fas.errors import ConfigError

log = logging.getLogger(__name__)

Transform = Callable[..., dict[str, Any]]
UNSPLIT_RULES = ("split", "test")
AUTO_CACHE = "auto"


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
        return load_crop(self.samples[index], self.convention, self.interpolation)

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
    With `weights` (one per sample: its source's sampling weight) an epoch draws as many samples as
    there are, with replacement, each with probability proportional to its weight.
    Under torch.distributed each rank takes every world-size-th pair of the same permutation (padded
    to equal length), which is why `trainer=ddp` sets `use_distributed_sampler: false`.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0, weights: Sequence[float] | None = None) -> None:
        self.size = size
        self.seed = seed
        self.epoch = epoch
        self.weights = torch.as_tensor(weights, dtype=torch.float64) if weights is not None else None

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
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
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
    """Train, validation and test splits over one or more data sources.

    `sources` maps names to sources (`configs/source/`: CelebA-Spoof, folder, manifest). Without it,
    `root` (with `protocol`, `cache`, `synthetic`) is one CelebA-Spoof-layout source, as `data=celeba_spoof`,
    `data=celeba_spoof_packed` and `data=synthetic` configure it. (`data=folder` and `data=manifest` pass
    their `root` / `manifest` on to their source; `manifest` is not read here.) `held_out` names a source that is
    tested on whole and not trained on (leave-one-dataset-out). `unsplit` says what becomes of a source
    without train/test parts: `split` by subject into all three (training), or `test` whole (evaluation).
    `detector` builds the face detector for sources whose records lack boxes; `prepared_dir` is where
    their automatic caches go.
    """

    def __init__(
        self,
        root: str | None,
        class_scheme: ClassScheme,
        sources: dict[str, Source] | None = None,
        manifest: str | None = None,
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
        test_fraction: float = 0.2,
        unsplit: str = "split",
        held_out: str | None = None,
        split_seed: int = 0,
        seed: int = 0,
        skip_bad_samples: bool = False,
        check_images: bool = True,
        bad_samples_dir: str | None = None,
        train_transform: Transform | None = None,
        synthetic: dict[str, Any] | None = None,
        cache: str | None = None,
        detector: Callable[[], Any] | None = None,
        prepared_dir: str | None = None,
    ) -> None:
        super().__init__()
        if sources is None:
            if root is None and cache is None:
                raise ConfigError(
                    "Neither data.root nor data.cache is set: pass data.cache=<folder made by python -m "
                    "fas.data.prepare>, or data=celeba_spoof data.root=/path/to/CelebA_Spoof"
                )
            sources = {"celeba_spoof": CelebASpoofSource(root, protocol, cache=cache, synthetic=synthetic)}
        if not sources:
            raise ConfigError("data.sources is empty: give at least one data source")
        if unsplit not in UNSPLIT_RULES:
            raise ConfigError(f"data.unsplit={unsplit!r}: choose one of {', '.join(UNSPLIT_RULES)}")
        if held_out is not None and held_out not in sources:
            raise ConfigError(f"data.held_out={held_out!r} is not one of the sources: {', '.join(sources)}")
        self.sources = dict(sources)
        for name, source in self.sources.items():
            source.name = name
        self.source_names = list(self.sources)
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
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.unsplit = unsplit
        self.held_out = held_out
        self.split_seed = split_seed
        self.seed = seed
        self.skip_bad_samples = skip_bad_samples
        self.check_images = check_images
        self.bad_samples_dir = Path(bad_samples_dir) if bad_samples_dir else None
        self.train_transform = train_transform
        self.detector = detector
        self.prepared_dir = Path(prepared_dir) if prepared_dir else None
        self.samples: dict[str, list[Sample]] = {}
        self.splits: dict[str, SplitDataset] = {}

    @property
    def root(self) -> Path | None:
        """The root of the first source (what reports name as the data)."""
        return getattr(next(iter(self.sources.values())), "root", None)

    def describe(self) -> str:
        """The sources, for reports: `name (root)` each."""
        return ", ".join(f"{name} ({getattr(s, 'root', '?')})" for name, s in self.sources.items())

    def prepare_data(self) -> None:
        for source in self.sources.values():
            cache = self.cache_of(source)
            if cache is not None and not getattr(source, "prepared_by_datamodule", False):
                open_cache(cache, self.crop, source.settings())  # made by `python -m fas.data.prepare`: it must fit
            else:
                source.prepare()
                if cache is not None:
                    self.prepare_cache(source, cache)

    def cache_of(self, source: Source) -> Path | None:
        """The packed cache a source's crops are read from: its `cache` path, an automatic one, or None (files)."""
        cache = getattr(source, "cache", None)
        if cache is None:
            return None
        if str(cache) != AUTO_CACHE:
            return Path(cache)
        identity = json.dumps({"source": source.settings(), "crop": self.crop.__dict__}, sort_keys=True, default=str)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
        base = self.prepared_dir or cache_dir() / "prepared"
        return base / f"{source.name}-{self.crop.size}px-{digest}"

    def prepare_cache(self, source: Source, cache: Path) -> None:
        """Make (or finish, or refresh) the automatic cache of a folder or manifest source. The faces found
        are remembered beside it, so the source prepared at another crop is not searched for faces again."""
        if (cache / "manifest.json").is_file():
            manifest = read_manifest(cache)
            if manifest.get("files_sha256") != source.fingerprint():
                log.info("%s changed since %s was prepared; preparing it again", source.root, cache)
                shutil.rmtree(cache)
            elif manifest.get("complete"):
                return
        identity = json.dumps([source.settings(), source.fingerprint(), repr(self.detector)], sort_keys=True)
        faces = cache.parent / f"{source.name}-faces-{hashlib.sha256(identity.encode()).hexdigest()[:12]}.tsv"
        workers = max(1, self.num_workers)
        summary = prepare(source, cache, self.crop, self.detector, workers=workers, progress=False, faces=faces)
        log.info("%s", summary)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        parts: dict[str, list[tuple[int, Dataset]]] = {"train": [], "val": [], "test": []}
        for index, (name, source) in enumerate(self.sources.items()):
            assigned = self.assign_splits(name, self.read_source(source))
            for split, samples in assigned.items():
                samples = with_targets(samples, self.class_scheme, f"{name} {split}")
                self.samples.setdefault(split, []).extend(samples)
                if samples:
                    parts[split].append((index, self.dataset(source, samples)))
        for split in ("train", "test") if stage in (None, "fit") else ("test",):
            if not self.samples.get(split):
                raise DatasetError(
                    f"{self.describe()}: the {split} split has no usable samples for class scheme "
                    f"'{self.class_scheme.name}'"
                )
            targets = {s.target for s in self.samples[split]}
            if len(targets) < 2:
                log.warning(
                    "%s split holds only class(es) %s of %s", split, sorted(targets), self.class_scheme.class_names
                )
        self.splits = {split: SplitDataset(datasets) for split, datasets in parts.items()}
        self.splits["train"].transform = self.train_transform
        log.info("Samples: %s", {split: len(dataset) for split, dataset in self.splits.items()})

    def read_source(self, source: Source) -> list[Sample]:
        """The usable samples of a source: from its packed cache, or from its files (checked up front)."""
        cache = self.cache_of(source)
        if cache is not None:
            manifest = open_cache(cache, self.crop, source.settings())
            log.info("Reading %s's crops from the cache %s (prepared from %s)", source.name, cache, manifest["source"])
            skipped = sum(c["skipped"] for c in manifest["counts"].values())
            if skipped:
                log.warning(
                    "%s: %d record(s) could not be cropped when the cache was prepared; see %s",
                    source.name,
                    skipped,
                    skipped_path(cache),
                )
            return [s for split in cached_splits(cache) for s in read_cached_split(cache, split, source.name)]
        samples, bad = [], []
        for record in source.records():
            (samples if isinstance(record, Sample) else bad).append(record)
        if self.check_images:
            samples, undecodable = self.decodable(source, samples)
            bad += undecodable
        if bad:
            self.handle_bad(source.name, bad)
        return samples

    def assign_splits(self, name: str, samples: list[Sample]) -> dict[str, list[Sample]]:
        """train / val / test of one source: its own parts, val held out by subject from train, an unsplit
        source split by subject (or tested whole). Leaving one dataset out, the held-out source is tested
        whole and the others only train and validate."""
        if name == self.held_out or (self.unsplit == "test" and all(s.split is None for s in samples)):
            return {"train": [], "val": [], "test": samples}
        by_split: dict[str | None, list[Sample]] = {}
        for sample in samples:
            by_split.setdefault(sample.split, []).append(sample)
        train, val, test = by_split.get("train", []), by_split.get("val", []), by_split.get("test", [])
        unsplit = by_split.get(None, [])
        if unsplit:
            rest, test_part = split_by_subject(unsplit, self.test_fraction, self.split_seed + 1)
            train, test = train + rest, test + test_part
        if train and not val:
            train, val = split_by_subject(train, self.val_fraction, self.split_seed)
        if self.held_out is not None and test:
            log.info(
                "%s: its %d test sample(s) are not used; held_out=%s is the test data", name, len(test), self.held_out
            )
            test = []
        return {"train": train, "val": val, "test": test}

    def dataset(self, source: Source, samples: list[Sample]) -> Dataset:
        cache = self.cache_of(source)
        if cache is not None:
            return PackedCropDataset(cache, samples, self.convention)
        return FaceCropDataset(samples, self.convention, None, self.crop.interpolation)

    def decodable(self, source: Source, samples: list[Sample]) -> tuple[list[Sample], list[BadSample]]:
        """Split samples into those whose image decodes and holds the face box, and the others with why."""
        images = [s for s in samples if s.frame is None]
        checks = check_images([s.path for s in images], Path(source.root), cache_dir(), max(1, self.num_workers))
        kept, bad = [s for s in samples if s.frame is not None], []
        for sample in images:
            check = checks[sample.path]
            problem = check.reason or box_problem(
                pixel_box(sample, check.width, check.height), check.width, check.height
            )
            if problem:
                bad.append(BadSample(sample.path, problem, sample.key, sample.split, sample.spoof_type))
            else:
                kept.append(sample)
        return kept, bad

    def handle_bad(self, name: str, bad: list[BadSample]) -> None:
        """Refuse the unusable samples, all listed (in `bad_samples_<split>.tsv`), or skip them with that list."""
        where = ""
        if self.bad_samples_dir is not None:
            self.bad_samples_dir.mkdir(parents=True, exist_ok=True)
            suffix = "" if name == "celeba_spoof" or len(self.sources) == 1 else f"_{name}"
            for split in sorted({b.split or "all" for b in bad}):
                path = self.bad_samples_dir / f"bad_samples_{split}{suffix}.tsv"
                rows = [f"{b.path}\t{b.reason}" for b in bad if (b.split or "all") == split]
                path.write_text("path\treason\n" + "\n".join(rows) + "\n")
            where = f" (all listed in {self.bad_samples_dir}/bad_samples_<split>{suffix}.tsv)"
        first = "; ".join(f"{b.path}: {b.reason}" for b in bad[:3])
        per_split = ", ".join(f"{n} in the {split} split" for split, n in sorted(count_by_split(bad).items()))
        if not self.skip_bad_samples:
            raise DatasetError(
                f"{len(bad)} unusable sample(s) ({per_split}){where}, e.g. {first}. "
                "Fix or remove them, or set data.skip_bad_samples=true to train without them."
            )
        log.warning("Skipping %d unusable sample(s) (%s)%s, e.g. %s", len(bad), per_split, where, first)

    def source_weights(self) -> list[float] | None:
        """Each training sample's sampling weight (its source's), or None when every source weighs the same."""
        weights = {index: float(getattr(source, "weight", 1.0)) for index, source in enumerate(self.sources.values())}
        if len(set(weights.values())) <= 1:
            return None
        return [weights[source] for source, dataset in self.splits["train"].parts for _ in range(len(dataset))]

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
        sampler = EpochSeededSampler(len(self.splits["train"]), self.seed, epoch, self.source_weights())
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        """The whole validation split, on every rank: exact metrics, no padding duplicates."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def count_by_split(bad: Sequence[BadSample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for b in bad:
        counts[b.split or "all"] = counts.get(b.split or "all", 0) + 1
    return counts
