"""Detect faces, crop each the way each model wants, score them, fuse the models, decide real/spoof.

Fusion is Silent-Face's (its `test.py` and Android app): each model sees its own crop, softmax per
model, mean of the probability vectors. The decision is either the argmax of that mean (real iff it
is the real class: `threshold=None`, what Silent-Face does) or a threshold on the fused spoof score
`1 - mean p(real)` (spoof iff score > threshold; suri-liveness's demo is threshold 0.5). A single model
whose file records its operating point (fas checkpoints and exports) is judged at that threshold unless
one is given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fas.convention import ClassScheme
from fas.data.crop import is_valid_box
from fas.detect import Face, FaceDetector
from fas.download import resolve_model_file
from fas.errors import ConfigError
from fas.inference.backends import Backend, load_backend
from fas.inference.preprocess import face_batch
from fas.inference.quality import QualityCheck, QualityGate

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class ModelScore:
    probabilities: tuple[float, ...]
    spoof_score: float


@dataclass(frozen=True)
class FacePrediction:
    """One face: its box, each model's softmax and spoof score, the fused spoof score and the label."""

    face: Face
    models: dict[str, ModelScore]
    fused_probabilities: tuple[float, ...] | None  # None when the models' class schemes differ
    spoof_score: float
    is_real: bool
    quality: QualityCheck | None = None  # the quality gate's check, when the predictor has a gate

    @property
    def status(self) -> str:
        """`judged`, or `retry` when the face failed the quality gate (its reasons in `quality.reasons`)."""
        return "retry" if self.quality is not None and not self.quality.passed else "judged"

    @property
    def label(self) -> str:
        """`real` or `spoof`; `retry` for a face the gate turned back (its scores are kept, not a verdict)."""
        if self.status == "retry":
            return "retry"
        return "real" if self.is_real else "spoof"

    def to_dict(self) -> dict[str, Any]:
        return {
            "box_xywh": list(self.face.box),
            "detector_score": round(self.face.score, 6),
            "models": {
                name: {"spoof_score": score.spoof_score, "probabilities": list(score.probabilities)}
                for name, score in self.models.items()
            },
            "fused_probabilities": list(self.fused_probabilities) if self.fused_probabilities else None,
            "spoof_score": self.spoof_score,
            "label": self.label,
            "status": self.status,
            **({"retry_reasons": list(self.quality.reasons), "quality": self.quality.measures} if self.quality else {}),
        }


class LivenessPredictor:
    """One or more liveness models (any `load_backend` format) behind an optional face detector."""

    def __init__(
        self,
        models: Mapping[str, Backend],
        detector: FaceDetector | None = None,
        threshold: float | None = None,
        quality: QualityGate | None = None,
    ) -> None:
        if not models:
            raise ConfigError("the predictor needs at least one liveness model (liveness.models)")
        self.models = dict(models)
        self.detector = detector
        self.quality = quality
        recorded = [backend.info.threshold for backend in self.models.values()]
        if threshold is None and len(recorded) == 1 and recorded[0] is not None:
            threshold = float(recorded[0]["value"])  # the operating point the model file ships with
            log.info(
                "threshold %.4f: recorded in %s (chosen on its training run's validation data)", threshold, *models
            )
        self.threshold = threshold
        schemes = {_class_layout(backend.info.class_scheme) for backend in self.models.values()}
        self.same_classes = len(schemes) == 1
        if threshold is None and not self.same_classes:
            raise ConfigError(
                f"models {', '.join(self.models)} have different classes, so the argmax of their mean softmax "
                "means nothing; set liveness.threshold (e.g. 0.5) to decide on the mean real probability"
            )

    @classmethod
    def from_files(
        cls,
        model_files: Sequence[str | Path],
        detector: FaceDetector | None = None,
        threshold: float | None = None,
        device: str = "cpu",
        threads: int | None = None,
        convention: str | None = None,
        quality: QualityGate | None = None,
    ) -> LivenessPredictor:
        """Models from paths or registry names (`models/registry.yaml`), named by what was given;
        `convention` serves the files that record none (see `load_backend`)."""
        models: dict[str, Backend] = {}
        for value in model_files:
            name = Path(str(value)).name
            if name in models:
                name = str(value)
            models[name] = load_backend(resolve_model_file(value), device, threads, convention)
        return cls(models, detector, threshold, quality)

    def predict(self, image_bgr: np.ndarray) -> list[FacePrediction]:
        """Detect the faces of an HxWx3 uint8 BGR image and judge each."""
        if self.detector is None:
            raise ConfigError("this predictor has no face detector; pass faces to classify() instead")
        return self.classify(image_bgr, self.detector.detect(image_bgr))

    def classify(self, image_bgr: np.ndarray, faces: Sequence[Face]) -> list[FacePrediction]:
        """Judge given faces: one batch per model, each cropped by that model's convention."""
        height, width = image_bgr.shape[:2]
        faces = [face for face in faces if is_valid_box(face.box, width, height)]
        if not faces:
            return []
        boxes = [face.box for face in faces]
        probabilities = {
            name: softmax(backend.logits(face_batch(image_bgr, boxes, backend.info.convention)))
            for name, backend in self.models.items()
        }
        decided = [self._decide(face, {n: p[i] for n, p in probabilities.items()}) for i, face in enumerate(faces)]
        if self.quality is None:
            return decided
        return [replace(d, quality=self.quality.check(image_bgr, d.face)) for d in decided]

    def _decide(self, face: Face, probabilities: dict[str, np.ndarray]) -> FacePrediction:
        real_index = {name: self.models[name].info.class_scheme.real_class_index for name in probabilities}
        scores = {
            name: ModelScore(tuple(float(v) for v in p), float(1.0 - p[real_index[name]]))
            for name, p in probabilities.items()
        }
        spoof_score = float(np.mean([score.spoof_score for score in scores.values()]))
        fused = np.mean(list(probabilities.values()), axis=0) if self.same_classes else None
        if self.threshold is None:
            is_real = int(np.argmax(fused)) == next(iter(real_index.values()))
        else:
            is_real = spoof_score <= self.threshold
        fused_tuple = tuple(float(v) for v in fused) if fused is not None else None
        return FacePrediction(face, scores, fused_tuple, spoof_score, is_real)


def _class_layout(scheme: ClassScheme) -> tuple[tuple[str, ...], int]:
    return scheme.class_names, scheme.real_class_index
