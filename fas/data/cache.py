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

Caches of format version 1 (CelebA-Spoof only, boxes in the 224x224 frame) and 2 (the crop recorded as
size/scale/mode/interpolation) are still read.

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
from pathlib import Path
from typing import Any

from fas.convention import InputConvention
from fas.data.crop import BB_FRAME
from fas.data.sample import DatasetError, Sample

log = logging.getLogger(__name__)

FORMAT = "fas-face-crops"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
# Versions 1 and 2 recorded the crop under these names (`crop.size`, ...); version 3 as `InputConvention`'s.
OLD_CROP_NAMES = {"size": "input_size", "scale": "crop_scale", "mode": "crop_mode", "interpolation": "interpolation"}
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
    "video",  # added after version 3's first caches: read as None where a cache lacks it
)
SKIPPED_COLUMNS = ("split", "key", "file", "spoof_type", "reason")


def crop_of(manifest: dict[str, Any]) -> InputConvention:
    """The crop a cache holds, as the crop fields of an input convention (any readable version)."""
    crop = manifest["crop"]
    if manifest["version"] < 3:
        crop = {OLD_CROP_NAMES[key]: value for key, value in crop.items()}
    return InputConvention(**crop)


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
    convention: InputConvention,
    source: dict[str, Any],
    root: Path,
    chunk_size: int,
    rows: dict[str, int],
    files: dict[str, str],
) -> dict:
    """What a cache is made of; a re-run with different settings must not mix into it."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "crop": convention.crop_settings(),
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


def open_cache(cache: Path, convention: InputConvention, wanted_source: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a complete cache made with this convention's crop and this source's settings.

    Anything else is refused with the overrides that fit the cache, so the model's recorded input
    convention always describes the crops it was trained on.
    """
    manifest = read_manifest(cache)
    path = manifest_path(cache)
    made = crop_of(manifest)
    if made.crop_settings() != convention.crop_settings():
        raise DatasetError(
            f"{path}: the cache holds {made.describe_crop()}, the config asks for {convention.describe_crop()}. "
            f"Train with {made.crop_overrides()}, or prepare a matching cache: python -m fas.data.prepare "
            f"root={manifest['source']} output=<new folder> {convention.crop_overrides()}"
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
                    video=row.get("video") or None,
                )
            )
    return samples
