"""Reader of the CelebA-Spoof layout: label JSON -> samples, `_BB.txt` -> face box, class scheme -> target.

Layout: `<root>/Data/{train,test}/<subject>/{live,spoof}/<id>.{jpg,png}` with `<id>_BB.txt` beside each
image, labels in `<root>/metas/intra_test/{train,test}_label.json` as `{"Data/train/...jpg": [44 ints]}`.
The cross-test protocols keep the same label files under `metas/protocol1/` and
`metas/protocol2/test_on_{high,middle,low}_quality_device/`: pass that folder as `protocol`.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fas.convention import ClassScheme, InputConvention
from fas.data.crop import Box, bb224_to_pixels, crop_face, is_valid_box
from fas.errors import FasError

log = logging.getLogger(__name__)

LABEL_LENGTH = 44
SPOOF_TYPE, ILLUMINATION, ENVIRONMENT, LIVE_OR_SPOOF = 40, 41, 42, 43
SPOOF_TYPES = {
    0: "live",
    1: "photo",
    2: "poster",
    3: "a4",
    4: "face_mask",
    5: "upper_body_mask",
    6: "region_mask",
    7: "pc",
    8: "pad",
    9: "phone",
    10: "3d_mask",
}
ILLUMINATIONS = {0: "live", 1: "normal", 2: "strong", 3: "back", 4: "dark"}
ENVIRONMENTS = {0: "live", 1: "indoor", 2: "outdoor"}


class DatasetError(FasError, ValueError):
    """A dataset problem the user must fix; the message names the file and the fix."""


class SampleError(DatasetError):
    """One sample cannot be used: `path` is the file at fault, `reason` says why (listed in bad-sample files)."""

    def __init__(self, path: Path, reason: str, fix: str = "") -> None:
        super().__init__(f"{path}: {reason}" + (f"; {fix}" if fix else ""))
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class Sample:
    """One labelled image. `box_224` is the `_BB.txt` box, still in the 224x224 frame."""

    key: str
    image_path: Path
    box_224: Box
    subject: str
    spoof_type: int
    illumination: int
    environment: int
    target: int
    cache_row: int | None = None  # row of the crop in a packed cache (fas.data.cache); None: crop from the image


@dataclass(frozen=True)
class BadSample:
    path: Path
    reason: str


DEFAULT_PROTOCOL = "intra_test"
JPEG_START, JPEG_SCAN, JPEG_END = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"
PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND"


def label_file(root: Path, split: str, protocol: str = DEFAULT_PROTOCOL) -> Path:
    """`metas/<protocol>/<split>_label.json`; protocol is e.g. `intra_test` or `protocol1`."""
    return Path(root) / "metas" / protocol / f"{split}_label.json"


def available_protocols(root: Path) -> list[str]:
    """Protocol folders under `metas/` that hold a train label file, e.g. `protocol2/test_on_low_quality_device`."""
    metas = Path(root) / "metas"
    return sorted(str(p.parent.relative_to(metas)) for p in metas.rglob("train_label.json")) if metas.is_dir() else []


def bb_path(image_path: Path) -> Path:
    return image_path.with_name(f"{image_path.stem}_BB.txt")


def read_bb(path: Path) -> Box:
    """Parse `x y w h score` (224 frame). Raises SampleError with the reason when it is unusable."""
    if not path.is_file():
        raise SampleError(path, "missing _BB.txt")
    fields = path.read_text(errors="replace").split()
    if len(fields) < 4:
        raise SampleError(path, f"malformed _BB.txt, expected 'x y w h score', got {' '.join(fields)!r}")
    try:
        x, y, w, h = (float(v) for v in fields[:4])
    except ValueError:
        raise SampleError(path, f"malformed _BB.txt, non-numeric values {' '.join(fields[:4])!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise SampleError(path, f"degenerate box x={x} y={y} w={w} h={h}")
    if x >= 224 or y >= 224 or x + w <= 0 or y + h <= 0:
        raise SampleError(path, f"box x={x} y={y} w={w} h={h} lies outside the 224x224 frame")
    return (x, y, w, h)


def load_labels(path: Path) -> dict[str, list[int]]:
    """Read a CelebA-Spoof label JSON and check every entry has 44 integers."""
    if not path.is_file():
        raise DatasetError(
            f"{path}: label file not found. Point data.root at a CelebA-Spoof copy "
            "(the folder that holds Data/ and metas/), or use data=synthetic."
        )
    try:
        labels = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(labels, dict):
        raise DatasetError(f"{path}: expected an object mapping image paths to 44-integer label lists")
    for key, vector in labels.items():
        if not isinstance(vector, list) or len(vector) != LABEL_LENGTH:
            raise DatasetError(f"{path}: entry {key!r} must be a list of {LABEL_LENGTH} integers")
    return labels


def subject_of(key: str) -> str:
    """`Data/train/4930/live/000001.jpg` -> `4930`."""
    parts = Path(key).parts
    return parts[2] if len(parts) >= 5 else parts[0]


def iter_labels(path: Path, lookahead: int = 1 << 16) -> Iterator[tuple[str, list[int]]]:
    """Stream the (key, 44-integer vector) entries of a label JSON in file order, holding ~100 KB of it.

    For preparation, whose memory must not grow with the dataset; `load_labels` is the fast
    whole-file reader. Entries are checked as `load_labels` checks them.
    """
    if not path.is_file():
        load_labels(path)  # raises the missing-file error
    decoder = json.JSONDecoder()
    with Path(path).open(encoding="utf-8") as file:
        text, pos, at_end = "", 0, False

        def token(expected: str | None = None) -> str:
            """Skip whitespace, keeping `lookahead` characters buffered; return (and pass) one character."""
            nonlocal text, pos, at_end
            if len(text) - pos < lookahead and not at_end:
                more = file.read(lookahead)
                text, pos, at_end = text[pos:] + more, 0, not more
            while pos < len(text) and text[pos].isspace():
                pos += 1
            char = text[pos : pos + 1]
            if expected is not None and (not char or char not in expected):
                raise DatasetError(f"{path}: not valid JSON (expected {expected!r} at entry {count + 1})")
            return char

        def value() -> Any:
            """Decode one JSON value, reading on while it is cut by the end of the buffer."""
            nonlocal text, pos, at_end
            token()
            while True:
                try:
                    parsed, pos = decoder.raw_decode(text, pos)
                    return parsed
                except json.JSONDecodeError as error:
                    more = "" if at_end else file.read(lookahead)
                    if not more:
                        raise DatasetError(f"{path}: not valid JSON ({error.msg} at entry {count + 1})") from None
                    text += more

        count = 0
        token("{")
        pos += 1
        if token() == "}":
            return
        while True:
            key = value()
            token(":")
            pos += 1
            vector = value()
            if not isinstance(key, str) or not isinstance(vector, list) or len(vector) != LABEL_LENGTH:
                raise DatasetError(f"{path}: entry {key!r} must be a list of {LABEL_LENGTH} integers")
            yield key, vector
            count += 1
            if token(",}") == "}":
                return
            pos += 1


def protocol_label_file(root: Path, split: str, protocol: str = DEFAULT_PROTOCOL) -> Path:
    """The label file of a split under a protocol; a missing protocol names the ones that exist."""
    path = label_file(root, split, protocol)
    found = available_protocols(root)
    if not path.is_file() and found and protocol not in found:
        raise DatasetError(
            f"{path}: no '{protocol}' protocol in {Path(root) / 'metas'}; "
            f"set data.protocol to one of: {', '.join(found)}"
        )
    return path


def protocol_labels(root: Path, split: str, protocol: str = DEFAULT_PROTOCOL) -> dict[str, list[int]]:
    """The labels of a split under a protocol (see `protocol_label_file`)."""
    return load_labels(protocol_label_file(root, split, protocol))


def count_excluded(split: str, class_scheme: ClassScheme, excluded: Counter[str]) -> None:
    if excluded:
        log.info("%s split: class scheme '%s' excludes %s", split, class_scheme.name, dict(excluded))


def read_split(
    root: Path, split: str, class_scheme: ClassScheme, protocol: str = DEFAULT_PROTOCOL
) -> tuple[list[Sample], list[BadSample]]:
    """All samples of a split the class scheme keeps, plus the ones that cannot be used and why.

    Samples whose spoof type the scheme excludes are counted in the log, not returned.
    """
    root = Path(root)
    labels = protocol_labels(root, split, protocol)
    samples: list[Sample] = []
    bad: list[BadSample] = []
    excluded: Counter[str] = Counter()
    for key, vector in labels.items():
        spoof_type = int(vector[SPOOF_TYPE])
        target = class_scheme.class_of(spoof_type)
        if target is None:
            excluded[SPOOF_TYPES.get(spoof_type, str(spoof_type))] += 1
            continue
        image_path = root / key
        if not image_path.is_file():
            bad.append(BadSample(image_path, "image file missing"))
            continue
        try:
            box = read_bb(bb_path(image_path))
        except SampleError as error:
            bad.append(BadSample(error.path, error.reason))
            continue
        samples.append(
            Sample(
                key=key,
                image_path=image_path,
                box_224=box,
                subject=subject_of(key),
                spoof_type=spoof_type,
                illumination=int(vector[ILLUMINATION]),
                environment=int(vector[ENVIRONMENT]),
                target=target,
            )
        )
    count_excluded(split, class_scheme, excluded)
    return samples, bad


def read_image(path: Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 BGR (EXIF orientation applied, as `cv2.imread` does).

    Grayscale, RGBA and 16-bit files are converted. A JPEG or PNG cut short is refused even where the
    decoder would return a partly grey image (OpenCV 4 does): it has no end marker after its last scan.
    """
    fix = "re-extract it from the dataset archive or remove it from the label file"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SampleError(path, "image file missing", fix) from None
    except OSError as error:
        raise SampleError(path, f"cannot read the image ({error.strerror or error})", fix) from None
    if not data:
        raise SampleError(path, "empty image file", fix)
    if truncated(data):
        raise SampleError(path, "truncated image (no end-of-image marker)", fix)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SampleError(path, "cannot decode the image (corrupt or not an image)", fix)
    return image


def crop_sample(
    image_path: Path, box_224: Box, convention: InputConvention, interpolation: str | None = None
) -> np.ndarray:
    """The face crop of one sample as HxWx3 uint8 RGB, before augmentation (SampleError if unusable)."""
    image = read_image(image_path)
    height, width = image.shape[:2]
    box = bb224_to_pixels(box_224, width, height)
    problem = box_problem(box, width, height)
    if problem:
        raise SampleError(image_path, problem)
    try:
        crop = crop_face(image, box, convention, interpolation)
    except (cv2.error, ValueError) as error:
        raise SampleError(image_path, f"crop failed ({str(error).strip().splitlines()[-1]})") from None
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def box_problem(box: Box, width: int, height: int) -> str | None:
    """Why a face box (pixels) cannot be cropped from a width x height image, or None when it can."""
    if is_valid_box(box, width, height):
        return None
    x, y, w, h = (round(v, 1) for v in box)
    return f"face box x={x} y={y} w={w} h={h} is under a pixel or outside the {width}x{height} image"


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
