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

FACE_CROP_FRAME = (1, 1)  # a face crop's box is given as a fraction of the image (`Sample.box_frame`)
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
    the faces of records without a box are detected once.

    With `face_crops` the images (and video frames) are faces already cropped, as many public copies of PAD
    sets keep them: a record without a box of its own gets the image's centred 1 / `face_crop_scale` part as
    its face box, and nothing is detected. `face_crop_scale` is how much larger than the face the crops were cut
    (1: the image is the face box), so each model's crop rule (its scale about the box, its padding where the
    crop leaves the image) applies to the face as it would on a full frame.
    """

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
        face_crops: bool = False,
        face_crop_scale: float = 1.0,
    ) -> None:
        super().__init__(name, root, weight, "auto" if cache in (None, "auto") else Path(cache))
        self.labels = dict(labels or {})
        self.table = label_table(self.labels, f"data.sources.{name}")
        self.frames_per_video = positive_or_none(frames_per_video, f"data.sources.{name}.frames_per_video")
        self.frame_stride = positive_or_none(frame_stride, f"data.sources.{name}.frame_stride")
        if not isinstance(face_crops, bool):
            raise DatasetError(f"data.sources.{name}.face_crops={face_crops!r}: give true or false")
        if isinstance(face_crop_scale, bool) or not isinstance(face_crop_scale, int | float) or face_crop_scale < 1:
            raise DatasetError(
                f"data.sources.{name}.face_crop_scale={face_crop_scale!r}: give how many times larger than the face "
                "the crops were cut, a number >= 1 (1: the image is the face box)"
            )
        self.face_crops = face_crops
        self.face_crop_scale = float(face_crop_scale)

    def settings(self) -> dict[str, Any]:
        crops = {"face_crops": True, "face_crop_scale": self.face_crop_scale} if self.face_crops else {}
        return {
            "kind": self.kind,
            "root": str(Path(self.root).resolve()),
            "labels": {key: int(value) for key, value in sorted(self.table.items())},
            "frames_per_video": self.frames_per_video,
            "frame_stride": self.frame_stride,
            **crops,
        }

    def default_box(self) -> dict[str, Any]:
        """The box fields of a record that gives no box: the face crop's centred part (a box in a 1x1 frame,
        scaled to each image) with `face_crops`, else none (the face is detected)."""
        if not self.face_crops:
            return {"box": None}
        side = 1.0 / self.face_crop_scale
        return {"box": ((1.0 - side) / 2, (1.0 - side) / 2, side, side), "box_frame": FACE_CROP_FRAME}

    def video_records(self, path: Path, key: str, box: tuple | None, **fields: Any) -> Iterator[Sample | BadSample]:
        """A video's sampled frames as records (one BadSample when it cannot be opened); `fields` are the
        record fields every frame shares (spoof type, subject, split)."""
        try:
            frames = sampled_frames(frame_count(path), self.frames_per_video, self.frame_stride)
        except MediaError as error:
            yield BadSample(path, error.reason, key, fields["split"], fields["spoof_type"])
            return
        boxes = {"box": box} if box is not None else self.default_box()
        for frame in frames:
            yield Sample(path=path, frame=frame, key=f"{key}#{frame}", source=self.name, video=key, **boxes, **fields)
