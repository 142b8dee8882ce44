"""Face liveness on images, folders, video files and cameras (configs/predict.yaml):

    python -m fas.predict input=photo.jpg                       # Silent-Face 2.7 + 4.0 fused (default)
    python -m fas.predict input=photos/ liveness=suri_liveness  # a folder, with a progress bar
    python -m fas.predict input=clip.mp4                        # a video file
    python -m fas.predict input=0 max_frames=300                # camera 0

Writes to the run directory (or output_dir=...): `predictions.jsonl`, one line per face (file, frame,
box, per-model scores, fused spoof score, label) or per image without a face or that cannot be read,
and annotated copies (green real, red spoof, with the spoof score) under `annotated/`. A folder's
videos are scored frame by frame like a single video file. In a video (or from a camera) each face is also
followed across frames (`tracking`, fas/inference/tracking.py): its line carries its track and the track's fused
verdict so far, and the video ends with one `"kind": "track"` line per track, its decision. Files are read by
`fas.media`, the same strict reader training and evaluation use.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from fas.cli import exit_on_user_error
from fas.errors import ConfigError, FasError
from fas.hydra_utils import refuse_renamed_overrides
from fas.inference.predictor import FacePrediction, LivenessPredictor
from fas.inference.tracking import FaceTracker, TrackedFace
from fas.media import (
    Frame,
    MediaError,
    is_video_file,
    media_files,
    open_camera,
    open_video,
    read_image,
    set_max_pixels,
    video_frames,
)

log = logging.getLogger(__name__)


class PredictError(FasError, RuntimeError):
    """Nothing could be predicted."""


REAL_COLOR, SPOOF_COLOR, RETRY_COLOR = (0, 200, 0), (0, 0, 255), (0, 200, 255)  # BGR
VIDEO_CODEC = "mp4v"


def build_predictor(cfg: DictConfig) -> LivenessPredictor:
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
        cv2.setNumThreads(cfg.threads)
    detector = hydra.utils.instantiate(cfg.detector)
    return LivenessPredictor.from_files(
        list(cfg.liveness.models),
        detector,
        cfg.liveness.threshold,
        device=cfg.device,
        threads=cfg.get("threads"),
        convention=cfg.liveness.get("convention"),
        quality=hydra.utils.instantiate(cfg.quality.gate) if cfg.get("quality") and cfg.quality.get("gate") else None,
    )


def predict(cfg: DictConfig) -> Path:
    """Run the prediction the config describes; returns the path of `predictions.jsonl`."""
    if cfg.input is None or str(cfg.input) == "":
        raise ConfigError("input is not set: pass input=<image, folder, video file or camera index>")
    set_max_pixels(cfg.get("max_image_pixels"))
    predictor = build_predictor(cfg)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    jsonl = output_dir / "predictions.jsonl"
    with jsonl.open("w") as stream:
        writer = PredictionWriter(stream)
        tracking = dict(cfg.tracking) if cfg.get("tracking") else None
        run_input(cfg.input, predictor, writer, output_dir, cfg.annotate, cfg.get("max_frames"), tracking)
    summary = ", ".join(f"{what} {n}" for what, n in writer.counts.items())
    log.info("%s -> %s", summary or "nothing to predict", jsonl)
    failed = writer.counts["unreadable"]
    if failed and failed == sum(writer.counts.values()):
        raise PredictError(
            f"nothing was predicted: {writer.first_error} (all {failed} input(s) failed, each listed with its "
            f"error in {jsonl})"
        )
    return jsonl


def run_input(
    value: Any,
    predictor: LivenessPredictor,
    writer: PredictionWriter,
    output_dir: Path,
    annotate: bool,
    max_frames: int | None,
    tracking: dict[str, Any] | None = None,
) -> None:
    """Dispatch on what `input` is: a camera index, a folder, a video file or an image file. `tracking` (the
    `FaceTracker` settings, or None) follows faces across a video's frames."""
    annotated_dir = output_dir / "annotated" if annotate else None
    path = Path(str(value)).expanduser()
    if not path.exists() and str(value).isdigit():
        camera_copy = output_dir / f"camera_{value}.mp4" if annotate else None
        run_video(int(value), predictor, writer, camera_copy, max_frames, tracking)
    elif path.is_dir():
        run_folder(path, predictor, writer, output_dir, annotate, max_frames, tracking)
    elif not path.is_file():
        raise MediaError(path, "input not found; give an image, a folder, a video file or a camera index")
    elif is_video_file(path):
        annotated = output_dir / f"{path.stem}_annotated.mp4" if annotate else None
        run_video(path, predictor, writer, annotated, max_frames, tracking)
    else:
        run_images([read_or_report(path, writer)], predictor, writer, annotated_dir, path.parent)


def run_folder(
    folder: Path,
    predictor: LivenessPredictor,
    writer: PredictionWriter,
    output_dir: Path,
    annotate: bool,
    max_frames: int | None,
    tracking: dict[str, Any] | None = None,
) -> None:
    """Every image of a folder (recursively, with a progress bar), then every video in it, frame by frame."""
    files = media_files(folder)
    images = [file for file in files if not is_video_file(file)]
    videos = [file for file in files if is_video_file(file)]
    if not files:
        raise MediaError(folder, "no image or video files in this folder")
    annotated_dir = output_dir / "annotated" if annotate else None
    frames = (read_or_report(file, writer) for file in tqdm(images, desc="images", unit="img"))
    run_images(frames, predictor, writer, annotated_dir, folder)
    for video in videos:
        relative = video.relative_to(folder)
        annotated = annotated_dir / relative.with_name(f"{video.stem}_annotated.mp4") if annotated_dir else None
        if annotated is not None:
            annotated.parent.mkdir(parents=True, exist_ok=True)
        try:
            run_video(video, predictor, writer, annotated, max_frames, tracking)
        except MediaError as error:
            writer.error(str(video), error)


