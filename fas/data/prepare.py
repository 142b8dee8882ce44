"""Prepare CelebA-Spoof once: crop every face into a packed cache (format in fas/data/cache.py).

    python -m fas.data.prepare root=/data/CelebA_Spoof output=/data/celeba_spoof_80   # configs/prepare.yaml

The work is cut into chunks of `chunk_size` samples, cropped by worker processes behind a progress
bar. Each finished chunk leaves a result file, so an interrupted run resumes where it stopped and a
finished one returns at once. Every sample that cannot be cropped is listed with the file at fault
and the reason in `skipped.tsv`, and the count is reported: nothing is dropped silently. Pixel
memory stays flat whatever the dataset size: a worker holds one image at a time and writes each crop
straight into the memory-mapped output; only the label index (a few hundred bytes per sample) is
held in full.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from fas.cli import exit_on_user_error
from fas.data.cache import (
    MANIFEST,
    SAMPLE_COLUMNS,
    SKIPPED_COLUMNS,
    CropSpec,
    chunk_path,
    images_path,
    manifest_path,
    samples_path,
    settings,
    skipped_path,
)
from fas.data.celeba_spoof import (
    DEFAULT_PROTOCOL,
    ENVIRONMENT,
    ILLUMINATION,
    SPOOF_TYPE,
    DatasetError,
    SampleError,
    bb_path,
    crop_sample,
    label_file,
    protocol_labels,
    read_bb,
    subject_of,
)
from fas.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of one split: (key, spoof type, illumination, environment) per row from `start`."""

    split: str
    index: int
    start: int
    items: tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True)
class Summary:
    output: Path
    samples: dict[str, int]
    skipped: dict[str, int]
    chunks_run: int

    def __str__(self) -> str:
        per_split = ", ".join(f"{split} {n:,}" for split, n in self.samples.items())
        skipped = sum(self.skipped.values())
        return (
            f"Cache {self.output}: {sum(self.samples.values()):,} crops ({per_split}); skipped {skipped:,} "
            f"sample(s), listed with their reason in {skipped_path(self.output)}"
        )


def prepare(
    root: str | Path,
    output: str | Path,
    crop: CropSpec,
    protocol: str = DEFAULT_PROTOCOL,
    splits: Sequence[str] = ("train", "test"),
    workers: int | None = None,
    chunk_size: int = 1024,
    progress: bool = True,
) -> Summary:
    """Crop every labelled sample of `splits` into the cache at `output`; resume or skip finished work."""
    root, output = Path(root).resolve(), Path(output).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: root does not exist; point root= at your CelebA-Spoof copy")
    chunks, wanted = plan(root, crop, protocol, splits, chunk_size)
    manifest = start(output, wanted)
    if manifest.get("complete"):
        log.info("%s is complete already; nothing to do", output)
        return summary_of(output, manifest, chunks_run=0)
    todo = [chunk for chunk in chunks if not chunk_path(output, chunk.split, chunk.index).is_file()]
    log.info("Cropping %d of %d chunks (%s) into %s", len(todo), len(chunks), crop.describe(), output)
    run_chunks(todo, output, root, crop, workers or os.cpu_count() or 1, progress)
    return finish(output, manifest, chunks, chunks_run=len(todo))


def plan(
    root: Path, crop: CropSpec, protocol: str, splits: Sequence[str], chunk_size: int
) -> tuple[list[Chunk], dict[str, Any]]:
    """The chunks to crop (rows in sorted-key order) and the settings that identify the cache."""
    chunks: list[Chunk] = []
    rows: dict[str, int] = {}
    hashes: dict[str, str] = {}
    for split in splits:
        labels = protocol_labels(root, split, protocol)
        if not labels:
            raise DatasetError(f"{label_file(root, split, protocol)}: the label file lists no images")
        items = [(key, int(v[SPOOF_TYPE]), int(v[ILLUMINATION]), int(v[ENVIRONMENT])) for key, v in labels.items()]
        del labels
        items.sort()
        rows[split] = len(items)
        hashes[split] = hashlib.sha256(label_file(root, split, protocol).read_bytes()).hexdigest()
        for index, start in enumerate(range(0, len(items), chunk_size)):
            chunks.append(Chunk(split, index, start, tuple(items[start : start + chunk_size])))
    return chunks, settings(crop, protocol, root, rows, hashes)


def start(output: Path, wanted: dict[str, Any]) -> dict[str, Any]:
    """Open the cache at `output` for these settings, or create it (manifest and empty image arrays)."""
    path = manifest_path(output)
    if path.is_file():
        manifest = json.loads(path.read_text())
        differs = [f"{key} {manifest.get(key)} -> {new}" for key, new in wanted.items() if manifest.get(key) != new]
        if differs:
            raise DatasetError(
                f"{output}: holds a cache made with other settings ({'; '.join(differs)}); "
                "choose another output folder, or delete this one to start over"
            )
        return manifest
    if output.exists() and any(output.iterdir()):
        raise DatasetError(f"{output}: not empty and holds no {MANIFEST}; choose a new or empty output folder")
    size = wanted["crop"]["size"]
    needed = sum(wanted["rows"].values()) * size * size * 3
    output.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(output).free
    if needed > free:
        raise DatasetError(
            f"{output}: the cache needs {needed / 1e9:.1f} GB and {free / 1e9:.1f} GB are free; "
            "choose another output folder or a smaller crop.size"
        )
    for split, rows in wanted["rows"].items():
        images = np.lib.format.open_memmap(images_path(output, split), "w+", np.uint8, (rows, size, size, 3))
        del images  # a sparse file: blocks are written as crops arrive
    chunk_path(output, "", 0).parent.mkdir(exist_ok=True)
    manifest = {**wanted, "complete": False}
    write_json(path, manifest)
    return manifest


