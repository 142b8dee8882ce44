"""Your own data as a manifest (CSV or JSON Lines): columns, boxes, frames, and every faulty row listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fas.data.sample import UNKNOWN_ATTACK, BadSample, DatasetError, Sample
from fas.data.sources.manifest import ManifestSource


def records(source: ManifestSource) -> tuple[list[Sample], list[BadSample]]:
    found = list(source.records())
    return [r for r in found if isinstance(r, Sample)], [r for r in found if isinstance(r, BadSample)]


def test_the_generated_manifest_matches_the_folder_reader(tiny_folder: Path) -> None:
    from fas.data.sources.folder import FolderSource

    listed, bad = records(ManifestSource(str(tiny_folder / "manifest.csv")))
    walked, _ = records(FolderSource(str(tiny_folder)))
    assert bad == []
    assert sorted((s.key, s.spoof_type, s.subject, s.split, s.frame) for s in listed) == sorted(
        (s.key, s.spoof_type, s.subject, s.split, s.frame) for s in walked
    )
    images = {s.key: s for s in listed if s.frame is None}
    assert all(s.box is not None for s in images.values())  # the manifest gives every image its box
    assert all(s.box is None for s in listed if s.frame is not None)  # clips: detected


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_columns_boxes_frames_and_subjects(tiny_folder: Path) -> None:
    images = [p.relative_to(tiny_folder).as_posix() for p in sorted((tiny_folder / "train/live").rglob("*.jpg"))[:3]]
    image = images[2]
    clip = next((tiny_folder / "test/live").rglob("clip.mp4")).relative_to(tiny_folder).as_posix()
    manifest = write(
        tiny_folder / "custom.csv",
        "path,label,spoof_type,subject,split,box,x,y,w,h,frame\n"
        f"{images[0]},live,,p1,train,10 20 30 40,,,,,\n"
        f"{images[1]},,poster,p1,train,,1,2,3,4,\n"
        f"{image},attack,,,test,,,,,,\n"
        f"{clip},replay,,p2,test,,,,,,3\n"
        f"{clip},bonafide,,,,,,,,,\n",
    )
    samples, bad = records(ManifestSource(str(manifest), frames_per_video=2))
    assert bad == []
    (a, b, c, d, *frames) = samples
    assert (a.spoof_type, a.subject, a.split, a.box, a.frame) == (0, "p1", "train", (10, 20, 30, 40), None)
    assert (b.spoof_type, b.box) == (2, (1, 2, 3, 4))
    assert (c.spoof_type, c.subject, c.box) == (UNKNOWN_ATTACK, image, None)  # no subject: the file is its own
    assert (d.spoof_type, d.frame, d.key) == (7, 3, f"{clip}#3")
    assert [(s.frame, s.subject, s.split) for s in frames] == [(3, clip, None), (9, clip, None)]


def test_json_lines(tiny_folder: Path) -> None:
    first, image = (
        p.relative_to(tiny_folder).as_posix() for p in sorted((tiny_folder / "train/spoof/print").rglob("*.jpg"))[:2]
    )
    rows = [{"path": first, "label": "print", "box": [5, 6, 7, 8], "subject": 12}, {"path": image, "spoof_type": 9}]
    manifest = write(tiny_folder / "list.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n\n")
    samples, _ = records(ManifestSource(str(manifest)))
    assert [(s.spoof_type, s.box, s.subject) for s in samples] == [(1, (5, 6, 7, 8), "12"), (9, None, image)]


def test_faulty_rows_are_listed_by_line(tiny_folder: Path, tmp_path: Path) -> None:
    image = next(tiny_folder.rglob("*.jpg"))
    root = tmp_path / "data"
    root.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (root / name).write_bytes(image.read_bytes())
    manifest = write(
        root / "list.csv",
        "path,label,box,frame\n"
        "a.jpg,live,,\n"
        "gone.jpg,live,,\n"
        f"../{image.name},live,,\n"
        f"{image},live,,\n"
        "b.jpg,live,1 2 x 4,\n"
        "c.jpg,live,,two\n",
    )
    samples, bad = records(ManifestSource(str(manifest)))
    assert [s.key for s in samples] == ["a.jpg"]
    assert [b.reason for b in bad] == [
        "line 3: file missing",
        f"line 4: the path leaves {root}; keep files inside it",
        f"line 5: the path leaves {root}; keep files inside it",
        "malformed box (line 6), non-numeric values '1 2 x 4'",
        "line 7: frame 'two' is not a number",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "file,label\na.jpg,live\n",
            r"a manifest needs the columns path and label \(or spoof_type\); it has file, label",
        ),
        ("path,label\na.jpg,cartoon\n", r"list.csv:2: label 'cartoon' maps to no spoof type; add it as \+data"),
        ("path,spoof_type\na.jpg,42\n", r"list.csv:2: spoof_type: '42' is not a spoof type"),
        ("path,label,split\na.jpg,live,dev\n", r"list.csv:2: split 'dev' is not one of train, val, test; leave it"),
    ],
)
def test_malformed_manifests_name_the_line_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=message):
        list(ManifestSource(str(write(tmp_path / "list.csv", text))).records())


def test_labels_name_new_attack_types(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    manifest = write(tmp_path / "list.csv", "path,label\na.jpg,cartoon\n")
    (sample,) = records(ManifestSource(str(manifest), labels={"cartoon": "region_mask"}))[0]
    assert sample.spoof_type == 6
