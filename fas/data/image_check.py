"""Decode every image a run will read before its first epoch, so a broken file is found up front.

A zero-byte, truncated or undecodable image would otherwise stop training mid-epoch, one file per run
(and from a loader worker, as a traceback). `check_images` decodes each file once, in parallel, and
remembers the outcome per file (path, size, modification time) in a table under the fas cache folder,
so the next run over the same data pays one `stat` per file. The datamodule turns the failures into
the same bad-sample list as a missing `_BB.txt`: refused with every file listed, or skipped with
`data.skip_bad_samples=true`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2

from fas.media import MediaError, read_image

log = logging.getLogger(__name__)

CHUNK = 256  # files per task of the process pool
PARALLEL_FROM = 512  # fewer unchecked files than this are decoded in this process
COLUMNS = ("path", "size", "mtime_ns", "width", "height", "reason")


@dataclass(frozen=True)
class ImageCheck:
    """What decoding a file gave: its size in pixels, or why it cannot be used (`reason`)."""

    width: int = 0
    height: int = 0
    reason: str = ""


def check_one(path: Path) -> ImageCheck:
    try:
        image = read_image(path)
    except MediaError as error:
        return ImageCheck(reason=error.reason)
    height, width = image.shape[:2]
    return ImageCheck(width, height)


def check_chunk(paths: Sequence[Path]) -> list[ImageCheck]:
    return [check_one(path) for path in paths]


def table_path(cache: Path, root: Path) -> Path:
    """One table per dataset folder, named by a hash of its absolute path."""
    digest = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return cache / "image_checks" / f"{digest}.tsv"


def read_table(path: Path) -> dict[str, tuple[int, int, ImageCheck]]:
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as file:
            return {
                row["path"]: (
                    int(row["size"]),
                    int(row["mtime_ns"]),
                    ImageCheck(int(row["width"]), int(row["height"]), row["reason"]),
                )
                for row in csv.DictReader(file, delimiter="\t")
            }
    except (OSError, KeyError, ValueError, csv.Error):
        log.warning("%s: unreadable image-check table; checking every image again", path)
        return {}


def write_table(path: Path, rows: dict[str, tuple[int, int, ImageCheck]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("w", newline="") as file:
        writer = csv.writer(file, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for name, (size, mtime, check) in rows.items():
            writer.writerow([name, size, mtime, check.width, check.height, check.reason])
    os.replace(tmp, path)


def check_images(paths: Sequence[Path], root: Path, cache: Path | None, workers: int = 1) -> dict[Path, ImageCheck]:
    """Decode each of `paths` (or reuse the cached outcome of an unchanged file); missing files fail too."""
    table_file = table_path(cache, root) if cache is not None else None
    table = read_table(table_file) if table_file is not None else {}
    results: dict[Path, ImageCheck] = {}
    todo: list[tuple[Path, int, int]] = []
    for path in dict.fromkeys(paths):
        try:
            stat = path.stat()
        except OSError:
            results[path] = ImageCheck(reason="image file missing")
            continue
        cached = table.get(str(path))
        if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            results[path] = cached[2]
        else:
            todo.append((path, stat.st_size, stat.st_mtime_ns))
    if todo:
        log.info("Checking %d image(s) that no earlier run checked (decoded once, then remembered)", len(todo))
        checks = decode_all([path for path, _, _ in todo], workers)
        for (path, size, mtime), check in zip(todo, checks, strict=True):
            results[path] = check
            table[str(path)] = (size, mtime, check)
        if table_file is not None:
            write_table(table_file, table)
    return results


def decode_all(paths: list[Path], workers: int) -> list[ImageCheck]:
    if workers <= 1 or len(paths) < PARALLEL_FROM:
        return check_chunk(paths)
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    # spawn: a forked child can inherit a lock held by a thread of OpenCV's or torch's pool and hang
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        return [check for chunk in pool.map(check_chunk, chunks) for check in chunk]
