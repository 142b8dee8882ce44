"""Data sources: where samples come from. Each yields the one sample record (`fas.data.sample.Sample`),
whatever its format, so the datamodule, `fas.data.prepare` and the reports never see a format's quirks.

    celeba_spoof.py   CelebA-Spoof, or any folder in its layout (the embedded generated data among them)
    folder.py         a user's folder tree of photos and videos in class folders
    manifest.py       a user's CSV / JSON Lines list of photos and videos

A new format is a subclass of `Source` (or of `MediaSource` for photos and videos whose faces may need
detecting) and a `configs/source/<name>.yaml`; docs/architecture.md walks through it.
"""

from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from fas.data.sample import BadSample, DatasetError, Sample, label_table
from fas.media import MediaError, frame_count, sampled_frames

LEAVES_ROOT = "a link to a file outside the data folder; fas reads only files inside it (copy the file in)"


def resolves_inside(path: Path, root: Path) -> bool:
    """True when `path`, its links followed, lies under `root` (its links followed too)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def positive_or_none(value: Any, key: str) -> int | None:
    """A setting that is a positive whole number or null, or a DatasetError naming its key."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DatasetError(f"{key}={value!r}: give a positive whole number, or null")
    return value


class Source(ABC):
    """What the datamodule and `fas.data.prepare` know of every data source.

    name       the source's name: its key under `data.sources`, in per-source metrics and cache names
    root       its folder (reports name it; a manifest's paths stay inside it)
    weight     its sampling weight when several sources are mixed (`data=mix`)
    cache      a packed crop cache to read its crops from (`python -m fas.data.prepare`), or None to read files
    prepared_by_datamodule
               True when the datamodule makes (and refreshes) the cache itself, detecting faces once
               (photos and videos without boxes); False when the cache must come ready-made
    splits     the parts it is divided into (`train`, `val`, `test`), or `("all",)` when it is not split
    """

    kind: ClassVar[str]
    prepared_by_datamodule: ClassVar[bool] = False

    def __init__(self, name: str, root: Path, weight: float = 1.0, cache: Path | str | None = None) -> None:
        self.name = name
        self.root = root
        self.weight = float(weight)
        self.cache = cache

    @property
    @abstractmethod
    def splits(self) -> tuple[str, ...]: ...

    @abstractmethod
    def prepare(self) -> None:
        """Check the source exists (or make it, for generated data); a DatasetError names what is wrong."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What identifies the samples it yields: a packed cache made with other settings is not its."""

    @abstractmethod
    def fingerprint(self, splits: Sequence[str] | None = None) -> dict[str, str]:
        """A digest per split of the files it reads: a cache made from other files is not its."""

    @abstractmethod
    def records(self, splits: Sequence[str] | None = None) -> Iterator[Sample | BadSample]:
        """Its records in a fixed order, `splits` only (default: all); what cannot be a sample is a BadSample."""

    def renamed(self, name: str) -> Source:
        """A copy under another name (a source configured as `data.sources.<name>` takes that name)."""
        if name == self.name:
            return self
        renamed = copy.copy(self)
        renamed.name = name
        return renamed

    def describe(self) -> str:
        return f"{self.name} ({self.root if self.root is not None else self.cache})"


class MediaSource(Source):
    """Photos and videos listed by a folder tree or a manifest: label names, video frame sampling, and a
    packed cache the datamodule prepares itself (`cache: auto` puts it under `<data_dir>/prepared/`), so
    the faces of records without a box are detected once."""

    prepared_by_datamodule = True

    def __init__(
        self,
        name: str,
        root: Path,
        labels: dict[str, Any] | None = None,
        frames_per_video: int | None = 8,
        frame_stride: int | None = None,
        weight: float = 1.0,
        cache: str | None = None,
    ) -> None:
        super().__init__(name, root, weight, "auto" if cache in (None, "auto") else Path(cache))
        self.labels = dict(labels or {})
        self.table = label_table(self.labels, f"data.sources.{name}")
        self.frames_per_video = positive_or_none(frames_per_video, f"data.sources.{name}.frames_per_video")
        self.frame_stride = positive_or_none(frame_stride, f"data.sources.{name}.frame_stride")

    def settings(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "root": str(Path(self.root).resolve()),
            "labels": {key: int(value) for key, value in sorted(self.table.items())},
            "frames_per_video": self.frames_per_video,
            "frame_stride": self.frame_stride,
        }

    def video_records(self, path: Path, key: str, box: tuple | None, **fields: Any) -> Iterator[Sample | BadSample]:
        """A video's sampled frames as records (one BadSample when it cannot be opened); `fields` are the
        record fields every frame shares (spoof type, subject, split)."""
        try:
            frames = sampled_frames(frame_count(path), self.frames_per_video, self.frame_stride)
        except MediaError as error:
            yield BadSample(path, error.reason, key, fields["split"], fields["spoof_type"])
            return
        for frame in frames:
            yield Sample(path=path, frame=frame, box=box, key=f"{key}#{frame}", source=self.name, **fields)
