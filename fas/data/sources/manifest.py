"""A manifest (CSV or JSON Lines) of labelled photos and videos as a data source (`data=manifest`).

    path,label,subject,split,box,frame
    live/p01/a.jpg,live,p01,train,"120 80 200 260",
    attacks/p01/print1.jpg,print,p01,train,,
    clips/p02.mp4,replay,p02,test,,

Columns: `path` (relative to the manifest's folder, or `root`; it must stay inside it) and `label`
(a name from the label table: live, spoof, print, replay, ...) or `spoof_type` (a CelebA-Spoof number
or name) are required; `subject`, `split` (train, val, test), `box` (`x y w h` in pixels of the image
as stored, or `x`, `y`, `w`, `h` columns) and `frame` (one frame of a video) are optional. A video row
without `frame` becomes `frames_per_video` evenly spaced frames (or every `frame_stride`-th). A row
without a subject is its own subject (a video's frames share it). A row without a box has its face
detected by `fas.data.prepare`, or, with `face_crops` (the images are face crops), the image's centred
part. JSON Lines hold one object per line with the same keys (`box` may be a list). Every row that points
nowhere, outside the folder, or holds a malformed value is listed by its line number, never dropped.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fas.data.sample import (
    SPLITS,
    BadSample,
    DatasetError,
    Sample,
    SampleError,
    parse_box,
    parse_spoof_type,
    spoof_type_name,
)
from fas.data.sources import LEAVES_ROOT, MediaSource, resolves_inside
from fas.download import sha256_of
from fas.media import is_video_file

BOX_COLUMNS = ("x", "y", "w", "h")


class ManifestSource(MediaSource):
    """The rows of a CSV or JSONL manifest (see the module docstring)."""

    kind = "manifest"

    def __init__(
        self,
        manifest: str | None,
        name: str = "manifest",
        root: str | None = None,
        labels: dict[str, Any] | None = None,
        frames_per_video: int | None = 8,
        frame_stride: int | None = None,
        weight: float = 1.0,
        cache: str | None = None,
        face_crops: bool = False,
        face_crop_scale: float = 1.0,
    ) -> None:
        if manifest is None:
            raise DatasetError(f"the manifest of data source '{name}' is not set: pass data.manifest=/path/to/list.csv")
        self.manifest = Path(manifest)
        folder = Path(root) if root is not None else self.manifest.parent
        super().__init__(
            name, folder, labels, frames_per_video, frame_stride, weight, cache, face_crops, face_crop_scale
        )

    def prepare(self) -> None:
        if not self.manifest.is_file():
            raise DatasetError(f"{self.manifest}: manifest not found; pass data.manifest=/path/to/list.csv (or .jsonl)")

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "manifest": str(self.manifest.resolve())}

    @property
    def splits(self) -> tuple[str, ...]:
        found = {row.get("split") or None for _, row in self.rows} - {None}
        return tuple(split for split in SPLITS if split in found) or ("all",)

    def fingerprint(self, splits: Sequence[str] | None = None) -> dict[str, str]:
        """The manifest's sha256 (for every split: the rows of all of them come from one file)."""
        digest = sha256_of(self.manifest)
        return {split: digest for split in splits or self.splits}

    @functools.cached_property
    def rows(self) -> tuple[tuple[int, dict[str, Any]], ...]:
        """(line number, row) of the manifest, keys lower-cased, read once; a file that is neither CSV nor
        JSONL is refused."""
        self.prepare()
        if self.manifest.suffix.lower() in (".jsonl", ".ndjson"):
            return tuple(self.json_rows())
        return tuple(self.csv_rows())

    def json_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with self.manifest.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DatasetError(f"{self.manifest}:{number}: not a JSON object ({error.msg})") from None
                if not isinstance(row, dict):
                    raise DatasetError(f"{self.manifest}:{number}: not a JSON object")
                yield number, {str(k).lower(): v for k, v in row.items()}

    def csv_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with self.manifest.open(encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file)
            columns = {c.strip().lower() for c in reader.fieldnames or []}
            if "path" not in columns or not columns & {"label", "spoof_type"}:
                raise DatasetError(
                    f"{self.manifest}: a manifest needs the columns path and label (or spoof_type); it has "
                    f"{', '.join(sorted(columns)) or 'none'}"
                )
            for number, row in enumerate(reader, start=2):
                yield number, {str(k).strip().lower(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}

    def records(self, splits: Sequence[str] | None = None) -> Iterator[Sample | BadSample]:
        """Every row in file order: its sample(s), or a BadSample saying why it cannot be one. A split that is
        not train/val/test, or a file listed twice with different labels, stops the source with the lines."""
        first_line: dict[tuple[str, str], tuple[int, int]] = {}  # (path, frame) -> (line, spoof type)
        for number, row in self.rows:
            if not row.get("path"):
                raise DatasetError(f"{self.manifest}:{number}: the row has no path")
            split = self.split_of(row, number)
            key = (os.path.normpath(str(row["path"])), str(row.get("frame") or ""))
            spoof_type = self.spoof_type_of(row, f"{self.manifest}:{number}")
            if key in first_line:
                earlier, earlier_type = first_line[key]
                if earlier_type != spoof_type:
                    raise DatasetError(
                        f"{self.manifest}:{number}: {row['path']} is listed again with label "
                        f"{spoof_type_name(spoof_type)}, but line {earlier} gives it {spoof_type_name(earlier_type)}; "
                        "keep one line per file"
                    )
                if splits is None or (split or "all") in splits:
                    reason = f"line {number}: listed again (line {earlier}, same label); used once"
                    yield BadSample(self.root / str(row["path"]), reason, f"{row['path']}@{number}", split, spoof_type)
                continue
            first_line[key] = (number, spoof_type)
            if splits is None or (split or "all") in splits:
                yield from self.records_of(number, row, split, spoof_type)

    def split_of(self, row: dict[str, Any], number: int) -> str | None:
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise DatasetError(
                f"{self.manifest}:{number}: split {split!r} is not one of {', '.join(SPLITS)}; "
                "leave it empty to let fas split the rows by subject"
            )
        return split

    def records_of(
        self, number: int, row: dict[str, Any], split: str | None, spoof_type: int
    ) -> Iterator[Sample | BadSample]:
        """The sample(s) of one row whose split and spoof type `records` has read and checked."""
        relative = str(row["path"])
        path = self.root / relative
        key = relative
        if not inside(path, self.root):
            yield BadSample(
                path, f"line {number}: the path leaves {self.root}; keep files inside it", key, split, spoof_type
            )
            return
        if path.is_symlink() and not resolves_inside(path, self.root):
            yield BadSample(path, f"line {number}: {LEAVES_ROOT}", key, split, spoof_type)
            return
        if not path.is_file():
            yield BadSample(path, f"line {number}: file missing", key, split, spoof_type)
            return
        subject = str(row["subject"]) if row.get("subject") not in (None, "") else relative
        fields = {"spoof_type": spoof_type, "subject": subject, "split": split}
        try:
            box = self.box_of(row, path, number)
            frame = int(row["frame"]) if row.get("frame") not in (None, "") else None
        except (SampleError, ValueError) as error:
            reason = (
                error.reason
                if isinstance(error, SampleError)
                else f"line {number}: frame {row.get('frame')!r} is not a number"
            )
            yield BadSample(path, reason, key, split, spoof_type)
            return
        boxes = {"box": box} if box is not None else self.default_box()
        if not is_video_file(path):
            yield Sample(path=path, frame=None, key=key, source=self.name, **boxes, **fields)
        elif frame is not None:
            yield Sample(path=path, frame=frame, key=f"{key}#{frame}", source=self.name, **boxes, **fields)
        else:
            yield from self.video_records(path, key, box, **fields)

    def spoof_type_of(self, row: dict[str, Any], where: str) -> int:
        if row.get("spoof_type") not in (None, ""):
            return parse_spoof_type(row["spoof_type"], f"{where}: spoof_type")
        label = str(row.get("label") or "").strip().lower()
        if label not in self.table:
            raise DatasetError(
                f"{where}: label {label!r} maps to no spoof type; add it as "
                f"+data.sources.{self.name}.labels.{label or '<name>'}=<type> (0 live ... 11 unknown attack), or use a "
                "known name such as live, spoof, print, replay"
            )
        return self.table[label]

    def box_of(self, row: dict[str, Any], path: Path, number: int) -> tuple[float, float, float, float] | None:
        what = f"box (line {number})"
        value = row.get("box")
        if isinstance(value, list | tuple):
            return parse_box(value, path, what) if len(value) == 4 else parse_box([*value, "", "", ""][:4], path, what)
        if value not in (None, ""):
            fields = str(value).replace(",", " ").split()
            return parse_box(fields if len(fields) == 4 else [*fields, "", "", ""][:4], path, what)
        if any(row.get(column) not in (None, "") for column in BOX_COLUMNS):
            return parse_box([row.get(column) for column in BOX_COLUMNS], path, what)
        return None


def inside(path: Path, root: Path) -> bool:
    """True when `path`, with `..` resolved but links not followed, lies under `root`."""
    resolved_root = os.path.normpath(os.path.abspath(root))
    return os.path.normpath(os.path.abspath(path)).startswith(resolved_root + os.sep)
