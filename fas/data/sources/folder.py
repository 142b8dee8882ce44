"""A folder tree of labelled photos and videos as a data source (`data=folder data.root=/data/mine`).

    <root>/[train/|val/|test/]live/...            bona fide
    <root>/[train/|val/|test/]spoof/print/...     attack types by folder name (`labels`)
    <root>/[train/|val/|test/]spoof/...           a bare spoof/: an attack of unknown type

A file's label is its deepest folder whose name is in the label table (`fas.data.sample.LABEL_NAMES`
plus the source's `labels`); a folder that maps to nothing is an error naming it and the key to set.
Its subject is `subject_regex`'s first group on its path when set, else the first folder below its
label folder, else the file itself (a video is always at least its own subject), so validation never
shares a video, or a person, with training. An image's face box is its `<name>_BB.txt` (`x y w h`
in pixels) when there is one; otherwise `fas.data.prepare` detects it, or, with `face_crops` (a tree of face
crops), it is the image's centred part (`MediaSource`). Videos become
`frames_per_video` evenly spaced frames, or every `frame_stride`-th, each knowing its video; frames already
extracted as images name theirs by `video_regex` (e.g. `^(.+)__frame_[0-9]+` for `<video>__frame_00042.jpg`).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fas.data.sample import SPLITS, BadSample, DatasetError, Sample, SampleError, bb_path, read_box_file
from fas.data.sources import LEAVES_ROOT, MediaSource, positive_or_none, resolves_inside
from fas.media import is_video_file, media_files


class FolderSource(MediaSource):
    """Photos and videos in class folders (see the module docstring)."""

    kind = "folder"

    def __init__(
        self,
        root: str | None,
        name: str = "folder",
        labels: dict[str, Any] | None = None,
        subject_regex: str | None = None,
        frames_per_video: int | None = 8,
        frame_stride: int | None = None,
        weight: float = 1.0,
        cache: str | None = None,
        image_stride: int | None = None,
        face_crops: bool = False,
        face_crop_scale: float = 1.0,
        video_regex: str | None = None,
    ) -> None:
        if root is None:
            raise DatasetError(f"the root of data source '{name}' is not set: pass data.root=/path/to/your/folder")
        super().__init__(
            name, Path(root), labels, frames_per_video, frame_stride, weight, cache, face_crops, face_crop_scale
        )
        self.image_stride = positive_or_none(image_stride, f"data.sources.{name}.image_stride")
        self.subject_regex = subject_regex
        self.subject_pattern = re.compile(subject_regex) if subject_regex else None
        self.video_regex = video_regex
        self.video_pattern = re.compile(video_regex) if video_regex else None

    def prepare(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DatasetError(f"{self.root}: the root of data source '{self.name}' is a file, not a folder")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: the root of data source '{self.name}' does not exist")

    def settings(self) -> dict[str, Any]:
        extra = {"video_regex": self.video_regex} if self.video_regex else {}
        return {**super().settings(), "subject_regex": self.subject_regex, "image_stride": self.image_stride, **extra}

    @functools.cached_property
    def files(self) -> tuple[tuple[Path, str | None], ...]:
        """Every image and video under the root with its split (None outside train/val/test), walked once;
        with `image_stride`, every image_stride-th image of each folder (frames already extracted from videos
        are thinned as `frame_stride` thins videos)."""
        files = media_files(self.root)
        if self.image_stride:
            position: dict[Path, int] = {}
            kept = []
            for path in files:
                if is_video_file(path):
                    kept.append(path)
                    continue
                index = position[path.parent] = position.get(path.parent, -1) + 1
                if index % self.image_stride == 0:
                    kept.append(path)
            files = kept
        return tuple((path, split_of(path.relative_to(self.root))) for path in files)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits of the tree (`train`, `val`, `test`), or `all` for a tree that is not split."""
        found = {split for _, split in self.files} - {None}
        return tuple(split for split in SPLITS if split in found) or ("all",)

    def fingerprint(self, splits: Sequence[str] | None = None) -> dict[str, str]:
        """A hash of the files (path, size, modification time) of each split: another tree is not this cache's."""
        digests: dict[str, Any] = {}
        for path, split in self.files:
            if splits is None or (split or "all") in splits:
                stat = path.stat()
                digest = digests.setdefault(split or "all", hashlib.sha256())
                digest.update(f"{path.relative_to(self.root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return {split: digest.hexdigest() for split, digest in sorted(digests.items())}

    def records(self, splits: Sequence[str] | None = None) -> Iterator[Sample | BadSample]:
        """The records of the tree in path order (refused at once when a folder maps to no label)."""
        if not self.files:
            raise DatasetError(f"{self.root}: no image or video files in data source '{self.name}'")
        split_tree = any(split for _, split in self.files)
        stray = [path for path, split in self.files if split_tree and split is None]
        labelled = [
            (path, split, self.spoof_type_of(path.relative_to(self.root)))
            for path, split in self.files
            if not (split_tree and split is None)
        ]
        unmapped = sorted({str(type_or_folder) for *_, type_or_folder in labelled if isinstance(type_or_folder, str)})
        if unmapped:
            raise DatasetError(
                f"{self.root}: folder(s) {', '.join(unmapped)} map to no spoof type; name each with "
                f"+data.sources.{self.name}.labels.<folder>=<type> (0 live ... 11 unknown attack, or a name such "
                "as live, print, replay, spoof), or move the files into live/ or spoof/ folders"
            )
        for path in stray if splits is None or "train" in splits else []:  # listed with the train split
            reason = "outside train/, val/ and test/ of a tree split into them; move it under one"
            yield BadSample(path, reason, path.relative_to(self.root).as_posix(), "train")
        for path, split, spoof_type in labelled:
            if splits is None or (split or "all") in splits:
                yield from self.records_of(path, split, int(spoof_type))

    def spoof_type_of(self, relative: Path) -> int | str:
        """The spoof type of a file from its deepest label folder, or the name of the folder that maps to nothing."""
        folders = list(relative.parts[:-1])
        if folders and folders[0] in SPLITS:
            folders = folders[1:]
        for folder in reversed(folders):
            if folder.lower() in self.table:
                return self.table[folder.lower()]
        return f"{folders[0]}/" if folders else f"(files directly in {relative.parent or '.'}/)"

    def subject_of(self, relative: Path) -> str:
        text = relative.as_posix()
        if self.subject_pattern is not None:
            match = self.subject_pattern.search(text)
            if match and match.groups():
                return match.group(1)
            return text  # an unmatched file is its own subject
        folders = list(relative.parts[:-1])
        if folders and folders[0] in SPLITS:
            folders = folders[1:]
        labelled = [i for i, folder in enumerate(folders) if folder.lower() in self.table]
        below = folders[labelled[-1] + 1 :] if labelled else []
        return below[0] if below else str(relative.with_suffix(""))

    def video_of(self, relative: Path) -> str | None:
        """The video an image was extracted from: `video_regex`'s first group on its path (None: a photo)."""
        if self.video_pattern is None:
            return None
        match = self.video_pattern.search(relative.as_posix())
        return match.group(1) if match and match.groups() else None

    def records_of(self, path: Path, split: str | None, spoof_type: int) -> Iterator[Sample | BadSample]:
        relative = path.relative_to(self.root)
        key = relative.as_posix()
        fields = {"spoof_type": spoof_type, "subject": self.subject_of(relative), "split": split}
        if path.is_symlink() and not resolves_inside(path, self.root):
            yield BadSample(path, LEAVES_ROOT, key, split, spoof_type)
            return
        if is_video_file(path):
            yield from self.video_records(path, key, None, **fields)
            return
        boxes = self.default_box()
        if bb_path(path).is_file():
            try:
                boxes = {"box": read_box_file(bb_path(path))}
            except SampleError as error:
                yield BadSample(error.path, error.reason, key, split, spoof_type)
                return
        yield Sample(path=path, frame=None, key=key, source=self.name, video=self.video_of(relative), **boxes, **fields)


def split_of(relative: Path) -> str | None:
    """`train`, `val` or `test` when a file lies under such a top folder, else None (the tree is not split)."""
    return relative.parts[0] if len(relative.parts) > 1 and relative.parts[0] in SPLITS else None
