"""Prepare a data source once: crop every face into a packed cache (format in fas/data/cache.py).

    python -m fas.data.prepare root=/data/CelebA_Spoof output=/data/celeba_spoof_80            # configs/prepare.yaml
    python -m fas.data.prepare source=folder root=/data/mine output=/data/mine_80              # photos and videos

(the command line is `fas/data/prepare/__main__.py`; this module is the library the datamodule uses).

The source's records are streamed in order and cut into chunks of `chunk_size`, cropped by worker
processes behind a progress bar. A record without a face box has its face detected with the same
detector and settings as `python -m fas.predict` (the largest face, or `face_rule=best`); a video's
frames of a chunk are decoded in one forward pass. Each finished chunk leaves a result file, so an
interrupted run resumes where it stopped and a finished one returns at once. Every record that cannot
be cropped (no face found, unreadable or undecodable, a bad box) is listed with the file at fault,
its spoof type and the reason in `skipped.tsv`, and counted per class in the summary: detectors miss
far more faces in recaptured attacks than in live photos, and a prepare that dropped them silently
would bias every metric. Memory does not grow with the dataset: records are streamed, a few chunks are
in flight at a time, a worker holds one image and writes each crop straight into the memory-mapped
output, and the tables are written by streaming the chunk results.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from fas.convention import InputConvention
from fas.data.cache import (
    MANIFEST,
    SAMPLE_COLUMNS,
    SKIPPED_COLUMNS,
    chunk_path,
    images_path,
    manifest_path,
    settings,
    skipped_path,
)
from fas.data.loading import crop_from, pixel_box
from fas.data.sample import BadSample, DatasetError, Sample, SampleError, spoof_type_name
from fas.data.sources import Source
from fas.data.sources.celeba_spoof import DEFAULT_PROTOCOL, CelebASpoofSource
from fas.detect import Face, choose_face
from fas.media import MediaError, read_frames, read_image
from fas.progress import ProgressLog

log = logging.getLogger(__name__)

NO_FACE = "no face found"


class Detector(Protocol):
    def detect(self, image_bgr: np.ndarray) -> list: ...


@dataclass(frozen=True)
class Chunk:
    """Consecutive records of one split; record i of `records` is row `start + i` of the split."""

    split: str
    index: int
    start: int
    records: tuple[Sample | BadSample, ...]


@dataclass(frozen=True)
class Summary:
    output: Path
    samples: dict[str, int]
    skipped: dict[str, int]
    chunks_run: int
    skipped_by_type: dict[str, dict[str, int]]  # spoof type name -> reason -> count
    records_by_type: dict[str, int]

    def __str__(self) -> str:
        per_split = ", ".join(f"{split} {n:,}" for split, n in self.samples.items())
        skipped = sum(self.skipped.values())
        text = (
            f"Cache {self.output}: {sum(self.samples.values()):,} crops ({per_split}); skipped {skipped:,} "
            f"sample(s), listed with their reason in {skipped_path(self.output)}"
        )
        if skipped:
            text += "\n" + self.per_class()
        return text

    def per_class(self) -> str:
        """One line per spoof type: how many of its records were skipped, and why (no face first)."""
        lines = []
        for name, total in sorted(self.records_by_type.items(), key=lambda item: -item[1]):
            reasons = self.skipped_by_type.get(name, {})
            lost = sum(reasons.values())
            shown = ", ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items(), key=lambda r: -r[1]))
            lines.append(
                f"  {name}: skipped {lost:,} of {total:,} ({100 * lost / max(total, 1):.1f}%)"
                + (f": {shown}" if shown else "")
            )
        return "Skipped per class:\n" + "\n".join(lines)


def prepare(
    source: Source | str | Path,
    output: str | Path,
    convention: InputConvention,
    detector: Callable[[], Detector] | None = None,
    splits: Sequence[str] | None = None,
    workers: int | None = None,
    chunk_size: int = 1024,
    progress: bool = True,
    face_rule: str = "largest",
    protocol: str = DEFAULT_PROTOCOL,
    faces: Path | None = None,
) -> Summary:
    """Crop every record of `splits` (default: all the source has) into the cache at `output` by the crop of
    `convention` (its colour order and normalisation are applied when the crops are read); resume or skip
    finished work. `detector` builds the detector that finds the faces of records without a box
    (`fas.detect.detector_factory`, built in each worker process on first need); without one, they are
    skipped. A path as `source` is a CelebA-Spoof root, read with `protocol`. `faces` names a `FaceMemo`:
    the faces in it are reused, and the ones this run finds are added to it."""
    if isinstance(source, str | Path):
        source = CelebASpoofSource(str(source), protocol)
    output = Path(output).resolve()
    if output.exists() and not output.is_dir():
        raise DatasetError(f"{output}: output is a file, not a folder; choose a new or empty folder for the cache")
    source.prepare()
    splits = tuple(splits or source.splits)
    rows = count_rows(source, splits)
    files = source.fingerprint(splits)
    manifest = start(
        output, settings(convention, source.settings(), Path(source.root).resolve(), chunk_size, rows, files)
    )
    if manifest.get("complete"):
        log.info("%s is complete already; nothing to do", output)
        return summary_of(output, manifest, chunks_run=0)
    todo = {
        split: {i for i in range(chunk_count(n, chunk_size)) if not chunk_path(output, split, i).is_file()}
        for split, n in rows.items()
    }
    records = sum(min(chunk_size, rows[split] - i * chunk_size) for split, indices in todo.items() for i in indices)
    chunks = (chunk for chunk in iter_chunks(source, splits, chunk_size) if chunk.index in todo[chunk.split])
    log.info("Cropping %d records into %s: %s", records, output, convention.describe_crop())
    job = CropJob(output, convention, detector, face_rule, faces)
    run_chunks(chunks, records, job, workers or os.cpu_count() or 1, progress)
    summary = finish(output, manifest, chunk_size, chunks_run=sum(len(indices) for indices in todo.values()))
    if faces is not None:
        FaceMemo.record(faces, output)
    return summary


def record_split(record: Sample | BadSample) -> str:
    return record.split or "all"


def count_rows(source: Source, splits: Sequence[str]) -> dict[str, int]:
    """Records per split (streamed once before any work starts: a malformed source fails here)."""
    counts = Counter(record_split(record) for record in source.records(splits))
    return {split: counts.get(split, 0) for split in splits}


def chunk_count(rows: int, chunk_size: int) -> int:
    return -(-rows // chunk_size)


def iter_chunks(source: Source, splits: Sequence[str], chunk_size: int) -> Iterator[Chunk]:
    """The chunks of each split in the source's record order: row i of a split is its i-th record."""
    pending: dict[str, list[Sample | BadSample]] = {split: [] for split in splits}
    index = dict.fromkeys(splits, 0)
    for record in source.records(splits):
        split = record_split(record)
        items = pending[split]
        items.append(record)
        if len(items) == chunk_size:
            yield Chunk(split, index[split], index[split] * chunk_size, tuple(items))
            pending[split], index[split] = [], index[split] + 1
    for split, items in pending.items():
        if items:
            yield Chunk(split, index[split], index[split] * chunk_size, tuple(items))


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
    if not any(wanted["rows"].values()):
        raise DatasetError(f"{wanted['source']}: the source lists no images or videos; check its root and settings")
    empty = [split for split, rows in wanted["rows"].items() if rows == 0]
    if empty:
        raise DatasetError(f"the {', '.join(empty)} split(s) list no images; check root= and the source's settings")
    size = wanted["crop"]["input_size"]
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


