"""Inputs for prediction: image files of any common format, folders, video files and cameras.

Every image becomes HxWx3 uint8 BGR, as the models' crops expect. Unusual files are converted with a
note (grayscale, alpha, 16-bit) or refused with a reason (corrupt, float pixels) — one file at a time,
so a folder run reports them and carries on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fas.errors import FasError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
EXIF_ORIENTED = {".jpg", ".jpeg"}


class MediaError(FasError, RuntimeError):
    """An input cannot be read; the message says which and why."""


@dataclass
class Frame:
    """One image to predict on: where it came from, its BGR pixels, and notes on how it was converted."""

    source: str
    index: int | None  # frame number in a video or camera stream; None for an image file
    image: np.ndarray
    notes: list[str] = field(default_factory=list)


def read_image(path: Path) -> Frame:
    """Decode an image file to 8-bit BGR.

    JPEGs are decoded with their EXIF orientation applied, as `cv2.imread` (and so both published
    pipelines) does; other formats are decoded unchanged so that alpha and 16-bit are seen and noted.
    """
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as error:
        raise MediaError(f"{path}: cannot open ({error.strerror})") from None
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if path.suffix.lower() in EXIF_ORIENTED else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise MediaError(f"{path}: cannot decode the image (corrupt, truncated or not an image)")
    image, notes = to_bgr8(image, path)
    return Frame(str(path), None, image, notes)


def to_bgr8(image: np.ndarray, path: Path | str) -> tuple[np.ndarray, list[str]]:
    """8-bit BGR from gray, gray+alpha, BGRA, 16-bit; refuses float and exotic channel counts."""
    notes = []
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
        notes.append("16-bit image reduced to 8 bits")
    elif image.dtype != np.uint8:
        raise MediaError(f"{path}: {image.dtype} pixels are not supported; convert the image to 8-bit")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        notes.append("grayscale image replicated to 3 channels (the models learnt colour: scores are less reliable)")
    elif channels == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        notes.append("alpha channel dropped")
    elif channels != 3:
        raise MediaError(f"{path}: {channels}-channel images are not supported")
    return image, notes


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def open_video(source: str | int) -> cv2.VideoCapture:
    """A video file or camera index, opened; a clear error when OpenCV cannot open it."""
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        what = f"camera {source}" if isinstance(source, int) else str(source)
        raise MediaError(f"{what}: cannot open the video (missing file, unsupported codec or no such camera)")
    return capture


def video_frames(capture: cv2.VideoCapture, source: str | int, max_frames: int | None = None) -> Iterator[Frame]:
    """Frames of an opened video (BGR as OpenCV decodes them) until its end or max_frames; releases it."""
    try:
        index = 0
        while max_frames is None or index < max_frames:
            ok, image = capture.read()
            if not ok:
                break
            yield Frame(str(source), index, image)
            index += 1
    finally:
        capture.release()