def read_or_report(path: Path, writer: PredictionWriter) -> Frame | None:
    notes: list[str] = []
    try:
        return Frame(str(path), None, read_image(path, notes), notes)
    except MediaError as error:
        writer.error(str(path), error)
        return None


def run_images(
    frames: Iterable[Frame | None],
    predictor: LivenessPredictor,
    writer: PredictionWriter,
    annotated_dir: Path | None,
    root: Path,
) -> None:
    for frame in frames:
        if frame is None:
            continue
        predictions = predict_frame(frame, predictor, writer)
        if predictions is not None and annotated_dir is not None:
            target = annotated_dir / Path(frame.source).relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(target), annotate_image(frame.image, predictions)):
                log.warning("%s: could not write the annotated copy %s", frame.source, target)


def run_video(
    source: Path | int,
    predictor: LivenessPredictor,
    writer: PredictionWriter,
    annotated: Path | None,
    max_frames: int | None,
    tracking: dict[str, Any] | None = None,
) -> None:
    """Every frame of a video file or camera; with `tracking`, each face's track and one decision per track."""
    capture = open_camera(source) if isinstance(source, int) else open_video(source)
    threshold = predictor.threshold if predictor.threshold is not None else 0.5
    tracker = FaceTracker(threshold, **tracking) if tracking is not None else None
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    total = min(total, max_frames) if total and max_frames else total or max_frames
    video_writer = None
    try:
        for frame in tqdm(video_frames(capture, source, max_frames), total=total, desc="frames", unit="frame"):
            predictions = predict_frame(frame, predictor, writer, tracker) or []
            if annotated is not None:
                if video_writer is None:
                    height, width = frame.image.shape[:2]
                    fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODEC)
                    video_writer = cv2.VideoWriter(str(annotated), fourcc, fps, (width, height))
                video_writer.write(annotate_image(frame.image, predictions))
    except KeyboardInterrupt:
        log.info("%s: stopped by the user", source)
    finally:
        if video_writer is not None:
            video_writer.release()
            log.info("annotated video: %s", annotated)
        if tracker is not None:
            writer.tracks(str(source), tracker.finish())


def predict_frame(
    frame: Frame, predictor: LivenessPredictor, writer: PredictionWriter, tracker: FaceTracker | None = None
) -> list[FacePrediction] | None:
    """Predict on one image (a video's frame: its faces' tracks too) and record it; None when it could not be
    processed (already reported)."""
    for note in frame.notes:
        log.info("%s: %s", frame.source, note)
    try:
        predictions = predictor.predict(frame.image)
    except FasError as error:
        writer.error(frame.source, error, frame.index)
        return None
    tracked = tracker.update(frame.index or 0, predictions) if tracker is not None else None
    writer.faces(frame, predictions, tracked)
    return predictions


class PredictionWriter:
    """Appends JSON lines and counts what it wrote (faces real/spoof, images without face, errors)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.counts: Counter[str] = Counter()
        self.first_error: str | None = None

    def faces(self, frame: Frame, predictions: list[FacePrediction], tracked: list[TrackedFace] | None = None) -> None:
        base = {"file": frame.source, "frame": frame.index}
        if frame.notes:
            base["notes"] = frame.notes
        if not predictions:
            self._write({**base, "face": None, "label": "no_face"})
            self.counts["without a face"] += 1
            if frame.index is None:
                log.warning("%s: no face found", frame.source)
        for number, prediction in enumerate(predictions):
            track = tracked[number].to_dict() if tracked else {}
            self._write({**base, "face": number, **prediction.to_dict(), **track})
            self.counts[prediction.label] += 1

    def tracks(self, source: str, decisions: list[dict[str, Any]]) -> None:
        """One line per track of a video: `"kind": "track"`, its frames and its decision."""
        for decision in decisions:
            self._write({"file": source, "kind": "track", **decision})
            self.counts[f"track {decision['label']}"] += 1

    def error(self, source: str, error: Exception, index: int | None = None) -> None:
        log.warning("%s", error)
        self.first_error = self.first_error or str(error)
        self._write({"file": source, "frame": index, "error": str(error)})
        self.counts["unreadable"] += 1

    def _write(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps(record) + "\n")


def annotate_image(image: np.ndarray, predictions: list[FacePrediction]) -> np.ndarray:
    """A copy with each face boxed (green real, red spoof, amber retry) and labelled with its spoof score."""
    out = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 300))
    for prediction in predictions:
        x, y, w, h = prediction.face.box
        color = RETRY_COLOR if prediction.status == "retry" else REAL_COLOR if prediction.is_real else SPOOF_COLOR
        cv2.rectangle(out, (x, y), (x + w, y + h), color, thickness)
        text = (
            f"retry: {', '.join(prediction.quality.reasons)}"
            if prediction.status == "retry"
            else f"{prediction.label} {prediction.spoof_score:.2f}"
        )
        scale = 0.5 * thickness
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(y - text_h - baseline - 2, 0)
        cv2.rectangle(out, (x, top), (x + text_w + 2, top + text_h + baseline + 2), color, cv2.FILLED)
        cv2.putText(out, text, (x + 1, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness)
    return out


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        predict(cfg)


if __name__ == "__main__":
    refuse_renamed_overrides(sys.argv[1:])
    main()
