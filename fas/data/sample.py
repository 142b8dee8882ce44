"""The one sample record every data source yields, and the errors of data sources.

CelebA-Spoof, a folder tree, a manifest and the frames of a video all become `Sample`s; the
datamodule, the subject split, `fas.data.prepare`, the packed cache and the reports consume these
records and never a format's quirks. A record that cannot become a sample is a `BadSample`: the file
at fault and why, so nothing is dropped without being listed.

Spoof types use the CelebA-Spoof numbering (label index 40), so every class scheme, the per-attack-type
APCER and the breakdowns work for any source; `UNKNOWN_ATTACK` is an attack whose type the source does
not say (a bare `spoof/` folder): pooled metrics count it, per-type tables list it as `unknown`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fas.convention import ClassScheme
from fas.data.crop import Box
from fas.errors import FasError
from fas.media import MediaError

log = logging.getLogger(__name__)

LIVE = 0
UNKNOWN_ATTACK = 11
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
    UNKNOWN_ATTACK: "unknown",
}
SPOOF_TYPE_NUMBERS = {name: number for number, name in SPOOF_TYPES.items()}
# Folder names and manifest labels -> spoof type, beside every SPOOF_TYPES name; a source's `labels`
# setting adds names or overrides these (e.g. labels.replay=9 for phone replays).
LABEL_NAMES = {
    **SPOOF_TYPE_NUMBERS,
    **dict.fromkeys(("real", "bonafide", "bona_fide", "genuine", "client"), 0),
    **dict.fromkeys(("spoof", "attack", "fake", "imposter", "impostor"), UNKNOWN_ATTACK),
    **dict.fromkeys(("print", "printed", "paper"), 1),
    "a4": 3,
    **dict.fromkeys(("mask", "paper_mask", "cut"), 4),
    **dict.fromkeys(("replay", "screen", "display", "monitor", "laptop"), 7),
    **dict.fromkeys(("tablet", "ipad"), 8),
    **dict.fromkeys(("mobile", "smartphone"), 9),
    "3d": 10,
}
# CelebA-Spoof's illumination and environment codes (label indices 41 and 42); other sources record 0.
ILLUMINATIONS = {0: "live", 1: "normal", 2: "strong", 3: "back", 4: "dark"}
ENVIRONMENTS = {0: "live", 1: "indoor", 2: "outdoor"}
SPOOF_TYPE_LIST = ", ".join(f"{number} {name}" for number, name in SPOOF_TYPES.items())
SPLITS = ("train", "val", "test")


class DatasetError(FasError, ValueError):
    """A dataset problem the user must fix; the message names the file and the fix."""


class SampleError(MediaError, DatasetError):
    """One sample cannot be used: `path` is the file at fault, `reason` says why (listed in bad-sample files).
    A file that cannot be read raises the `MediaError` this derives from; handlers catch that."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled face image, or one frame of a video.

    `box` is the face (x, y, w, h) in pixels of the image as stored, or, when `box_frame` is set, in a
    frame of that (width, height) to be scaled to the image (CelebA-Spoof's `_BB.txt` use 224x224);
    None means the face is to be detected. `split` is `train`, `val`, `test` or None when the source
    does not split its data. `key` identifies the sample within its source (a relative path, `#frame`
    appended for a video frame); `cache_row` is its row in a packed cache, None when read from files. `video`
    names the video (or extracted image sequence) a frame came from within its source, for decisions over a
    video's frames; None for a photo.
    """

    path: Path
    frame: int | None
    box: Box | None
    spoof_type: int
    subject: str
    split: str | None
    source: str
    key: str
    box_frame: tuple[int, int] | None = None
    illumination: int = 0
    environment: int = 0
    target: int | None = None
    cache_row: int | None = None
    video: str | None = None


@dataclass(frozen=True)
class BadSample:
    """A record that cannot be used: the file at fault, why, and (when known) its sample's key, split and type."""

    path: Path
    reason: str
    key: str = ""
    split: str | None = None
    spoof_type: int | None = None


def spoof_type_name(spoof_type: int | None) -> str:
    return "?" if spoof_type is None else SPOOF_TYPES.get(int(spoof_type), str(spoof_type))


def with_targets(samples: Iterable[Sample], class_scheme: ClassScheme, what: str) -> list[Sample]:
    """The samples whose spoof type the class scheme keeps, each with its class index as `target`.

    The others are counted in the log by spoof type, not returned (e.g. masks under `binary`).
    """
    kept: list[Sample] = []
    excluded: Counter[str] = Counter()
    for sample in samples:
        target = class_scheme.class_of(sample.spoof_type)
        if target is None:
            excluded[spoof_type_name(sample.spoof_type)] += 1
        else:
            kept.append(replace(sample, target=target))
    if excluded:
        log.info("%s: class scheme '%s' excludes %s", what, class_scheme.name, dict(excluded))
    return kept


def label_table(labels: dict[str, object] | None, where: str) -> dict[str, int]:
    """`LABEL_NAMES` with a source's own `labels` (name -> spoof type number or name) over it, lower-cased."""
    table = dict(LABEL_NAMES)
    for name, value in (labels or {}).items():
        table[str(name).lower()] = parse_spoof_type(value, f"{where}.labels.{name}")
    return table


def parse_spoof_type(value: object, where: str) -> int:
    """A spoof type given as its number or its name (`live`, `photo`, ..., `unknown`)."""
    text = str(value).strip().lower()
    if text.lstrip("-").isdigit() and int(text) in SPOOF_TYPES:
        return int(text)
    if text in SPOOF_TYPE_NUMBERS:
        return SPOOF_TYPE_NUMBERS[text]
    raise DatasetError(f"{where}: {value!r} is not a spoof type; use a number or a name of: {SPOOF_TYPE_LIST}")


def bb_path(image_path: Path) -> Path:
    """The `<name>_BB.txt` beside an image: its face box, as CelebA-Spoof and folder sources keep it."""
    return image_path.with_name(f"{image_path.stem}_BB.txt")


def read_box_file(path: Path) -> Box:
    """Parse a `_BB.txt`: `x y w h [score]`. Raises SampleError with the reason when it is unusable."""
    if not path.is_file():
        raise SampleError(path, "missing _BB.txt")
    fields = path.read_text(errors="replace").split()
    if len(fields) < 4:
        raise SampleError(path, f"malformed _BB.txt, expected 'x y w h score', got {' '.join(fields)!r}")
    return parse_box(fields[:4], path, "_BB.txt")


def parse_box(values: Sequence[object], path: Path, what: str) -> Box:
    """Four numbers x, y, w, h with positive finite sides, or a SampleError naming `what` was malformed."""
    try:
        x, y, w, h = (float(v) for v in values)
    except (TypeError, ValueError):
        shown = " ".join(str(v) for v in values)
        raise SampleError(path, f"malformed {what}, non-numeric values {shown!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise SampleError(path, f"degenerate box x={x} y={y} w={w} h={h}")
    return (x, y, w, h)
