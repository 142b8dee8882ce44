"""Reader of the CelebA-Spoof layout: label JSON -> samples, `_BB.txt` -> face box, class scheme -> target.

Layout: `<root>/Data/{train,test}/<subject>/{live,spoof}/<id>.{jpg,png}` with `<id>_BB.txt` beside each
image, labels in `<root>/metas/intra_test/{train,test}_label.json` as `{"Data/train/...jpg": [44 ints]}`.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fas.convention import ClassScheme
from fas.data.crop import Box
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


@dataclass(frozen=True)
class BadSample:
    path: Path
    reason: str


def label_file(root: Path, split: str) -> Path:
    return Path(root) / "metas" / "intra_test" / f"{split}_label.json"


def bb_path(image_path: Path) -> Path:
    return image_path.with_name(f"{image_path.stem}_BB.txt")


def read_bb(path: Path) -> Box:
    """Parse `x y w h score` (224 frame). Raises DatasetError with the reason when it is unusable."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing _BB.txt")
    fields = path.read_text().split()
    if len(fields) < 4:
        raise DatasetError(f"{path}: malformed _BB.txt, expected 'x y w h score', got {' '.join(fields)!r}")
    try:
        x, y, w, h = (float(v) for v in fields[:4])
    except ValueError:
        raise DatasetError(f"{path}: malformed _BB.txt, non-numeric values {' '.join(fields[:4])!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise DatasetError(f"{path}: degenerate box x={x} y={y} w={w} h={h}")
    if x >= 224 or y >= 224 or x + w <= 0 or y + h <= 0:
        raise DatasetError(f"{path}: box x={x} y={y} w={w} h={h} lies outside the 224x224 frame")
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


def read_split(root: Path, split: str, class_scheme: ClassScheme) -> tuple[list[Sample], list[BadSample]]:
    """All samples of a split the class scheme keeps, plus the ones that cannot be used and why.

    Samples whose spoof type the scheme excludes are counted in the log, not returned.
    """
    root = Path(root)
    labels = load_labels(label_file(root, split))
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
        except DatasetError as error:
            bad.append(BadSample(bb_path(image_path), str(error).split(": ", 1)[-1]))
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
    if excluded:
        log.info("%s split: class scheme '%s' excludes %s", split, class_scheme.name, dict(excluded))
    return samples, bad


def read_image(path: Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 BGR; grayscale, RGBA and 16-bit files are converted."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(
            f"{path}: cannot read the image (missing, truncated or not an image); remove it from the label file"
        )
    return image
