"""The one reader of images and videos, for training, evaluation and prediction alike: strict, and safe
on files from others.

Every failure is a `MediaError` naming the file and the reason, raised per file, so a data source
lists its broken files and `fas.predict` reports them and carries on. What is checked, before any
pixel is decoded:

- an image's size, read from its header: one that declares more than the pixel limit (`max_pixels`,
  100 million by default; `max_image_pixels=` in every entry point's config) is refused, so a small
  file that declares 30000x30000 pixels cannot make the decoder ask for tens of gigabytes;
- a JPEG or PNG cut short is refused even where the decoder would return a partly grey image: it has
  no end marker after its last scan;
- a video file is opened only when its first bytes are those of a container fas reads (MP4/MOV, AVI,
  Matroska/WebM, MPEG program or transport stream, ASF/WMV): FFmpeg would otherwise also follow a
  playlist or a concat list saved under a video suffix, and read the files or addresses named in it.

Images come out as HxWx3 uint8 BGR, JPEGs with their EXIF orientation applied as `cv2.imread` (and so
both published pipelines) does. Grayscale, alpha and 16-bit files are converted, with a note saying
so; float pixels are refused.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fas.errors import FasError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv"})
EXIF_ORIENTED = frozenset({".jpg", ".jpeg"})
JPEG_START, JPEG_SCAN, JPEG_END = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"
PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND"
ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
FIX = "re-extract or re-copy it, or remove it from the dataset"

MAX_PIXELS_VARIABLE = "FAS_MAX_IMAGE_PIXELS"  # so that worker processes (spawned or forked) apply the same limit
DEFAULT_MAX_PIXELS = 100_000_000


class MediaError(FasError, ValueError):
    """An image or video cannot be used: `path` is the file at fault, `reason` why."""

    def __init__(self, path: str | Path, reason: str, fix: str = "") -> None:
        super().__init__(f"{path}: {reason}" + (f"; {fix}" if fix else ""))
        self.path = Path(path)
        self.reason = reason


@dataclass
class Frame:
    """One image to predict on: where it came from, its BGR pixels, and notes on how it was converted."""

    source: str
    index: int | None  # frame number in a video or camera stream; None for an image file
    image: np.ndarray
    notes: list[str] = field(default_factory=list)


def set_max_pixels(limit: int | None) -> None:
    """The largest image (width x height) any reader of this process and its workers decodes; None: the default."""
    if limit is None:
        os.environ.pop(MAX_PIXELS_VARIABLE, None)
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise MediaError("max_image_pixels", f"{limit!r} is not a positive number of pixels", "e.g. 100000000")
    else:
        os.environ[MAX_PIXELS_VARIABLE] = str(limit)


def max_pixels() -> int:
    return int(os.environ.get(MAX_PIXELS_VARIABLE) or DEFAULT_MAX_PIXELS)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_image(path: str | Path, notes: list[str] | None = None) -> np.ndarray:
    """An image file as HxWx3 uint8 BGR; `notes` (when given) receives what was converted."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MediaError(path, "image file missing", FIX) from None
    except OSError as error:
        raise MediaError(path, f"cannot read the image ({error.strerror or error})", FIX) from None
    if not data:
        raise MediaError(path, "empty image file", FIX)
    check_declared_size(path, data)
    if truncated(data):
        raise MediaError(path, "truncated image (no end-of-image marker)", FIX)
    oriented = path.suffix.lower() in EXIF_ORIENTED or data.startswith(JPEG_START)
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if oriented else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise MediaError(path, "cannot decode the image (corrupt or not an image)", FIX)
    image, conversions = to_bgr8(image, path)
    if notes is not None:
        notes.extend(conversions)
    return image


def check_declared_size(path: Path, data: bytes) -> None:
    """Refuse an image whose header declares more pixels than the limit (nothing is decoded here)."""
    limit = max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: the limit below is ours
            width, height = declared_size(data)
    except Image.DecompressionBombError:
        width, height = limit + 1, 1  # Pillow refuses to even open it: far above any sane limit
    except Exception:  # a format Pillow does not know or a broken header: OpenCV's decoder has the last word
        return
    if width * height > limit:
        raise MediaError(
            path,
            f"the image declares {width}x{height} pixels, more than the limit of {limit:,}",
            "shrink it, or raise max_image_pixels=<pixels> if it is genuine",
        )


