"""Face detection, for prediction and for preparing data without boxes. Any object with
`detect(image_bgr) -> list[Face]` plugs in (`configs/detector/*.yaml` instantiate one); fas ships YuNet
through OpenCV's `cv2.FaceDetectorYN`.

Silent-Face's own detector is a Caffe RetinaFace, which OpenCV 5 can no longer read; YuNet is what
suri-liveness uses, and on the reference images it leads Silent-Face's models to the same labels.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import hydra
import numpy as np
from omegaconf import OmegaConf

from fas.download import resolve_model_file
from fas.errors import FasError

log = logging.getLogger(__name__)

RETRY_SIDE = 640  # where a full-size pass that found nothing looks again (faces too large for YuNet's anchors)


class DetectorError(FasError, RuntimeError):
    """The face detector cannot be built (missing or unreadable model file)."""


@dataclass(frozen=True)
class Face:
    """A detected face: box (x, y, w, h) in integer pixels of the image, the detector's score, and its five
    landmarks (right eye, left eye, nose tip, right and left mouth corner; x, y each, in pixels) where the detector
    gives them."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: tuple[float, ...] | None = None


class FaceDetector(Protocol):
    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces in an HxWx3 uint8 BGR image, best first."""
        ...


class YuNetDetector:
    """YuNet via `cv2.FaceDetectorYN`, the settings of suri-liveness's demo by default.

    Boxes are truncated to integers as Silent-Face and suri-liveness both do before cropping.
    `color_order` is what YuNet is fed: `bgr` (OpenCV's demo) or `rgb` (suri-liveness's demo, whose
    boxes it then reproduces exactly). Faces narrower or shorter than `min_face_size` are dropped.
    `max_side` detects on a copy shrunk to that longer side (boxes mapped back to the full image); the
    config's default, 640, keeps webcam frames as they are and makes a phone photo 10-20x cheaper
    (1920x1440: 22 ms instead of 204 ms; 4000x3000: 47 ms instead of 1 s). YuNet's anchors also stop at
    faces of a few hundred pixels, so at full size a face that fills a large photo is not found at all.
    With `retry`, a pass that finds nothing is repeated once at the other scale, and logged: at full
    size after a shrunk pass (a small face in a large scene), on a 640-px copy after a full-size one.
    """

    def __init__(
        self,
        model_path: str | Path,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        min_face_size: int = 0,
        color_order: Literal["bgr", "rgb"] = "bgr",
        max_side: int | None = None,
        retry: bool = True,
    ) -> None:
        if color_order not in ("bgr", "rgb"):
            raise DetectorError(f"detector color_order must be 'bgr' or 'rgb', got {color_order!r}")
        self.score_threshold = score_threshold
        path = resolve_model_file(model_path)
        try:
            with opencv_log_level(cv2.utils.logging.LOG_LEVEL_ERROR):  # its "Targets are not supported" note
                self.detector = cv2.FaceDetectorYN.create(
                    str(path), "", (320, 320), score_threshold, nms_threshold, top_k
                )
            self.detector.setInputSize((32, 32))
            self.detector.detect(np.zeros((32, 32, 3), np.uint8))  # a file without YuNet's outputs fails here
        except cv2.error as error:
            first_line = str(error).strip().splitlines()[-1].split(") ", 1)[-1]
            raise DetectorError(
                f"{path}: not a YuNet face detector OpenCV can run ({first_line}); give detector.model_path a YuNet "
                "ONNX file, e.g. the one python -m fas.download yunet-2023mar fetches"
            ) from None
        self.min_face_size = min_face_size
        self.color_order = color_order
        self.max_side = max_side
        self.retry = retry

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB) if self.color_order == "rgb" else image_bgr
        faces = self._detect_at(image, self.max_side)
        longest = max(image.shape[:2])
        shrunk = bool(self.max_side) and longest > self.max_side
        if faces or not self.retry or (not shrunk and longest <= RETRY_SIDE):
            return faces
        faces = self._detect_at(image, None if shrunk else RETRY_SIDE)
        if faces:
            height, width = image.shape[:2]
            first, second = (
                (f"a {self.max_side}-px copy", "full size") if shrunk else ("full size", f"a {RETRY_SIDE}-px copy")
            )
            log.info(
                "%dx%d image: no face on %s, %d found at %s (detector.retry)", width, height, first, len(faces), second
            )
        return faces

    def _detect_at(self, image: np.ndarray, side: int | None) -> list[Face]:
        """Faces found on `image` shrunk to a longer side of `side` (None: as it is), in its pixels."""
        scale = 1.0
        if side and max(image.shape[:2]) > side:
            scale = side / max(image.shape[:2])
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        height, width = image.shape[:2]
        self.detector.setInputSize((width, height))
        _, rows = self.detector.detect(image)
        if rows is None:
            return []
        faces = [
            Face(tuple(int(v / scale) for v in row[:4]), float(row[14]), tuple(float(v / scale) for v in row[4:14]))
            for row in rows
        ]
        faces = [f for f in faces if min(f.box[2], f.box[3]) >= max(self.min_face_size, 1)]
        return sorted(faces, key=lambda face: -face.score)


@contextlib.contextmanager
def opencv_log_level(level: int) -> Iterator[None]:
    """OpenCV's own log level for the duration of a call (its notes go straight to stderr otherwise)."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(level)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


FACE_RULES = ("largest", "best")


def choose_face(faces: list[Face], rule: str = "largest") -> Face | None:
    """The face a labelled image is about: the largest box (default) or the best detector score."""
    if rule not in FACE_RULES:
        raise DetectorError(f"face rule must be one of {', '.join(FACE_RULES)}, got {rule!r}")
    if not faces:
        return None
    if rule == "best":
        return max(faces, key=lambda face: face.score)
    return max(faces, key=lambda face: face.box[2] * face.box[3])


def detector_factory(config: Any) -> Callable[[], FaceDetector] | None:
    """A picklable function that builds the configured detector (a `configs/detector/` config) where it is
    called: in each worker process that needs one, and not at all where no record lacks a face box."""
    if not config:
        return None
    settings = dict(config) if isinstance(config, dict) else OmegaConf.to_container(config, resolve=True)
    return functools.partial(hydra.utils.instantiate, settings)