@dataclass(frozen=True)
class CropJob:
    """What every chunk is cropped with, pickled to the worker processes. The detector travels as its
    config and is built in each process on first need: a source whose records all have boxes never loads it."""

    output: Path
    convention: InputConvention
    detector: Callable[[], Detector] | None
    face_rule: str
    faces: Path | None = None  # faces found before (FaceMemo), reused instead of detecting again

    def find_face(self, sample: Sample, image: np.ndarray) -> Face:
        known = FaceMemo.load(self.faces).get(sample.key) if self.faces is not None else None
        if known is not None:
            if isinstance(known, str):
                raise SampleError(sample.path, known)
            return known
        if self.detector is None:
            raise SampleError(sample.path, "no face box given and no detector configured")
        key = repr(self.detector)
        if key not in DETECTORS:
            DETECTORS[key] = self.detector()
        detector = DETECTORS[key]
        face = choose_face(detector.detect(image), self.face_rule)
        if face is None:
            threshold = getattr(detector, "score_threshold", None)
            where = f"frame {sample.frame}: " if sample.frame is not None else ""
            detail = f" (detector score threshold {threshold})" if threshold is not None else ""
            raise SampleError(sample.path, f"{where}{NO_FACE}{detail}")
        return face


DETECTORS: dict[str, Detector] = {}  # built once per process


