"""The packed crop cache: every face of a data source's split cropped once into one uint8 array.

`python -m fas.data.prepare` (fas/data/prepare.py) writes it; `data.cache=<folder>` trains from it, and
folder and manifest sources are prepared into one automatically (their faces detected once).

    <cache>/manifest.json        format version, crop settings, source settings and files, counts, `complete`
    <cache>/<split>_images.npy   (rows, size, size, 3) uint8 RGB; row i is the source's i-th record of the
                                 split (rows of skipped records stay zero and are never read)
    <cache>/<split>_samples.tsv  the rows that hold a crop: the sample record (key, file, frame, subject,
                                 spoof type, illumination, environment), the face box in pixels and
                                 whether it was given or detected (with the detector's score)
    <cache>/skipped.tsv          every record that could not be cropped, the file at fault, its type and why
    <cache>/chunks/              one result file per finished chunk: what makes a re-run resume

Caches of format version 1 (CelebA-Spoof only, boxes in the 224x224 frame) are still read.

Why raw uint8 in a memory-mapped .npy rather than re-encoded JPEG shards (WebDataset, LitData):
spoof cues are high-frequency (moire, halftone, sub-pixel stripes), and a second lossy generation
would alter exactly those; at 80-128 px a raw crop is 19-49 KB (12-31 GB for all of CelebA-Spoof),
reading it costs a page-cache copy and no decode, any row can be read in any order (a true shuffle,
not a shuffle buffer over sequential tar streams), and numpy needs no extra dependency.

Crops are stored at the model's input size, made by exactly the rule inference uses, so evaluation
sees what deployment sees; augmentation (a 90-100% random resized crop, rotation, flip) then works on
that crop as with individual images and as Silent-Face did.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fas.convention import CROP_MODES, InputConvention
from fas.data.crop import BB_FRAME, interpolation_flag
from fas.data.sample import DatasetError, Sample
from fas.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "fas-face-crops"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SKIPPED = "skipped.tsv"
SAMPLE_COLUMNS = (
    "row",
    "key",
    "file",
    "frame",
    "subject",
    "spoof_type",
    "illumination",
    "environment",
    "x",
    "y",
    "w",
    "h",
    "box_from",
    "detector_score",
)
SKIPPED_COLUMNS = ("split", "key", "file", "spoof_type", "reason")


@dataclass(frozen=True)
class CropSpec:
    """How the cached crops were made: output size, box expansion, crop rule and resampling.

    `interpolation` None means each rule's own (see fas.data.crop.INTERPOLATIONS).
    """

    size: int = 80
    scale: float = 2.7
    mode: str = "shift"
    interpolation: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "scale", float(self.scale))
        if self.mode not in CROP_MODES:
            raise ConfigError(f"crop mode must be one of {', '.join(CROP_MODES)}, got {self.mode!r}")
        if self.size < 16 or self.scale <= 0:
            raise ConfigError(f"crop size must be at least 16 and scale positive, got {self.size} and {self.scale}")
        interpolation_flag(self.interpolation, 0)

    def convention(self) -> InputConvention:
        """The crop part of an input convention (colour and normalisation are applied at load time)."""
        return InputConvention(input_size=self.size, crop_scale=self.scale, crop_mode=self.mode)

    def describe(self) -> str:
        interpolation = self.interpolation or "the rule's own interpolation"
        return f"{self.size}x{self.size} crops at scale {self.scale:g} ({self.mode}, {interpolation})"

    def as_data_overrides(self) -> str:
        interpolation = self.interpolation or "null"
        return (
            f"data.input_size={self.size} data.crop_scale={self.scale:g} data.crop_mode={self.mode} "
            f"data.crop_interpolation={interpolation}"
        )

    def as_prepare_overrides(self) -> str:
        interpolation = self.interpolation or "null"
        return (
            f"crop.size={self.size} crop.scale={self.scale:g} crop.mode={self.mode} crop.interpolation={interpolation}"
        )


def manifest_path(cache: Path) -> Path:
    return Path(cache) / MANIFEST


def images_path(cache: Path, split: str) -> Path:
    return Path(cache) / f"{split}_images.npy"


def samples_path(cache: Path, split: str) -> Path:
    return Path(cache) / f"{split}_samples.tsv"


def skipped_path(cache: Path) -> Path:
    return Path(cache) / SKIPPED


def chunk_path(cache: Path, split: str, index: int) -> Path:
    return Path(cache) / "chunks" / f"{split}_{index:05d}.json"


def settings(
    crop: CropSpec, source: dict[str, Any], root: Path, chunk_size: int, rows: dict[str, int], files: dict[str, str]
) -> dict:
    """What a cache is made of; a re-run with different settings must not mix into it."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "crop": asdict(crop),
        "source_settings": source,
        "source": str(root),
        "chunk_size": chunk_size,
        "rows": rows,
        "files_sha256": files,
    }


