from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import cv2
import pytest

from fas.data.sources.celeba_spoof import read_bb
from fas.data.synthetic import MARKER, generate

from conftest import TINY


def digest(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_and_labels(tiny_data: Path) -> None:
    for split, subjects in (("train", TINY.train_subjects), ("test", TINY.test_subjects)):
        labels = json.loads((tiny_data / f"metas/intra_test/{split}_label.json").read_text())
        assert len(labels) == subjects * TINY.images_per_subject
        assert len({key.split("/")[2] for key in labels}) == subjects
        for key, vector in labels.items():
            assert key.startswith(f"Data/{split}/") and len(vector) == 44
            spoof_type, illumination, environment, is_spoof = vector[40:]
            assert key.split("/")[3] == ("spoof" if is_spoof else "live")
            assert is_spoof == int(spoof_type != 0)
            if spoof_type == 0:
                assert (illumination, environment) == (0, 0)
            else:
                assert illumination in (1, 2, 3, 4) and environment in (1, 2)
            image = cv2.imread(str(tiny_data / key))
            assert image is not None and image.shape[2] == 3
            x, y, w, h = read_bb((tiny_data / key).with_name(Path(key).stem + "_BB.txt"))
            assert 0 <= x < 224 and 0 <= y < 224 and w > 5 and h > 5


def test_train_and_test_subjects_are_disjoint_and_types_vary(tiny_data: Path) -> None:
    train = json.loads((tiny_data / "metas/intra_test/train_label.json").read_text())
    test = json.loads((tiny_data / "metas/intra_test/test_label.json").read_text())
    assert not {k.split("/")[2] for k in train} & {k.split("/")[2] for k in test}
    types = Counter(v[40] for v in [*train.values(), *test.values()])
    assert types[0] > 0 and len(set(types) & {1, 2, 3}) >= 2 and len(set(types) & {7, 8, 9}) >= 2


def test_generation_is_deterministic_and_cached(tmp_path: Path, tiny_data: Path) -> None:
    again = generate(tmp_path / "again", TINY, workers=2)
    assert digest(again) == digest(tiny_data)
    marker_time = (again / MARKER).stat().st_mtime_ns
    generate(again, TINY)
    assert (again / MARKER).stat().st_mtime_ns == marker_time


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(FileExistsError, match=r"holds no synthetic.json"):
        generate(tmp_path, TINY)
