"""The packed crop cache: every face of a CelebA-Spoof split cropped once into one uint8 array.

`python -m fas.data.prepare` (fas/data/prepare.py) writes it; `data.cache=<folder>` trains from it.

    <cache>/manifest.json        format version, crop settings, protocol, source, counts, `complete`
    <cache>/<split>_images.npy   (rows, size, size, 3) uint8 RGB; row i is the i-th entry of the label
                                 file (rows of skipped samples stay zero and are never read)
    <cache>/<split>_samples.tsv  the rows that hold a crop: row, key, subject, spoof type, illumination,
                                 environment and the `_BB.txt` box
    <cache>/skipped.tsv          every sample that could not be cropped, the file at fault and why
    <cache>/chunks/              one result file per finished chunk: what makes a re-run resume

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
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fas.convention import CROP_MODES, ClassScheme, InputConvention
from fas.data.celeba_spoof import SPOOF_TYPES, DatasetError, Sample, count_excluded
from fas.data.crop import interpolation_flag
from fas.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "fas-face-crops"
VERSION = 1
MANIFEST = "manifest.json"
SKIPPED = "skipped.tsv"
SAMPLE_COLUMNS = ("row", "key", "subject", "spoof_type", "illumination", "environment", "x", "y", "w", "h")
SKIPPED_COLUMNS = ("split", "key", "file", "reason")


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
    crop: CropSpec, protocol: str, source: Path, chunk_size: int, rows: dict[str, int], labels_sha256: dict[str, str]
) -> dict:
    """What a cache is made of; a re-run with different settings must not mix into it."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "crop": asdict(crop),
        "protocol": protocol,
        "source": str(source),
        "chunk_size": chunk_size,
        "rows": rows,
        "labels_sha256": labels_sha256,
    }


def read_manifest(cache: Path) -> dict[str, Any]:
    path = manifest_path(cache)
    if not path.is_file():
        raise DatasetError(
            f"{path}: no cache manifest. Point data.cache at a folder made by "
            "`python -m fas.data.prepare root=<CelebA_Spoof> output=<folder>`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DatasetError(
            f"{path}: cache format {manifest.get('format')} v{manifest.get('version')}, this fas reads {FORMAT} "
            f"v{VERSION}; prepare the cache again into a new folder"
        )
    return manifest


def open_cache(cache: Path, crop: CropSpec, protocol: str) -> dict[str, Any]:
    """The manifest of a complete cache made with these crop settings and protocol.

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
    if manifest["protocol"] != protocol:
        raise DatasetError(
            f"{path}: the cache was made for protocol '{manifest['protocol']}', the config asks for '{protocol}'. "
            f"Set data.protocol={manifest['protocol']}, or prepare a cache with protocol={protocol}"
        )
    if not manifest.get("complete"):
        raise DatasetError(
            f"{path}: the cache is incomplete (preparation was interrupted); run the same "
            f"`python -m fas.data.prepare ... output={Path(cache)}` again to finish it"
        )
    return manifest


def read_cached_split(cache: Path, split: str, class_scheme: ClassScheme) -> list[Sample]:
    """The cached samples of a split that the class scheme keeps, each with its `cache_row`."""
    manifest = read_manifest(cache)
    source = Path(manifest["source"])
    samples: list[Sample] = []
    excluded: Counter[str] = Counter()
    with samples_path(cache, split).open(newline="") as file:
        for row in csv.DictReader(file, delimiter="\t"):
            spoof_type = int(row["spoof_type"])
            target = class_scheme.class_of(spoof_type)
            if target is None:
                excluded[SPOOF_TYPES.get(spoof_type, str(spoof_type))] += 1
                continue
            samples.append(
                Sample(
                    key=row["key"],
                    image_path=source / row["key"],
                    box_224=(float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"])),
                    subject=row["subject"],
                    spoof_type=spoof_type,
                    illumination=int(row["illumination"]),
                    environment=int(row["environment"]),
                    target=target,
                    cache_row=int(row["row"]),
                )
            )
    count_excluded(split, class_scheme, excluded)
    return samples
