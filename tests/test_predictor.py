from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fas.detect import Face, YuNetDetector
from fas.errors import ConfigError
from fas.inference.backends import load_backend
from fas.inference.predictor import LivenessPredictor, softmax

SILENTFACE = ("silentface/2.7_80x80_MiniFASNetV2.pth", "silentface/4_0_0_80x80_MiniFASNetV1SE.pth")
SURI = "suri-liveness/best_model.pth"


def test_softmax_hand_computed() -> None:
    np.testing.assert_allclose(softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])


def test_silentface_fusion_matches_the_recorded_pipeline(reference_dir: Path, published_onnx: dict[str, Path]) -> None:
    expected = json.loads((reference_dir / "expected/silentface.json").read_text())
    torch_files = [reference_dir / f for f in SILENTFACE]
    onnx_files = [published_onnx[Path(f).name] for f in SILENTFACE]
    for files, tolerance in ((torch_files, 1e-5), (onnx_files, 1e-3)):
        predictor = LivenessPredictor.from_files(files)
        assert list(predictor.models) == [Path(f).name for f in files]
        for name, record in expected["images"].items():
            image = cv2.imread(str(reference_dir / "images" / name))
            (prediction,) = predictor.classify(image, [Face(tuple(record["bbox_xywh"]), 1.0)])
            np.testing.assert_allclose(prediction.fused_probabilities, record["fused_mean_softmax"], atol=tolerance)
            assert prediction.is_real == record["is_real"], name
            assert prediction.spoof_score == pytest.approx(1 - record["fused_mean_softmax"][1], abs=tolerance)


def test_suri_decision_matches_the_recorded_pipeline(reference_dir: Path, published_onnx: dict[str, Path]) -> None:
    expected = json.loads((reference_dir / "expected/suri_liveness.json").read_text())
    for model in (reference_dir / SURI, published_onnx["best_model.pth"]):
        predictor = LivenessPredictor.from_files([model], threshold=0.5)
        for name, record in expected["images"].items():
            image = cv2.imread(str(reference_dir / "images" / name))
            face = record["faces"][0]
            (prediction,) = predictor.classify(image, [Face(tuple(face["bbox_xywh"]), face["det_conf"])])
            live, spoof = face["logits"]["best_model_97.80.onnx"]
            assert prediction.is_real == (live - spoof >= 0), name
            assert prediction.spoof_score == pytest.approx(1 / (1 + np.exp(live - spoof)), abs=1e-4)


def test_threshold_moves_the_decision(reference_dir: Path) -> None:
    image = cv2.imread(str(reference_dir / "images/image_T1.jpg"))
    face = Face((123, 121, 168, 230), 0.9)
    strict = LivenessPredictor.from_files([reference_dir / SURI], threshold=1e-6)
    (prediction,) = strict.classify(image, [face])
    assert 1e-6 < prediction.spoof_score < 1e-3 and not prediction.is_real and prediction.label == "spoof"


def test_models_with_other_classes_fuse_their_real_probabilities(reference_dir: Path) -> None:
    files = [reference_dir / SILENTFACE[0], reference_dir / SURI]
    with pytest.raises(ConfigError, match=r"different classes.*set liveness.threshold"):
        LivenessPredictor.from_files(files)
    predictor = LivenessPredictor.from_files(files, threshold=0.5)
    image = cv2.imread(str(reference_dir / "images/image_F1.jpg"))
    (prediction,) = predictor.classify(image, [Face((186, 113, 196, 239), 0.9)])
    assert prediction.fused_probabilities is None
    scores = [score.spoof_score for score in prediction.models.values()]
    assert prediction.spoof_score == pytest.approx(np.mean(scores)) and prediction.label == "spoof"


def test_detects_and_judges_several_faces(reference_dir: Path) -> None:
    canvas = np.full((640, 960, 3), 128, np.uint8)
    canvas[:, :480] = cv2.imread(str(reference_dir / "images/image_T1.jpg"))
    canvas[:, 480:] = cv2.imread(str(reference_dir / "images/image_F2.jpg"))
    detector = YuNetDetector(reference_dir / "yunet/face_detection_yunet_2023mar.onnx")
    predictor = LivenessPredictor({"suri": load_backend(reference_dir / SURI)}, detector, threshold=0.5)
    predictions = sorted(predictor.predict(canvas), key=lambda p: p.face.box[0])
    assert [p.label for p in predictions] == ["real", "spoof"]
    record = predictions[0].to_dict()
    assert record["label"] == "real" and set(record["models"]) == {"suri"} and len(record["box_xywh"]) == 4
    assert predictor.predict(np.full((480, 640, 3), 128, np.uint8)) == []


def test_boxes_outside_the_image_are_skipped(reference_dir: Path) -> None:
    predictor = LivenessPredictor.from_files([reference_dir / SURI], threshold=0.5)
    assert predictor.classify(np.zeros((100, 100, 3), np.uint8), [Face((200, 10, 20, 20), 0.9)]) == []


def test_no_models_or_no_detector_are_config_errors(reference_dir: Path) -> None:
    with pytest.raises(ConfigError, match="at least one liveness model"):
        LivenessPredictor({})
    with pytest.raises(ConfigError, match="no face detector"):
        LivenessPredictor.from_files([reference_dir / SURI], threshold=0.5).predict(np.zeros((8, 8, 3), np.uint8))


def test_a_single_model_is_judged_at_the_threshold_its_file_records(ranked_checkpoint: Path) -> None:
    recorded = torch.load(ranked_checkpoint, map_location="cpu", weights_only=True)["fas_threshold"]["value"]
    assert LivenessPredictor.from_files([ranked_checkpoint]).threshold == pytest.approx(recorded)
    assert LivenessPredictor.from_files([ranked_checkpoint], threshold=0.5).threshold == 0.5
