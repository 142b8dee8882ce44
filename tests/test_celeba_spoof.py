from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import hydra
import numpy as np
import pytest
from omegaconf import OmegaConf

from fas.convention import ClassScheme
from fas.data.sample import SPOOF_TYPES, UNKNOWN_ATTACK, DatasetError, with_targets
from fas.data.sources.celeba_spoof import (
    DEFAULT_PROTOCOL,
    available_protocols,
    iter_labels,
    read_bb,
    read_split,
    subject_of,
)
from fas.media import MediaError, read_image

from conftest import CONFIG_DIR

BINARY = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1})


def read(root: Path, split: str, scheme: ClassScheme, protocol: str = DEFAULT_PROTOCOL):
    """The reader's records of a split with the class scheme applied, and its bad samples."""
    samples, bad = read_split(root, split, protocol)
    return with_targets(samples, scheme, split), bad


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
    samples, bad = read(tmp_path, "train", BINARY)
    assert bad == []
    by_key = {s.key: s for s in samples}
    assert set(by_key) == {
        "Data/train/101/live/000001.jpg",
        "Data/train/101/spoof/000002.jpg",
        "Data/train/102/spoof/000003.png",
    }  # the face mask (type 4) is excluded by the binary scheme
    live = by_key["Data/train/101/live/000001.jpg"]
    assert (live.subject, live.spoof_type, live.target, live.box) == ("101", 0, 0, (56, 28, 112, 56))
    assert (live.box_frame, live.frame, live.split, live.source) == ((224, 224), None, "train", "celeba_spoof")
    poster = by_key["Data/train/101/spoof/000002.jpg"]
    assert (poster.spoof_type, poster.illumination, poster.environment, poster.target) == (2, 3, 1, 1)
    samples3, _ = read(tmp_path, "train", SILENTFACE3)
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
    samples, bad = read(tmp_path, "train", BINARY)
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
        read(tmp_path, "train", BINARY)


def test_malformed_label_vector(tmp_path: Path) -> None:
    metas = tmp_path / "metas" / "intra_test"
    metas.mkdir(parents=True)
    (metas / "train_label.json").write_text(json.dumps({"Data/train/1/live/a.jpg": [0, 1]}))
    with pytest.raises(DatasetError, match="must be a list of 44 integers"):
        read(tmp_path, "train", BINARY)


def test_read_bb_accepts_floats(tmp_path: Path) -> None:
    path = tmp_path / "x_BB.txt"
    path.write_text("1.5 2 3.25 4 0.5\n")
    assert read_bb(path) == (1.5, 2.0, 3.25, 4.0)


def natural_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3)).astype(np.uint8), (0, 0), 2)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "image file missing"),
        (b"", "empty image file"),
        (b"not an image", "cannot decode the image (corrupt or not an image)"),
        ("jpeg 60%", "truncated image (no end-of-image marker)"),
        ("png 60%", "truncated image (no end-of-image marker)"),
        (b"\xff\xd8\xff garbage", "truncated image (no end-of-image marker)"),
    ],
)
def test_unusable_images_name_the_file_and_the_reason(tmp_path: Path, content, reason: str) -> None:
    path = tmp_path / "broken.jpg"
    if isinstance(content, str):
        encoded = cv2.imencode("." + content.split()[0].replace("jpeg", "jpg"), natural_image())[1].tobytes()
        path.write_bytes(encoded[: int(len(encoded) * 0.6)])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError, match=r"broken.jpg: ") as caught:
        read_image(path)
    assert caught.value.reason == reason and caught.value.path == path
    assert str(caught.value).endswith("re-extract or re-copy it, or remove it from the dataset")


def test_complete_images_read_also_with_bytes_after_the_end_marker(tmp_path: Path) -> None:
    image = natural_image()
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    (tmp_path / "trailer.jpg").write_bytes(jpeg + b"maker trailer \x00\x01")
    (tmp_path / "image.png").write_bytes(cv2.imencode(".png", image)[1].tobytes())
    assert read_image(tmp_path / "trailer.jpg").shape == (120, 160, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "image.png"), image)