def run_chunks(todo: list[Chunk], output: Path, root: Path, crop: CropSpec, workers: int, progress: bool) -> None:
    with tqdm(total=sum(len(c.items) for c in todo), unit="img", desc="Cropping", disable=not progress) as bar:
        if workers == 1:
            for chunk in todo:
                bar.update(crop_chunk(output, root, crop, chunk))
            return
        # spawn, not fork: a forked child can inherit a lock held by a thread of the parent (OpenCV's
        # or torch's pool, e.g. inside a test run or a notebook) and hang on its first cv2 call.
        spawn = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=cv2.setNumThreads, initargs=(1,))
        try:
            futures = [pool.submit(crop_chunk, output, root, crop, chunk) for chunk in todo]
            for future in as_completed(futures):
                bar.update(future.result())
        finally:
            pool.shutdown(cancel_futures=True)


def crop_chunk(output: Path, root: Path, crop: CropSpec, chunk: Chunk) -> int:
    """Crop the rows of one chunk into the image array, then record kept and skipped rows (the resume marker)."""
    images = np.load(images_path(output, chunk.split), mmap_mode="r+")
    convention = crop.convention()
    kept, skipped = [], []
    for row, (key, spoof_type, illumination, environment) in enumerate(chunk.items, start=chunk.start):
        image_path = root / key
        try:
            if not image_path.is_file():
                raise SampleError(image_path, "image file missing")
            box = read_bb(bb_path(image_path))
            images[row] = crop_sample(image_path, box, convention, crop.interpolation)
        except SampleError as error:
            skipped.append([chunk.split, key, str(error.path), error.reason])
            continue
        kept.append([row, key, subject_of(key), spoof_type, illumination, environment, *box])
    images.flush()
    del images
    write_json(chunk_path(output, chunk.split, chunk.index), {"kept": kept, "skipped": skipped})
    return len(chunk.items)


def finish(output: Path, manifest: dict[str, Any], chunks: list[Chunk], chunks_run: int) -> Summary:
    """Gather the chunk results into the sample tables and `skipped.tsv`, then mark the cache complete."""
    counts = {split: {"samples": 0, "skipped": 0} for split in manifest["rows"]}
    skipped_tmp = skipped_path(output).with_suffix(".tmp")
    with skipped_tmp.open("w", newline="") as skipped_file:
        skipped_writer = csv.writer(skipped_file, delimiter="\t", lineterminator="\n")
        skipped_writer.writerow(SKIPPED_COLUMNS)
        for split in manifest["rows"]:
            samples_tmp = samples_path(output, split).with_suffix(".tmp")
            with samples_tmp.open("w", newline="") as samples_file:
                writer = csv.writer(samples_file, delimiter="\t", lineterminator="\n")
                writer.writerow(SAMPLE_COLUMNS)
                for chunk in (c for c in chunks if c.split == split):
                    result = json.loads(chunk_path(output, split, chunk.index).read_text())
                    writer.writerows(result["kept"])
                    skipped_writer.writerows(result["skipped"])
                    counts[split]["samples"] += len(result["kept"])
                    counts[split]["skipped"] += len(result["skipped"])
            os.replace(samples_tmp, samples_path(output, split))
    os.replace(skipped_tmp, skipped_path(output))
    manifest = {**manifest, "counts": counts, "complete": True}
    write_json(manifest_path(output), manifest)
    return summary_of(output, manifest, chunks_run)


def summary_of(output: Path, manifest: dict[str, Any], chunks_run: int) -> Summary:
    counts = manifest["counts"]
    return Summary(
        output,
        {split: c["samples"] for split, c in counts.items()},
        {split: c["skipped"] for split, c in counts.items()},
        chunks_run,
    )


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader (or a resumed run) sees the old file or the new one, never half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="prepare")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        for key in ("root", "output"):
            if OmegaConf.is_missing(cfg, key):
                raise ConfigError(
                    f"{key} is not set: python -m fas.data.prepare root=/path/to/CelebA_Spoof output=/path/to/cache"
                )
        summary = prepare(
            cfg.root,
            cfg.output,
            CropSpec(**cfg.crop),
            protocol=cfg.protocol,
            splits=tuple(cfg.splits),
            workers=cfg.workers,
            chunk_size=cfg.chunk_size,
            progress=cfg.progress,
        )
        log.info("%s", summary)


if __name__ == "__main__":
    main()
