"""The LightningDataModule of every data config: train, validation and test splits over data sources.

The datamodule reads `Sample` records from its sources (`fas.data.sources`), whatever their format, and
builds the splits from them: a source's own `train`/`val`/`test` parts where it has them, the validation
part held out by subject from its training part, and a source without parts split by subject into all
three (or, for evaluation, wholly the evaluated part). Crops come from the files (checked up front) or
from a packed cache: the one a source names, or, for folder and manifest sources, one the datamodule
prepares itself so faces are detected and videos decoded once. Every crop is made by the datamodule's
`InputConvention` (`fas.data.crop.crop_face`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from fas.convention import ClassScheme, InputConvention, ModelInfo
from fas.data.cache import cached_splits, open_cache, read_cached_split, read_manifest, skipped_path
from fas.data.datasets import (
    EpochSeededSampler,
    FaceCropDataset,
    PackedCropDataset,
    SplitDataset,
    Transform,
    single_threaded_opencv,
)
from fas.data.image_check import check_images
from fas.data.loading import box_problem, pixel_box
from fas.data.prepare import prepare
from fas.data.sample import BadSample, DatasetError, Sample, with_targets
from fas.data.sources import Source
from fas.detect import detector_factory
from fas.download import cache_dir
from fas.errors import ConfigError

log = logging.getLogger(__name__)

UNSPLIT_RULES = ("split", "test")
# How training draws from several sources: `none` in proportion to size x weight, `source` an equal share of each
# source, `source_class` an equal share of each source's live and of its spoof samples.
BALANCE_RULES = ("none", "source", "source_class")
AUTO_CACHE = "auto"
# The data configs' one-key shortcuts into their sources (`data.root=...`, `data.synthetic=null`): the YAML
# interpolates them into `sources`; they are not settings of the datamodule.
SOURCE_SHORTCUTS = ("root", "manifest", "protocol", "cache", "synthetic")


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
    """Train, validation and test splits over one or more data sources, cropped by one input convention.

    `sources` maps names to sources (`configs/source/`: CelebA-Spoof, folder, manifest); a source takes the
    name it is given here. `held_out` names a source that is tested on whole and not trained on
    (leave-one-dataset-out); with `leave_one_out` (a group of source names, the protocol's sets), holding out a
    member of the group trains on the group's other members only and the sources outside it are not read (holding
    out a source outside the group, or none, trains on every other source). `balance` says how training draws from
    the sources (`BALANCE_RULES`, each source's `weight` on top) and `epoch_size` how many samples an epoch draws
    (None: as many as there are). `unsplit` says what becomes of a source without train/test parts: `split` by
    subject into all three (training), or `test` whole (evaluation). `detector` builds the face detector
    for sources whose records lack boxes; `prepared_dir` is where their automatic caches go. `needed_splits`
    (e.g. `("test",)` for an evaluation that takes the model's own threshold) limits what is read, detected
    and cropped to the parts those splits come from; None reads everything.
    """

    def __init__(
        self,
        sources: dict[str, Source],
        class_scheme: ClassScheme,
        convention: InputConvention | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        unsplit: str = "split",
        held_out: str | None = None,
        leave_one_out: Sequence[str] | None = None,
        balance: str = "none",
        epoch_size: int | None = None,
        split_seed: int = 0,
        seed: int = 0,
        skip_bad_samples: bool = False,
        check_images: bool = True,
        bad_samples_dir: str | None = None,
        train_transform: Transform | None = None,
        detector: Callable[[], Any] | None = None,
        prepared_dir: str | None = None,
        needed_splits: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not sources:
            raise ConfigError("data.sources is empty: give at least one data source")
        if unsplit not in UNSPLIT_RULES:
            raise ConfigError(f"data.unsplit={unsplit!r}: choose one of {', '.join(UNSPLIT_RULES)}")
        if held_out is not None and held_out not in sources:
            raise ConfigError(f"data.held_out={held_out!r} is not one of the sources: {', '.join(sources)}")
        unknown = sorted(set(leave_one_out or ()) - set(sources))
        if unknown:
            raise ConfigError(
                f"data.leave_one_out names {', '.join(unknown)}, not among the sources: {', '.join(sources)}"
            )
        if balance not in BALANCE_RULES:
            raise ConfigError(f"data.balance={balance!r}: choose one of {', '.join(BALANCE_RULES)}")
        if epoch_size is not None and (
            isinstance(epoch_size, bool) or not isinstance(epoch_size, int) or epoch_size < 1
        ):
            raise ConfigError(f"data.epoch_size={epoch_size!r}: give a positive whole number of samples, or null")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key}={value!r}: give a positive whole number of samples")
        used = used_sources(list(sources), held_out, leave_one_out)
        if held_out is not None and needed_splits is not None and not {"train", "val"} & set(needed_splits):
            used = [held_out]  # testing the held-out source alone: the others would add nothing
        if len(used) < len(sources):
            log.info("Holding %s out; not reading %s", held_out, ", ".join(n for n in sources if n not in used))
        self.sources = {name: sources[name].renamed(name) for name in used}
        self.source_names = list(self.sources)
        self.class_scheme = class_scheme
        self.convention = convention or InputConvention()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.unsplit = unsplit
        self.held_out = held_out
        self.balance = balance
        self.epoch_size = epoch_size
        self.split_seed = split_seed
        self.seed = seed
        self.skip_bad_samples = skip_bad_samples
        self.check_images = check_images
        self.bad_samples_dir = Path(bad_samples_dir) if bad_samples_dir else None
        self.train_transform = train_transform
        self.detector = detector
        self.prepared_dir = Path(prepared_dir) if prepared_dir else None
        self.needed_splits = tuple(needed_splits) if needed_splits is not None else None
        self.samples: dict[str, list[Sample]] = {}
        self.splits: dict[str, SplitDataset] = {}
        self.skipped: dict[str, int] = {}  # per source: records of the parts read that could not be used

    def describe(self) -> str:
        """The sources, for reports: `name (root)` each."""
        return ", ".join(source.describe() for source in self.sources.values())

    def prepare_data(self) -> None:
        for source in self.sources.values():
            cache = self.cache_of(source)
            if cache is not None and not source.prepared_by_datamodule:
                # made by `python -m fas.data.prepare`: it must fit
                open_cache(cache, self.convention, source.settings())
            else:
                source.prepare()
                if cache is not None:
                    self.prepare_cache(source, cache)

    def cache_of(self, source: Source) -> Path | None:
        """The packed cache a source's crops are read from: its `cache` path, an automatic one, or None (files)."""
        if source.cache is None:
            return None
        if str(source.cache) != AUTO_CACHE:
            return Path(source.cache)
        crop = self.convention.crop_settings()
        identity = json.dumps({"source": source.settings(), "crop": crop}, sort_keys=True, default=str)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
        base = self.prepared_dir or cache_dir() / "prepared"
        return base / f"{source.name}-{self.convention.input_size}px-{digest}"

    def source_splits(self, source: Source) -> tuple[str, ...]:
        """The parts of a source the datamodule's `needed_splits` read: test from its test part (or all of an
        unsplit source), validation from its val part or, when it has none, its train part (held out by
        subject); every part when `needed_splits` is None, and of the held-out source."""
        have = source.splits
        if self.needed_splits is None or source.name == self.held_out:  # a held-out source is tested whole
            return have
        wanted = set()
        for split in self.needed_splits:
            if split in have:
                wanted.add(split)
            elif split == "val" and "train" in have:
                wanted.add("train")
            elif "all" in have:
                wanted.add("all")
        return tuple(part for part in have if part in wanted)

    def prepare_cache(self, source: Source, cache: Path) -> None:
        """Make (or finish, extend or refresh) the automatic cache of a folder or manifest source, for the parts
        this run reads. The faces found are remembered beside it, so preparing the source again (another crop,
        another part) searches no face twice."""
        splits = self.source_splits(source)
        if (cache / "manifest.json").is_file():
            manifest = read_manifest(cache)
            cached = tuple(manifest["rows"])
            if manifest.get("files_sha256") != source.fingerprint(cached):
                log.info("%s changed since %s was prepared; preparing it again", source.root, cache)
                shutil.rmtree(cache)
            elif manifest.get("complete") and set(splits) <= set(cached):
                return
            elif not manifest.get("complete") and set(splits) != set(cached):
                shutil.rmtree(cache)  # an interrupted preparation of other parts: start this one afresh
            elif manifest.get("complete"):
                splits = tuple(part for part in source.splits if part in set(splits) | set(cached))
                log.info("%s: adding the part(s) %s to %s", source.name, ", ".join(set(splits) - set(cached)), cache)
                shutil.rmtree(cache)
        identity = json.dumps([source.settings(), source.fingerprint(), repr(self.detector)], sort_keys=True)
        faces = cache.parent / f"{source.name}-faces-{hashlib.sha256(identity.encode()).hexdigest()[:12]}.tsv"
        workers = max(1, self.num_workers)
        summary = prepare(
            source, cache, self.convention, self.detector, splits, workers=workers, progress=False, faces=faces
        )
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
        required = ("train", "test") if stage in (None, "fit") else ("test",)
        if self.needed_splits is not None:  # an evaluation of another split (split=val) requires that one
            required = tuple(s for s in required if s in self.needed_splits) or self.needed_splits[:1]
        for split in required:
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
            manifest = open_cache(cache, self.convention, source.settings())
            log.info("Reading %s's crops from the cache %s (prepared from %s)", source.name, cache, manifest["source"])
            wanted = self.source_splits(source)
            skipped = sum(c["skipped"] for part, c in manifest["counts"].items() if part in wanted)
            self.skipped[source.name] = skipped
            if skipped:
                log.warning(
                    "%s: %d record(s) could not be cropped when the cache was prepared; see %s",
                    source.name,
                    skipped,
                    skipped_path(cache),
                )
            return [
                sample
                for split in cached_splits(cache)
                if split in wanted
                for sample in read_cached_split(cache, split, source.name)
            ]
        samples, bad = [], []
        for record in source.records(self.source_splits(source)):
            (samples if isinstance(record, Sample) else bad).append(record)
        if self.check_images:
            samples, undecodable = self.decodable(source, samples)
            bad += undecodable
        self.skipped[source.name] = len(bad)
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
        return FaceCropDataset(samples, self.convention)

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

    def sample_weights(self) -> list[float] | None:
        """Each training sample's sampling weight: its source's `weight`, divided by the size of its group (all
        samples, its source, or its source's live or spoof part, by `balance`); None when all weigh the same."""
        train = self.samples.get("train", [])
        groups = [self.balance_group(sample) for sample in train]
        sizes = Counter(groups)
        weights = [self.sources[s.source].weight / sizes[group] for s, group in zip(train, groups, strict=True)]
        return None if len(set(weights)) <= 1 else weights

    def balance_group(self, sample: Sample) -> tuple[str, ...]:
        """The group `balance` gives an equal share of the draws: none, the sample's source, or its source and
        whether it is live."""
        if self.balance == "source":
            return (sample.source,)
        if self.balance == "source_class":
            return (sample.source, "live" if sample.target == self.class_scheme.real_class_index else "spoof")
        return ()

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
        sampler = EpochSeededSampler(
            len(self.splits["train"]), self.seed, epoch, self.sample_weights(), self.epoch_size
        )
        return self._loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        """The whole validation split, on every rank: exact metrics, no padding duplicates."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def used_sources(names: list[str], held_out: str | None, leave_one_out: Sequence[str] | None) -> list[str]:
    """The sources a datamodule reads: all of them, except that holding out a member of the `leave_one_out`
    group reads that group only (e.g. OULU, CASIA, Replay, MSU: holding out one trains on the other three)."""
    group = list(leave_one_out or ())
    if held_out is None or held_out not in group:
        return names
    return [name for name in names if name in group]


def count_by_split(bad: Sequence[BadSample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for b in bad:
        counts[b.split or "all"] = counts.get(b.split or "all", 0) + 1
    return counts


def instantiate_datamodule(
    data_cfg: DictConfig | dict, settings: dict[str, Any] | None = None, **objects: Any
) -> FaceDataModule:
    """The datamodule of a data config (`configs/data/`): its source shortcuts dropped, `settings` (config
    values, e.g. another convention) replacing the config's, `objects` (e.g. the detector factory) passed on."""
    data = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
    for key in SOURCE_SHORTCUTS:
        data.pop(key, None)
    data.update(settings or {})
    return hydra.utils.instantiate(OmegaConf.create(data), **objects)


def datamodule_for(
    data_cfg: DictConfig,
    info: ModelInfo,
    detector_cfg: DictConfig | None = None,
    class_scheme: ClassScheme | None = None,
    needed_splits: Sequence[str] | None = None,
) -> FaceDataModule:
    """The data config's data cropped with a model's recorded input convention and labelled by its class
    scheme (or `class_scheme`), without augmentation: what evaluation and export score a model on.

    The scheme replaces the config's whole (a merge would keep spoof types the model has no class for).
    `needed_splits` limits what is read and cropped (see `FaceDataModule`).
    """
    scheme = class_scheme or info.class_scheme
    settings = {
        "convention": {"_target_": "fas.convention.InputConvention", **info.convention.to_dict()},
        "class_scheme": {"_target_": "fas.convention.ClassScheme", **scheme.to_dict()},
        "train_transform": None,
        "needed_splits": list(needed_splits) if needed_splits is not None else None,
    }
    return instantiate_datamodule(data_cfg, settings, detector=detector_factory(detector_cfg))