def declared_size(data: bytes) -> tuple[int, int]:
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our limit decides; Pillow's only stops the header read beyond ~179 MP x 2
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def truncated(data: bytes) -> bool:
    """True for a JPEG with no end marker after its last scan, or a PNG with no IEND chunk.

    Scan data never holds a 0xFFD9 pair (0xFF bytes are stuffed), and bytes appended after the end
    marker (maker trailers, a second MPF picture) leave the check unaffected.
    """
    if data.startswith(JPEG_START):
        last_scan = data.rfind(JPEG_SCAN)
        return last_scan < 0 or data.find(JPEG_END, last_scan) < 0
    if data.startswith(PNG_SIGNATURE):
        return data.rfind(PNG_END) < 0
    return False


def to_bgr8(image: np.ndarray, path: Path | str) -> tuple[np.ndarray, list[str]]:
    """8-bit BGR from gray, gray+alpha, BGRA, 16-bit; refuses float and exotic channel counts."""
    notes = []
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
        notes.append("16-bit image reduced to 8 bits")
    elif image.dtype != np.uint8:
        raise MediaError(path, f"{image.dtype} pixels are not supported", "convert the image to 8-bit")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        notes.append("grayscale image replicated to 3 channels (the models learnt colour: scores are less reliable)")
    elif channels == 2:
        image = cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR)
        notes.append("grayscale image replicated to 3 channels, alpha channel dropped")
    elif channels == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        notes.append("alpha channel dropped")
    elif channels != 3:
        raise MediaError(path, f"{channels}-channel images are not supported")
    return image, notes


def media_files(folder: Path) -> list[Path]:
    """Every image and video file under `folder` (recursively), sorted; hidden files and folders are skipped."""
    files = []
    for directory, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            if not name.startswith(".") and (is_image_file(path) or is_video_file(path)):
                files.append(path)
    return files


def video_container(head: bytes) -> str | None:
    """The container family of a file's first bytes, or None when it is none fas reads."""
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"\x00\x00\x01\xba":
        return "mpeg-ps"
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return "mpeg-ts"
    if head[:16] == ASF_HEADER:
        return "asf"
    return None


def open_video(path: str | Path) -> cv2.VideoCapture:
    """An opened video file, after checking it is a real container (not a playlist under a video suffix)."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            head = stream.read(200)
    except FileNotFoundError:
        raise MediaError(path, "video file missing", FIX) from None
    except OSError as error:
        raise MediaError(path, f"cannot read the video ({error.strerror or error})", FIX) from None
    if video_container(head) is None:
        raise MediaError(
            path,
            "not an MP4/MOV, AVI, Matroska/WebM, MPEG or WMV video (a broken file, or another kind of file such as "
            "a playlist or concat list, which fas never follows)",
        )
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise MediaError(path, "cannot open the video (broken file or unsupported codec)", FIX)
    return capture


def open_camera(index: int) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise MediaError(f"camera {index}", "cannot open the video (no such camera, or it is busy)")
    return capture


def frame_count(path: Path) -> int:
    """The number of frames of a video file, counted by decoding when the container does not say."""
    capture = open_video(path)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:
            count = 0
            while capture.grab():
                count += 1
    finally:
        capture.release()
    if count == 0:
        raise MediaError(path, "the video has no frames", FIX)
    return count


def sampled_frames(count: int, frames_per_video: int | None, frame_stride: int | None) -> list[int]:
    """Which frames of a `count`-frame video become samples: every `frame_stride`-th, or
    `frames_per_video` evenly spaced (centred in equal parts of the video), or all of them."""
    if frame_stride:
        return list(range(0, count, frame_stride))
    if not frames_per_video or frames_per_video >= count:
        return list(range(count))
    return sorted({int((i + 0.5) * count / frames_per_video) for i in range(frames_per_video)})


def read_frames(path: Path, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray | MediaError]]:
    """The frames `indices` (ascending) of a video, decoded in one forward pass; a frame that cannot be
    decoded comes as the MediaError saying so, and the pass goes on."""
    capture = open_video(path)
    try:
        position, wanted = 0, sorted(set(indices))
        for index in wanted:
            ok = True
            while position < index and ok:
                ok = capture.grab()
                position += 1
            ok, image = capture.read() if ok else (False, None)
            position += 1
            if ok and image is not None:
                yield index, image
            else:
                yield index, MediaError(path, f"cannot decode frame {index} (the video ends or is broken there)")
    finally:
        capture.release()


def video_frames(capture: cv2.VideoCapture, source: str | int, max_frames: int | None = None) -> Iterator[Frame]:
    """Frames of an opened video or camera (BGR as OpenCV decodes them) until its end or max_frames; releases it."""
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
