from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fas.convention import ClassScheme
from fas.data.celeba_spoof import DatasetError, read_bb, read_image, read_split, subject_of

BINARY = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1})
SILENTFACE3 = ClassScheme("silentface3", ("print", "live", "replay"), 1, {0: 1, 1: 0, 2: 0, 3: 0, 7: 2, 8: 2, 9: 2})


def labels(spoof_type: int, illumination: int = 0, environment: int = 0) -> list[int]:
    return [0] * 40 + [spoof_type, illumination, environment, int(spoof_type != 0)]


def write_tree(root: Path, entries: dict[str, tuple[list[int], str | None]], size=(448, 336)) -> None:
    """entries: key -> (label vector, _BB.txt text or None for no file)."""
    for key, (_, bb_text) in entries.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((size[1], size[0], 3), 128, np.uint8))
        if bb_text is not None:
            path.with_name(path.stem + "_BB.txt").write_text(bb_text)
    metas = root / "metas" / "intra_test"
    metas.mkdir(parents=True, exist_ok=True)
    (metas / "train_label.json").write_text(json.dumps({k: v for k, (v, _) in entries.items()}))


def test_reader_maps_labels_boxes_and_schemes(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "Data/train/101/live/000001.jpg": (labels(0), "56 28 112 56 0.99\n"),
            "Data/train/101/spoof/000002.jpg": (labels(2, 3, 1), "10 20 30 40 0.9"),
            "Data/train/102/spoof/000003.png": (labels(8, 4, 2), "0 0 224 224 1.0"),
            "Data/train/102/spoof/000004.jpg": (labels(4, 1, 1), "1 1 5 5 1.0"),
        },
    )
    samples, bad = read_split(tmp_path, "train", BINARY)
    assert bad == []
    by_key = {s.key: s for s in samples}
    assert set(by_key) == {
        "Data/train/101/live/000001.jpg",
        "Data/train/101/spoof/000002.jpg",
        "Data/train/102/spoof/000003.png",
    }  # the face mask (type 4) is excluded by the binary scheme
    live = by_key["Data/train/101/live/000001.jpg"]
    assert (live.subject, live.spoof_type, live.target, live.box_224) == ("101", 0, 0, (56, 28, 112, 56))
    poster = by_key["Data/train/101/spoof/000002.jpg"]
    assert (poster.spoof_type, poster.illumination, poster.environment, poster.target) == (2, 3, 1, 1)
    samples3, _ = read_split(tmp_path, "train", SILENTFACE3)
    assert {s.spoof_type: s.target for s in samples3} == {0: 1, 2: 0, 8: 2}


def test_bad_samples_are_listed_with_their_reason(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "Data/train/1/live/a.jpg": (labels(0), None),
            "Data/train/1/live/b.jpg": (labels(0), "12 x 3 4 0.9"),
            "Data/train/1/live/c.jpg": (labels(0), "1 2 3"),
            "Data/train/1/live/d.jpg": (labels(0), "10 10 0 8 0.9"),
            "Data/train/1/live/e.jpg": (labels(0), "300 10 20 20 0.9"),
            "Data/train/1/live/f.jpg": (labels(0), "10 10 20 20 0.9"),
        },
    )
    (tmp_path / "metas/intra_test/train_label.json").write_text(
        json.dumps(
            {
                **json.loads((tmp_path / "metas/intra_test/train_label.json").read_text()),
                "Data/train/1/live/gone.jpg": labels(0),
            }
        )
    )
    samples, bad = read_split(tmp_path, "train", BINARY)
    assert [s.key for s in samples] == ["Data/train/1/live/f.jpg"]
    reasons = {b.path.name: b.reason for b in bad}
    assert reasons == {
        "a_BB.txt": "missing _BB.txt",
        "b_BB.txt": "malformed _BB.txt, non-numeric values '12 x 3 4'",
        "c_BB.txt": "malformed _BB.txt, expected 'x y w h score', got '1 2 3'",
        "d_BB.txt": "degenerate box x=10.0 y=10.0 w=0.0 h=8.0",
        "e_BB.txt": "box x=300.0 y=10.0 w=20.0 h=20.0 lies outside the 224x224 frame",
        "gone.jpg": "image file missing",
    }


def test_missing_label_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train_label.json: label file not found. Point data.root"):
        read_split(tmp_path, "train", BINARY)


def test_malformed_label_vector(tmp_path: Path) -> None:
    metas = tmp_path / "metas" / "intra_test"
    metas.mkdir(parents=True)
    (metas / "train_label.json").write_text(json.dumps({"Data/train/1/live/a.jpg": [0, 1]}))
    with pytest.raises(DatasetError, match="must be a list of 44 integers"):
        read_split(tmp_path, "train", BINARY)


def test_read_bb_accepts_floats(tmp_path: Path) -> None:
    path = tmp_path / "x_BB.txt"
    path.write_text("1.5 2 3.25 4 0.5\n")
    assert read_bb(path) == (1.5, 2.0, 3.25, 4.0)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetError, match=r"broken.jpg: cannot read the image"):
        read_image(path)


def test_subject_of() -> None:
    assert subject_of("Data/train/4930/live/000001.jpg") == "4930"
