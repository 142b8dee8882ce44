"""The quality gate: checks a face must pass before a liveness verdict is worth giving (`configs/quality/`).

A face too small, cut by the frame's edge, blurred, too dark, burnt out or turned away is not judged: its
prediction is `"status": "retry"` with the reasons, so an app asks for another frame instead of rejecting a real
person (or passing an attack) on an input no model can judge. Each check reads one measure of the face:

    face_size    the box's shorter side, in pixels of the frame
    outside      the share of the box's area that lies outside the frame
    sharpness    the variance of the Laplacian of the face, grey, resampled to 96x96 (so it does not grow with size)
    brightness   the mean grey level of the face (0-255)
    yaw          |l - r| / (l + r) of the horizontal distances from each eye to the nose tip (YuNet's landmarks):
                 0 for a frontal face, 1 for a profile; not checked when the detector gives no landmarks
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from fas.detect import Face
from fas.errors import ConfigError

SHARPNESS_SIDE = 96  # the side the face is resampled to before its Laplacian is taken
REASONS = ("too_small", "cut_off", "blurred", "too_dark", "too_bright", "turned")


@dataclass(frozen=True)
class QualityCheck:
    """One face's measures and the checks it failed (empty: it may be judged)."""

    measures: dict[str, float | None]
    reasons: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        rounded = {key: None if value is None else round(value, 4) for key, value in self.measures.items()}
        return {"passed": self.passed, "reasons": list(self.reasons), "measures": rounded}


@dataclass(frozen=True)
class QualityGate:
    """Thresholds of the checks; a None threshold turns its check off."""

    min_face_size: float | None = 40.0
    max_outside: float | None = 0.2
    min_sharpness: float | None = 20.0
    min_brightness: float | None = 35.0
    max_brightness: float | None = 225.0
    max_yaw: float | None = 0.6

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
                raise ConfigError(f"quality.{name}={value!r}: give a number >= 0, or null to turn the check off")

    def check(self, image_bgr: np.ndarray, face: Face) -> QualityCheck:
        """The measures of `face` in the frame and the checks it fails."""
        measures = face_measures(image_bgr, face)
        failed = [
            ("too_small", self.min_face_size is not None and measures["face_size"] < self.min_face_size),
            ("cut_off", self.max_outside is not None and measures["outside"] > self.max_outside),
            ("blurred", self.min_sharpness is not None and measures["sharpness"] < self.min_sharpness),
            ("too_dark", self.min_brightness is not None and measures["brightness"] < self.min_brightness),
            ("too_bright", self.max_brightness is not None and measures["brightness"] > self.max_brightness),
            ("turned", self.max_yaw is not None and measures["yaw"] is not None and measures["yaw"] > self.max_yaw),
        ]
        return QualityCheck(measures, tuple(reason for reason, fails in failed if fails))


def face_measures(image_bgr: np.ndarray, face: Face) -> dict[str, float | None]:
    """`face_size`, `outside`, `sharpness`, `brightness` and `yaw` (see the module docstring)."""
    height, width = image_bgr.shape[:2]
    x, y, w, h = (float(v) for v in face.box)
    x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    inside = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    measures: dict[str, float | None] = {
        "face_size": min(w, h),
        "outside": 1.0 - inside / (w * h) if w > 0 and h > 0 else 1.0,
        "sharpness": 0.0,
        "brightness": 0.0,
        "yaw": face_yaw(face.landmarks),
    }
    if inside >= 1:
        region = image_bgr[int(y0) : max(int(y0) + 1, int(y1)), int(x0) : max(int(x0) + 1, int(x1))]
        gray = cv2.cvtColor(region, cv2.COLOR_BGR2GRAY)
        measures["brightness"] = float(gray.mean())
        resampled = cv2.resize(gray, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
        measures["sharpness"] = float(cv2.Laplacian(resampled, cv2.CV_64F).var())
    return measures


def face_yaw(landmarks: tuple[float, ...] | None) -> float | None:
    """How far the face is turned, from YuNet's landmarks (right eye, left eye, nose tip, mouth corners: x, y each)."""
    if landmarks is None or len(landmarks) < 6:
        return None
    right_eye_x, left_eye_x, nose_x = landmarks[0], landmarks[2], landmarks[4]
    right, left = abs(nose_x - right_eye_x), abs(left_eye_x - nose_x)
    return abs(left - right) / (left + right) if left + right > 0 else None
