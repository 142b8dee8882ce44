"""Reading training and evaluation media: image files and the frames of video files, strictly.

Every failure is a `SampleError` naming the file and the reason, so a data source lists its broken
files instead of stopping on the first. Video files are opened only when their first bytes are those
of a container fas reads (MP4/MOV, AVI, Matroska/WebM): FFmpeg would otherwise also follow a playlist
or a concat list saved under a video suffix, and read files or addresses named in it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from fas.data.sample import SampleError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
JPEG_START, JPEG_SCAN, JPEG_END = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"
PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND"
IMAGE_FIX = "re-extract or re-copy it, or remove it from the dataset"


def read_image(path: Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 BGR (EXIF orientation applied, as `cv2.imread` does).

    Grayscale, RGBA and 16-bit files are converted. A JPEG or PNG cut short is refused even where the
    decoder would return a partly grey image (OpenCV 4 does): it has no end marker after its last scan.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SampleError(path, "image file missing", IMAGE_FIX) from None
    except OSError as error:
        raise SampleError(path, f"cannot read the image ({error.strerror or error})", IMAGE_FIX) from None
    if not data:
        raise SampleError(path, "empty image file", IMAGE_FIX)
    if truncated(data):
        raise SampleError(path, "truncated image (no end-of-image marker)", IMAGE_FIX)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SampleError(path, "cannot decode the image (corrupt or not an image)", IMAGE_FIX)
    return image


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


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def video_container(head: bytes) -> str | None:
    """The container family of a file's first bytes, or None when it is none fas reads."""
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    return None


def open_video(path: Path) -> cv2.VideoCapture:
    """An opened video file, after checking it is a real container (not a playlist under a video suffix)."""
    try:
        with Path(path).open("rb") as stream:
            head = stream.read(16)
    except FileNotFoundError:
        raise SampleError(path, "video file missing", IMAGE_FIX) from None
    except OSError as error:
        raise SampleError(path, f"cannot read the video ({error.strerror or error})", IMAGE_FIX) from None
    if video_container(head) is None:
        raise SampleError(path, "not an MP4/MOV, AVI or Matroska/WebM video (broken, or another kind of file)")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SampleError(path, "cannot open the video (broken file or unsupported codec)", IMAGE_FIX)
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
        raise SampleError(path, "the video has no frames", IMAGE_FIX)
    return count


def sampled_frames(count: int, frames_per_video: int | None, frame_stride: int | None) -> list[int]:
    """Which frames of a `count`-frame video become samples: every `frame_stride`-th, or
    `frames_per_video` evenly spaced (centred in equal parts of the video), or all of them."""
    if frame_stride:
        return list(range(0, count, frame_stride))
    if not frames_per_video or frames_per_video >= count:
        return list(range(count))
    return sorted({int((i + 0.5) * count / frames_per_video) for i in range(frames_per_video)})


def read_frames(path: Path, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray | SampleError]]:
    """The frames `indices` (ascending) of a video, decoded in one forward pass; a frame that cannot be
    decoded comes as the SampleError saying so, and the pass goes on."""
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
                yield index, SampleError(path, f"cannot decode frame {index} (the video ends or is broken there)")
    finally:
        capture.release()