# The class schemes documented in configs/class_scheme/*.yaml: spoof type -> class (None = excluded).
# An attack of unknown type (a bare spoof/ folder) is an attack to the binary schemes, and fits no other.
DOCUMENTED_SCHEMES = {
    "binary": (("live", "spoof"), 0, {0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1, UNKNOWN_ATTACK: 1}),
    "binary_all": (("live", "spoof"), 0, {t: int(t != 0) for t in SPOOF_TYPES}),
    "silentface3": (("print", "live", "replay"), 1, {0: 1, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 2, 8: 2, 9: 2}),
    "per_type": (tuple(SPOOF_TYPES[t] for t in range(11)), 0, {t: t for t in range(11)}),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED_SCHEMES))
def test_each_class_scheme_config_maps_the_documented_spoof_types(name: str, tmp_path: Path) -> None:
    scheme = hydra.utils.instantiate(OmegaConf.load(CONFIG_DIR / "class_scheme" / f"{name}.yaml"))
    class_names, real_index, mapping = DOCUMENTED_SCHEMES[name]
    assert (scheme.name, scheme.class_names, scheme.real_class_index) == (name, class_names, real_index)
    assert scheme.class_names[scheme.real_class_index] == "live"
    assert {t: scheme.class_of(t) for t in SPOOF_TYPES} == {t: mapping.get(t) for t in SPOOF_TYPES}
    write_tree(
        tmp_path,
        {f"Data/train/{t}/{'spoof' if t else 'live'}/{t:06d}.jpg": (labels(t), "50 50 60 60 0.9") for t in SPOOF_TYPES},
        size=(64, 64),
    )
    samples, bad = read(tmp_path, "train", scheme)
    assert bad == [] and {s.spoof_type: s.target for s in samples} == mapping


def test_protocol_label_files_are_read_where_present(tmp_path: Path) -> None:
    entries = {
        "Data/train/1/live/a.jpg": (labels(0), "50 50 60 60 0.9"),
        "Data/train/2/spoof/b.jpg": (labels(7), "50 50 60 60 0.9"),
        "Data/test/3/spoof/c.jpg": (labels(1), "50 50 60 60 0.9"),
    }
    write_tree(tmp_path, entries, size=(64, 64))
    for protocol, keys in (
        ("protocol1", ["Data/train/1/live/a.jpg"]),
        ("protocol2/test_on_low_quality_device", ["Data/train/2/spoof/b.jpg", "Data/test/3/spoof/c.jpg"]),
    ):
        folder = tmp_path / "metas" / protocol
        folder.mkdir(parents=True)
        (folder / "train_label.json").write_text(json.dumps({k: entries[k][0] for k in keys}))
    assert available_protocols(tmp_path) == ["intra_test", "protocol1", "protocol2/test_on_low_quality_device"]
    samples, _ = read(tmp_path, "train", BINARY, protocol="protocol2/test_on_low_quality_device")
    assert [(s.key, s.target) for s in samples] == [("Data/train/2/spoof/b.jpg", 1), ("Data/test/3/spoof/c.jpg", 1)]
    samples, _ = read(tmp_path, "train", BINARY, protocol="protocol1")
    assert [s.key for s in samples] == ["Data/train/1/live/a.jpg"]
    with pytest.raises(DatasetError, match=r"no 'protocol3' protocol in .*metas; set data.protocol to one of: "):
        read(tmp_path, "train", BINARY, protocol="protocol3")


def test_subject_of() -> None:
    assert subject_of("Data/train/4930/live/000001.jpg") == "4930"


def test_streamed_labels_equal_the_whole_file_in_file_order(tiny_data: Path, tmp_path: Path) -> None:
    path = tiny_data / "metas/intra_test/train_label.json"
    labels = json.loads(path.read_text())
    assert list(iter_labels(path, lookahead=64)) == list(labels.items())  # entries cut by the buffer end
    indented = tmp_path / "indented.json"
    indented.write_text(json.dumps(labels, indent=2))
    assert list(iter_labels(indented, lookahead=64)) == list(labels.items())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": [1, 2]}', "entry 'a' must be a list of 44 integers"),
        ("[1]", "not valid JSON (expected '{' at entry 1)"),
        ('{"a" [1]}', "not valid JSON (expected ':' at entry 1)"),
        ('{"a": [' + "0, " * 43 + "0]", "not valid JSON (expected ',}' at entry 2)"),
        ("", "not valid JSON (expected '{' at entry 1)"),
    ],
)
def test_streamed_labels_refuse_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train_label.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: {message}")):
        list(iter_labels(path))