class FaceMemo:
    """The faces a detector found (or did not find) in a source's records, kept beside its caches so that
    preparing the source again at another crop (another model's convention) detects nothing twice.

    A TSV of record key, x, y, w, h, score, or the reason no face was used; its file name carries what
    makes it valid (the source's settings and files, the detector and the face rule).
    """

    COLUMNS = ("key", "x", "y", "w", "h", "score", "reason")
    loaded: ClassVar[dict[Path, dict[str, Face | str]]] = {}  # per process

    @classmethod
    def load(cls, path: Path) -> dict[str, Face | str]:
        if path not in cls.loaded:
            faces: dict[str, Face | str] = {}
            if path.is_file():
                with path.open(newline="") as file:
                    for row in csv.DictReader(file, delimiter="\t"):
                        if row["reason"]:
                            faces[row["key"]] = row["reason"]
                        else:
                            box = tuple(int(float(row[c])) for c in "xywh")
                            faces[row["key"]] = Face(box, float(row["score"]))
            cls.loaded[path] = faces
        return cls.loaded[path]

    @classmethod
    def record(cls, path: Path, cache: Path) -> None:
        """Add the detected faces and the faces not found of a finished cache to the memo at `path`."""
        rows = {}
        if path.is_file():
            with path.open(newline="") as file:
                rows = {row["key"]: row for row in csv.DictReader(file, delimiter="\t")}
        manifest = json.loads(manifest_path(cache).read_text())
        for split in manifest["rows"]:
            with (cache / f"{split}_samples.tsv").open(newline="") as file:
                for row in csv.DictReader(file, delimiter="\t"):
                    if row["box_from"] == "detected":
                        rows[row["key"]] = {
                            **{c: row[c] for c in "xywh"},
                            "key": row["key"],
                            "score": row["detector_score"],
                        }
        with skipped_path(cache).open(newline="") as file:
            for row in csv.DictReader(file, delimiter="\t"):
                if NO_FACE in row["reason"]:
                    rows[row["key"]] = {"key": row["key"], "reason": row["reason"]}
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, cls.COLUMNS, delimiter="\t", lineterminator="\n", restval="")
            writer.writeheader()
            writer.writerows(rows.values())
        os.replace(tmp, path)
        cls.loaded.pop(path, None)


def run_chunks(chunks: Iterator[Chunk], records: int, job: CropJob, workers: int, progress: bool) -> None:
    """Crop the chunks, in this process or in `workers` processes with at most 2 chunks each in flight; the
    progress goes to a bar (`progress`, on a terminal) and to the log (when the output is not a terminal)."""
    logged = ProgressLog(f"Cropping into {job.output}", records, "records")
    with tqdm(total=records, unit="img", desc="Cropping", disable=not progress) as bar:

        def done(count: int) -> None:
            bar.update(count)
            logged.update(count)

        crop_all(chunks, job, workers, done)
    logged.finish()


def crop_all(chunks: Iterator[Chunk], job: CropJob, workers: int, done: Callable[[int], None]) -> None:
    if workers == 1:
        for chunk in chunks:
            done(crop_chunk(job, chunk))
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
                done(sum(future.result() for future in finished))
            in_flight.add(pool.submit(crop_chunk, job, chunk))
        for future in as_completed(in_flight):
            done(future.result())
    finally:
        pool.shutdown(cancel_futures=True)


def chunk_images(chunk: Chunk) -> Iterator[tuple[int, Sample | BadSample, np.ndarray | MediaError | None]]:
    """(row, record, its image or the error reading it) for each record; the frames of a video that follow
    each other in the chunk are decoded in one forward pass."""
    records = list(enumerate(chunk.records, start=chunk.start))
    position = 0
    while position < len(records):
        row, record = records[position]
        if isinstance(record, BadSample):
            yield row, record, None
            position += 1
        elif record.frame is None:
            try:
                image: np.ndarray | MediaError = read_image(record.path)
            except MediaError as error:
                image = error
            yield row, record, image
            position += 1
        else:
            end = position
            while end < len(records) and isinstance(records[end][1], Sample) and records[end][1].path == record.path:
                end += 1
            group = records[position:end]
            try:
                frames = dict(read_frames(record.path, [r.frame for _, r in group]))
            except MediaError as error:
                frames = {r.frame: error for _, r in group}
            for row_in_group, sample in group:
                yield row_in_group, sample, frames[sample.frame]
            position = end


