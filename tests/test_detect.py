from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fas.detect import DetectorError, YuNetDetector
from fas.download import DownloadError


@pytest.fixture(scope="module")
def yunet_path(reference_dir: Path) -> Path:
    return reference_dir / "yunet/face_detection_yunet_2023mar.onnx"


def test_rgb_input_reproduces_the_suri_liveness_boxes(reference_dir: Path, yunet_path: Path) -> None:
    expected = json.loads((reference_dir / "expected/suri_liveness.json").read_text())
    detector = YuNetDetector(yunet_path, color_order="rgb")
    for name, record in expected["images"].items():
        faces = detector.detect(cv2.imread(str(reference_dir / "images" / name)))
        assert [list(face.box) for face in faces] == [face["bbox_xywh"] for face in record["faces"]]
        np.testing.assert_allclose([f.score for f in faces], [f["det_conf"] for f in record["faces"]], atol=1e-6)


def test_bgr_input_finds_the_same_faces(reference_dir: Path, yunet_path: Path) -> None:
    expected = json.loads((reference_dir / "expected/suri_liveness.json").read_text())
    detector = YuNetDetector(yunet_path)
    for name, record in expected["images"].items():
        (face,) = detector.detect(cv2.imread(str(reference_dir / "images" / name)))
        assert np.abs(np.subtract(face.box, record["faces"][0]["bbox_xywh"])).max() <= 10
        assert all(isinstance(v, int) for v in face.box)


def test_shrunk_detection_maps_boxes_back(reference_dir: Path, yunet_path: Path) -> None:
    image = cv2.imread(str(reference_dir / "images/image_T1.jpg"))
    (full,) = YuNetDetector(yunet_path).detect(image)
    (small,) = YuNetDetector(yunet_path, max_side=320).detect(image)
    assert np.abs(np.subtract(full.box, small.box)).max() <= 0.05 * full.box[3]


def test_several_faces_best_first_and_small_ones_dropped(reference_dir: Path, yunet_path: Path) -> None:
    live = cv2.imread(str(reference_dir / "images/image_T1.jpg"))
    small = cv2.resize(cv2.imread(str(reference_dir / "images/image_F1.jpg")), (120, 160))
    canvas = np.full((640, 720, 3), 128, np.uint8)
    canvas[:, :480] = live
    canvas[240:400, 560:680] = small
    faces = YuNetDetector(yunet_path).detect(canvas)
    assert len(faces) == 2 and faces[0].score >= faces[1].score
    assert sorted(face.box[0] < 480 for face in faces) == [False, True]
    assert [face.box[0] < 480 for face in YuNetDetector(yunet_path, min_face_size=80).detect(canvas)] == [True]


def test_a_face_too_large_for_yunet_is_found_on_a_smaller_copy(reference_dir: Path, yunet_path: Path, caplog) -> None:
    image = cv2.imread(str(reference_dir / "images/image_T1.jpg"))
    (face,) = YuNetDetector(yunet_path).detect(image)
    large = cv2.resize(image, None, fx=3, fy=3)  # 1440x1920, the face ~500 px
    assert YuNetDetector(yunet_path, retry=False).detect(large) == []  # full size: too large for YuNet
    with caplog.at_level("INFO"):
        (found,) = YuNetDetector(yunet_path).detect(large)
    assert np.abs(np.subtract(found.box, np.multiply(face.box, 3))).max() <= 0.05 * 3 * face.box[3]
    assert "1440x1920 image: no face on full size, 1 found at a 640-px copy (detector.retry)" in caplog.text
    (bounded,) = YuNetDetector(yunet_path, max_side=640).detect(large)  # the config's default: found at once
    assert bounded == found


def test_a_small_face_in_a_large_scene_is_found_at_full_size(reference_dir: Path, yunet_path: Path, caplog) -> None:
    image = cv2.imread(str(reference_dir / "images/image_T1.jpg"))
    scene = np.full((2700, 3600, 3), 120, np.uint8)
    scene[1200 : 1200 + 96, 1800 : 1800 + 72] = cv2.resize(image, (72, 96), interpolation=cv2.INTER_AREA)
    assert YuNetDetector(yunet_path, max_side=640, retry=False).detect(scene) == []
    with caplog.at_level("INFO"):
        (face,) = YuNetDetector(yunet_path, max_side=640).detect(scene)
    assert 1800 <= face.box[0] < 1872 and 1200 <= face.box[1] < 1296
    assert "3600x2700 image: no face on a 640-px copy, 1 found at full size (detector.retry)" in caplog.text


def test_no_face(yunet_path: Path) -> None:
    assert YuNetDetector(yunet_path).detect(np.full((480, 640, 3), 90, np.uint8)) == []


def test_missing_or_broken_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="model file not found"):
        YuNetDetector(tmp_path / "yunet.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(DetectorError, match=r"broken.onnx: not a YuNet face detector OpenCV can run"):
        YuNetDetector(broken)
    with pytest.raises(DetectorError, match="color_order"):
        YuNetDetector(broken, color_order="yuv")


def test_an_onnx_file_that_is_not_a_face_detector_is_one_line(reference_dir: Path, tmp_path: Path) -> None:
    """An ONNX model without YuNet's outputs (here: a liveness model) is refused when loaded, not mid-run."""
    other = reference_dir / "suri-liveness/best_model.onnx"
    with pytest.raises(DetectorError, match=r"best_model.onnx: not a YuNet face detector OpenCV can run \(.*cls_8"):
        YuNetDetector(other)
