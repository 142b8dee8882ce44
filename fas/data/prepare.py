"""Prepare CelebA-Spoof once: crop every face into a packed cache (format in fas/data/cache.py).

    python -m fas.data.prepare root=/data/CelebA_Spoof output=/data/celeba_spoof_80   # configs/prepare.yaml

The label files are streamed in file order and cut into chunks of `chunk_size` samples, cropped by
worker processes behind a progress bar. Each finished chunk leaves a result file, so an interrupted
run resumes where it stopped and a finished one returns at once. Every sample that cannot be cropped
is listed with the file at fault and the reason in `skipped.tsv`, and the count is reported: nothing
is dropped silently. Memory does not grow with the dataset: labels are read as a stream, a few chunks
are in flight at a time, a worker holds one image and writes each crop straight into the
memory-mapped output, and the tables are written by streaming the chunk results.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
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
    iter_labels,
    protocol_label_file,
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
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"{root}: root {what}; point root= at your CelebA-Spoof copy")
    if output.exists() and not output.is_dir():
        raise DatasetError(f"{output}: output is a file, not a folder; choose a new or empty folder for the cache")
    label_files = {split: protocol_label_file(root, split, protocol) for split in splits}
    rows = {split: count_rows(path) for split, path in label_files.items()}
    hashes = {split: sha256(path) for split, path in label_files.items()}
    manifest = start(output, settings(crop, protocol, root, chunk_size, rows, hashes))
    if manifest.get("complete"):
        log.info("%s is complete already; nothing to do", output)
        return summary_of(output, manifest, chunks_run=0)
    todo = {
        split: {i for i in range(chunk_count(n, chunk_size)) if not chunk_path(output, split, i).is_file()}
        for split, n in rows.items()
    }
    images = sum(min(chunk_size, rows[split] - i * chunk_size) for split, indices in todo.items() for i in indices)
    chunks = (
        chunk
        for split, path in label_files.items()
        for chunk in iter_chunks(path, split, chunk_size)
        if chunk.index in todo[split]
    )
    log.info("Cropping %d images into %s: %s", images, output, crop.describe())
    run_chunks(chunks, images, output, root, crop, workers or os.cpu_count() or 1, progress)
    return finish(output, manifest, chunk_size, chunks_run=sum(len(indices) for indices in todo.values()))


def count_rows(path: Path) -> int:
    """Number of entries of a label file (streamed, and checked entry by entry before any work starts)."""
    return sum(1 for _ in iter_labels(path))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def chunk_count(rows: int, chunk_size: int) -> int:
    return -(-rows // chunk_size)


def iter_chunks(label_file: Path, split: str, chunk_size: int) -> Iterator[Chunk]:
    """The chunks of a split in label-file order: row i is the file's i-th entry."""
    items: list[tuple[str, int, int, int]] = []
    index = 0
    for key, vector in iter_labels(label_file):
        items.append((key, int(vector[SPOOF_TYPE]), int(vector[ILLUMINATION]), int(vector[ENVIRONMENT])))
        if len(items) == chunk_size:
            yield Chunk(split, index, index * chunk_size, tuple(items))
            items, index = [], index + 1
    if items:
        yield Chunk(split, index, index * chunk_size, tuple(items))


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
    empty = [split for split, rows in wanted["rows"].items() if rows == 0]
    if empty:
        raise DatasetError(f"the {', '.join(empty)} label file(s) list no images; check root= and protocol=")
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


def run_chunks(
    chunks: Iterator[Chunk], images: int, output: Path, root: Path, crop: CropSpec, workers: int, progress: bool
) -> None:
    """Crop the chunks, in this process or in `workers` processes with at most 2 chunks each in flight."""
    with tqdm(total=images, unit="img", desc="Cropping", disable=not progress) as bar:
        if workers == 1:
            for chunk in chunks:
                bar.update(crop_chunk(output, root, crop, chunk))
            return
        # spawn, not fork: a forked child can inherit a lock held by a thread of the parent (OpenCV's
        # or torch's pool, e.g. inside a test run or a notebook) and hang on its first cv2 call.
        spawn = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=cv2.setNumThreads, initargs=(1,))
        try:
            in_flight: set[Future[int]] = set()
            for chunk in chunks:
                if len(in_flight) >= 2 * workers:
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    bar.update(sum(future.result() for future in finished))
                in_flight.add(pool.submit(crop_chunk, output, root, crop, chunk))
            for future in as_completed(in_flight):
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


def finish(output: Path, manifest: dict[str, Any], chunk_size: int, chunks_run: int) -> Summary:
    """Gather the chunk results into the sample tables and `skipped.tsv`, then mark the cache complete."""
    counts = {split: {"samples": 0, "skipped": 0} for split in manifest["rows"]}
    skipped_tmp = skipped_path(output).with_suffix(".tmp")
    with skipped_tmp.open("w", newline="") as skipped_file:
        skipped_writer = csv.writer(skipped_file, delimiter="\t", lineterminator="\n")
        skipped_writer.writerow(SKIPPED_COLUMNS)
        for split, rows in manifest["rows"].items():
            samples_tmp = samples_path(output, split).with_suffix(".tmp")
            with samples_tmp.open("w", newline="") as samples_file:
                writer = csv.writer(samples_file, delimiter="\t", lineterminator="\n")
                writer.writerow(SAMPLE_COLUMNS)
                for index in range(chunk_count(rows, chunk_size)):
                    result = json.loads(chunk_path(output, split, index).read_text())
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