def crop_chunk(job: CropJob, chunk: Chunk) -> int:
    """Crop the records of one chunk into the image array, then record kept and skipped rows (the resume marker)."""
    images = np.load(images_path(job.output, chunk.split), mmap_mode="r+")
    kept, skipped = [], []
    for row, record, image in chunk_images(chunk):
        if isinstance(record, BadSample):
            skipped.append([chunk.split, record.key, str(record.path), record.spoof_type, record.reason])
            continue
        try:
            if isinstance(image, MediaError):
                raise image
            sample, box_from, score = locate_face(record, image, job)
            images[row] = crop_from(image, sample, job.convention)
        except MediaError as error:
            skipped.append([chunk.split, record.key, str(error.path), record.spoof_type, error.reason])
            continue
        height, width = image.shape[:2]
        box = pixel_box(sample, width, height)
        kept.append(
            [row, record.key, str(record.path), "" if record.frame is None else record.frame, record.subject,
             record.spoof_type, record.illumination, record.environment, *box, box_from, score, record.video or ""]
        )  # fmt: skip
    images.flush()
    del images
    write_json(chunk_path(job.output, chunk.split, chunk.index), {"kept": kept, "skipped": skipped})
    return len(chunk.records)


def locate_face(sample: Sample, image: np.ndarray, job: CropJob) -> tuple[Sample, str, float | str]:
    """The sample with its face box: the given one, or the detector's choice (SampleError when none)."""
    if sample.box is not None:
        return sample, "given", ""
    face = job.find_face(sample, image)
    return replace(sample, box=tuple(float(v) for v in face.box), box_frame=None), "detected", round(face.score, 4)


def finish(output: Path, manifest: dict[str, Any], chunk_size: int, chunks_run: int) -> Summary:
    """Gather the chunk results into the sample tables and `skipped.tsv`, then mark the cache complete."""
    counts = {split: {"samples": 0, "skipped": 0} for split in manifest["rows"]}
    by_type: dict[str, Counter[str]] = {}
    records_by_type: Counter[str] = Counter()
    skipped_tmp = skipped_path(output).with_suffix(".tmp")
    with skipped_tmp.open("w", newline="") as skipped_file:
        skipped_writer = csv.writer(skipped_file, delimiter="\t", lineterminator="\n")
        skipped_writer.writerow(SKIPPED_COLUMNS)
        for split, rows in manifest["rows"].items():
            samples_tmp = output / f"{split}_samples.tsv.tmp"
            with samples_tmp.open("w", newline="") as samples_file:
                writer = csv.writer(samples_file, delimiter="\t", lineterminator="\n")
                writer.writerow(SAMPLE_COLUMNS)
                for index in range(chunk_count(rows, chunk_size)):
                    result = json.loads(chunk_path(output, split, index).read_text())
                    writer.writerows(result["kept"])
                    skipped_writer.writerows(result["skipped"])
                    counts[split]["samples"] += len(result["kept"])
                    counts[split]["skipped"] += len(result["skipped"])
                    records_by_type.update(spoof_type_name(row[5]) for row in result["kept"])
                    for _, _, _, spoof_type, reason in result["skipped"]:
                        name = spoof_type_name(spoof_type)
                        records_by_type[name] += 1
                        by_type.setdefault(name, Counter())[reason_kind(reason)] += 1
            os.replace(samples_tmp, output / f"{split}_samples.tsv")
    os.replace(skipped_tmp, skipped_path(output))
    manifest = {
        **manifest,
        "counts": counts,
        "records_by_type": dict(records_by_type),
        "skipped_by_type": {name: dict(reasons) for name, reasons in by_type.items()},
        "complete": True,
    }
    write_json(manifest_path(output), manifest)
    return summary_of(output, manifest, chunks_run)


def reason_kind(reason: str) -> str:
    """A reason without its per-file details, for counting (`frame 12: no face found (...)` -> `no face found`)."""
    if NO_FACE in reason:
        return NO_FACE
    reason = reason.split(": ", 1)[1] if reason.startswith(("frame ", "line ")) else reason
    return reason.split(" (")[0].split(", expected")[0].split(" x=")[0]


def summary_of(output: Path, manifest: dict[str, Any], chunks_run: int) -> Summary:
    counts = manifest["counts"]
    return Summary(
        output,
        {split: c["samples"] for split, c in counts.items()},
        {split: c["skipped"] for split, c in counts.items()},
        chunks_run,
        manifest.get("skipped_by_type", {}),
        manifest.get("records_by_type", {}),
    )


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader (or a resumed run) sees the old file or the new one, never half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
