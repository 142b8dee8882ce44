"""The quality gate: each check's measure by hand, each failure's reason, and the predictor's `retry` status."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fas.detect import Face, YuNetDetector
from fas.errors import ConfigError
from fas.inference.backends import load_backend
from fas.inference.predictor import LivenessPredictor
from fas.inference.quality import QualityGate, face_measures, face_yaw

GATE = QualityGate()


def textured_frame(seed: int = 0) -> np.ndarray:
    """A 200x200 mid-grey frame whose centre 100x100 is sharp checkered texture: the 'face'."""
    frame = np.full((200, 200, 3), 120, np.uint8)
    checks = (np.indices((100, 100)).sum(axis=0) // 4 % 2 * 80 + 80).astype(np.uint8)
    noise = np.random.default_rng(seed).integers(-10, 10, (100, 100))
    frame[50:150, 50:150] = np.clip(checks + noise, 0, 255)[..., None].astype(np.uint8)
    return frame


FACE = Face((50, 50, 100, 100), 0.9, (75.0, 80.0, 125.0, 80.0, 100.0, 105.0, 80.0, 125.0, 120.0, 125.0))


def test_a_sharp_frontal_face_in_the_frame_passes() -> None:
    check = GATE.check(textured_frame(), FACE)
    assert check.passed and check.reasons == ()
    assert check.measures["face_size"] == 100 and check.measures["outside"] == 0.0 and check.measures["yaw"] == 0.0
    assert check.measures["brightness"] == pytest.approx(textured_frame()[50:150, 50:150, 0].mean(), abs=0.5)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: cv2.GaussianBlur(f, (0, 0), 6), "blurred"),
        (lambda f: (f * 0.15).astype(np.uint8), "too_dark"),
        (lambda f: np.clip(f.astype(int) + 170, 0, 255).astype(np.uint8), "too_bright"),
    ],
)
def test_a_changed_frame_fails_with_its_reason(change, reason: str) -> None:
    check = GATE.check(change(textured_frame()), FACE)
    assert reason in check.reasons, check


def test_a_small_a_cut_and_a_turned_face_fail_with_their_reasons() -> None:
    frame = textured_frame()
    assert GATE.check(frame, Face((90, 90, 30, 30), 0.9)).reasons == ("too_small",)
    cut = GATE.check(frame, Face((150, 50, 100, 100), 0.9))  # half of it beyond the right edge
    assert cut.measures["outside"] == pytest.approx(0.5) and "cut_off" in cut.reasons
    profile = (90.0, 80.0, 110.0, 80.0, 92.0, 105.0, 80.0, 125.0, 120.0, 125.0)
    assert "turned" in GATE.check(frame, Face(FACE.box, 0.9, profile)).reasons
    assert GATE.check(frame, Face(FACE.box, 0.9)).measures["yaw"] is None  # no landmarks: not checked


def test_yaw_and_sharpness_by_hand() -> None:
    # right eye at x=10, left eye at 30, nose at 25: distances 15 and 5 -> |5 - 15| / 20
    assert face_yaw((10.0, 0.0, 30.0, 0.0, 25.0, 0.0)) == pytest.approx(0.5)
    flat = np.full((100, 100, 3), 90, np.uint8)
    assert face_measures(flat, Face((0, 0, 100, 100), 1.0))["sharpness"] == 0.0
    with pytest.raises(ConfigError, match=r"quality.min_sharpness=-1: give a number >= 0"):
        QualityGate(min_sharpness=-1)
    assert QualityGate(min_sharpness=None).check(cv2.GaussianBlur(textured_frame(), (0, 0), 6), FACE).passed


def test_the_predictor_turns_a_dark_face_into_a_retry(reference_dir: Path) -> None:
    image = cv2.imread(str(reference_dir / "images/image_T1.jpg"))
    detector = YuNetDetector(reference_dir / "yunet/face_detection_yunet_2023mar.onnx")
    backend = {"suri": load_backend(reference_dir / "suri-liveness/best_model.pth")}
    gated = LivenessPredictor(backend, detector, threshold=0.5, quality=GATE)
    (clean,) = gated.predict(image)
    assert clean.status == "judged" and clean.label == "real" and clean.face.landmarks is not None
    (dark,) = gated.predict((image * 0.12).astype(np.uint8))
    record = dark.to_dict()
    assert dark.status == "retry" and record["label"] == "retry" and "too_dark" in record["retry_reasons"]
    assert 0.0 <= record["spoof_score"] <= 1.0 and record["quality"]["brightness"] < 35
    assert LivenessPredictor(backend, detector, threshold=0.5).predict(image)[0].to_dict()["status"] == "judged"