def read_manifest(cache: Path) -> dict[str, Any]:
    path = manifest_path(cache)
    if not path.is_file():
        raise DatasetError(
            f"{path}: no cache manifest. Point data.cache at a folder made by "
            "`python -m fas.data.prepare root=<CelebA_Spoof> output=<folder>`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: unreadable cache manifest ({error}); prepare the cache again") from None
    if manifest.get("format") != FORMAT or manifest.get("version") not in READABLE_VERSIONS:
        raise DatasetError(
            f"{path}: cache format {manifest.get('format')} v{manifest.get('version')}, this fas reads {FORMAT} "
            f"v{'/'.join(map(str, READABLE_VERSIONS))}; prepare the cache again into a new folder"
        )
    return manifest


def source_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The source settings a cache was made with (a version-1 cache: CelebA-Spoof and its protocol)."""
    if manifest["version"] == 1:
        return {"kind": "celeba_spoof", "protocol": manifest["protocol"]}
    return manifest["source_settings"]


def open_cache(cache: Path, crop: CropSpec, wanted_source: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a complete cache made with these crop settings and this source's settings.

    Anything else is refused with the overrides that fit the cache, so the model's recorded input
    convention always describes the crops it was trained on.
    """
    manifest = read_manifest(cache)
    path = manifest_path(cache)
    made = CropSpec(**manifest["crop"])
    if made != crop:
        raise DatasetError(
            f"{path}: the cache holds {made.describe()}, the config asks for {crop.describe()}. "
            f"Train with {made.as_data_overrides()}, or prepare a matching cache: python -m fas.data.prepare "
            f"root={manifest['source']} output=<new folder> {crop.as_prepare_overrides()}"
        )
    differences = settings_differences(source_settings(manifest), wanted_source)
    if differences:
        key, made_value, wanted_value = differences[0]
        raise DatasetError(
            f"{path}: the cache was made for {key} {made_value!r}, the config asks for {wanted_value!r}. "
            f"Set data.{key}={made_value}, or prepare a cache with source.{key}={wanted_value}"
        )
    if not manifest.get("complete"):
        raise DatasetError(
            f"{path}: the cache is incomplete (preparation was interrupted); run the same "
            f"`python -m fas.data.prepare ... output={Path(cache)}` again to finish it"
        )
    return manifest


def settings_differences(made: dict[str, Any], wanted: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [
        (key, made.get(key), wanted.get(key))
        for key in sorted(set(made) | set(wanted))
        if made.get(key) != wanted.get(key)
    ]


def cached_splits(cache: Path) -> list[str]:
    return list(read_manifest(cache)["rows"])


def read_cached_split(cache: Path, split: str, source_name: str) -> list[Sample]:
    """The cached samples of a split, each with its `cache_row` (the class scheme is applied by the caller)."""
    manifest = read_manifest(cache)
    root = Path(manifest["source"])
    samples: list[Sample] = []
    with samples_path(cache, split).open(newline="") as file:
        for row in csv.DictReader(file, delimiter="\t"):
            box = (float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]))
            if manifest["version"] == 1:  # CelebA-Spoof: the image under the source root, the _BB.txt frame
                path, frame, box_frame = root / row["key"], None, (BB_FRAME, BB_FRAME)
            else:
                path, box_frame = Path(row["file"]), None
                frame = int(row["frame"]) if row["frame"] else None
            samples.append(
                Sample(
                    path=path,
                    frame=frame,
                    box=box,
                    spoof_type=int(row["spoof_type"]),
                    subject=row["subject"],
                    split=None if split == "all" else split,
                    source=source_name,
                    key=row["key"],
                    box_frame=box_frame,
                    illumination=int(row["illumination"]),
                    environment=int(row["environment"]),
                    cache_row=int(row["row"]),
                )
            )
    return samples
