"""End-to-end liveness frames/s: fas's predictor with an INT8 model vs suri-liveness's own pipeline.

Both pipelines do the same work on each 640x480 BGR frame holding one face, on one thread: YuNet face
detection, the suri-liveness crop (1.5x square, reflect padding, letterbox to 128), MiniFASNetV2SE on
ONNX Runtime, the real/spoof decision.

- fas: `LivenessPredictor` + `YuNetDetector` + `load_backend(<INT8 .onnx>)`. The INT8 model is the
  suri-liveness weights imported by fas and exported the way `python export.py` does (CPU graph
  rewrites, then the default static QDQ recipe), calibrated on jittered crops of the reference faces.
- suri-liveness: its demo's steps (frame -> RGB, YuNet on RGB, its crop and letterbox, /255, its
  `best_model_quantized.onnx`, dynamic INT8 with ConvInteger), written out here; the crop functions of
  `fas.data.crop` are used because they reproduce its inputs byte for byte (tests/test_preprocess.py).

FP32 rows (fas's export, suri-liveness's `best_model.onnx`) and model-only latencies are reported for
context. Pipelines run interleaved in rounds so that load from other processes hits them alike.

    python experiments/predict_fps/benchmark.py [--frames 150 --rounds 3]

The frames are made from the three reference photos in ../shared/reference/images (or --reference-dir);
model files come from there too, or else from the download cache (python -m fas.download <name>).
Results go to results.json beside this script; results.md holds the recorded runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch

from fas.data.crop import letterbox, square_about_box
from fas.detect import YuNetDetector
from fas.download import resolve_model_file
from fas.export.onnx import export_onnx
from fas.export.quantize import QuantizationRecipe, quantize
from fas.export.rewrite import optimize_for_cpu
from fas.inference.backends import load_backend
from fas.inference.onnx_file import read_metadata
from fas.inference.predictor import LivenessPredictor
from fas.inference.preprocess import face_batch
from fas.registry import read_registry

HERE = Path(__file__).resolve().parent
DEFAULT_REFERENCE = HERE.parents[2] / "shared" / "reference"
FRAME_W, FRAME_H = 640, 480
IMAGES = ("image_F1.jpg", "image_F2.jpg", "image_T1.jpg")
EXPECTED = ("spoof", "spoof", "real")
FILES = ("suri-liveness", "suri-liveness-int8-onnx", "yunet-2023mar")


def model_file(name: str, reference_dir: Path | None) -> Path:
    """A registry file from the reference folder (any subfolder) or the download cache."""
    file = read_registry()[name].file
    found = sorted(reference_dir.rglob(file)) if reference_dir else []
    return found[0] if found else resolve_model_file(name)


def make_frames(images_dir: Path) -> list[np.ndarray]:
    """The reference photos (480x640 portrait) scaled to 480 high, centred on a 640x480 grey frame."""
    frames = []
    for name in IMAGES:
        image = cv2.imread(str(images_dir / name))
        scale = FRAME_H / image.shape[0]
        resized = cv2.resize(image, (round(image.shape[1] * scale), FRAME_H), interpolation=cv2.INTER_AREA)
        frame = np.full((FRAME_H, FRAME_W, 3), 127, np.uint8)
        left = (FRAME_W - resized.shape[1]) // 2
        frame[:, left : left + resized.shape[1]] = resized
        frames.append(frame)
    return frames


def jittered_faces(frames: list[np.ndarray], boxes: list[tuple[int, int, int, int]], convention, count: int):
    """Calibration crops: each reference face with random box shifts and scales, and mirrored."""
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        frame, (x, y, w, h) = frames[index % len(frames)], boxes[index % len(boxes)]
        scale = rng.uniform(0.85, 1.15)
        box = (x + rng.uniform(-0.1, 0.1) * w, y + rng.uniform(-0.1, 0.1) * h, w * scale, h * scale)
        image = frame[:, ::-1].copy() if index % 2 else frame
        if index % 2:
            box = (FRAME_W - box[0] - box[2], *box[1:])
        samples.append(face_batch(image, [box], convention))
    return np.concatenate(samples)


def build_fas_models(suri_pth: Path, frames, boxes, work: Path) -> tuple[Path, Path]:
    """fas's FP32 and INT8 exports of the imported suri-liveness weights, made as `export_model` makes
    them (CPU graph rewrites, range equalization, the default static recipe), calibrated on 128
    jittered crops of the reference faces."""
    backend = load_backend(suri_pth)
    calibration = jittered_faces(frames, boxes, backend.info.convention, count=128)
    plain = onnx.load(str(export_onnx(backend.model, backend.info, work / "plain.onnx")))
    fp32 = work / "model.onnx"
    onnx.save(optimize_for_cpu(plain, calibration), fp32)
    int8 = quantize(fp32, work / "model_int8.onnx", QuantizationRecipe(), calibration)
    return fp32, int8


def session(path: Path) -> ort.InferenceSession:
    """One thread, sequential, full graph optimisation (suri-liveness's loader settings, pinned to 1 thread)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def suri_pipeline(yunet: Path, model: Path) -> Callable[[np.ndarray], list[str]]:
    """suri-liveness's demo, step by step (detect on RGB, filter, crop, letterbox, /255, logit decision)."""
    detector = cv2.FaceDetectorYN.create(str(yunet), "", (320, 320), 0.8, 0.3, 5000)
    liveness = session(model)
    input_name = liveness.get_inputs()[0].name

    def run(frame: np.ndarray) -> list[str]:
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        detector.setInputSize((width, height))
        _, rows = detector.detect(rgb)
        crops = []
        for row in rows if rows is not None else []:
            x, y, w, h = (int(v) for v in row[:4])
            inside = x >= 0 and y >= 0 and x + w <= width and y + h <= height
            if inside and min(x, y, width - x - w, height - y - h) >= 5 and min(w, h) >= 60:
                crops.append(letterbox(square_about_box(rgb, (x, y, w, h), 1.5), 128))
        if not crops:
            return []
        batch = np.stack([c.transpose(2, 0, 1).astype(np.float32) / 255.0 for c in crops])
        logits = liveness.run(None, {input_name: batch})[0]
        return ["real" if live - spoof >= 0.0 else "spoof" for live, spoof in logits]

    return run


def fas_pipeline(yunet: Path, model: Path, max_side: int | None = None) -> Callable[[np.ndarray], list[str]]:
    detector = YuNetDetector(yunet, max_side=max_side)
    predictor = LivenessPredictor.from_files([model], detector, threshold=0.5, threads=1)
    return lambda frame: [p.label for p in predictor.predict(frame)]


def time_pipeline(run: Callable, frames: list[np.ndarray], count: int) -> list[float]:
    """Seconds per frame over `count` frames cycling through `frames`."""
    times = []
    for index in range(count):
        frame = frames[index % len(frames)]
        start = time.perf_counter()
        run(frame)
        times.append(time.perf_counter() - start)
    return times


def model_latency_ms(path: Path, size: int, count: int) -> float:
    liveness = session(path)
    name = liveness.get_inputs()[0].name
    batch = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    for _ in range(10):
        liveness.run(None, {name: batch})
    start = time.perf_counter()
    for _ in range(count):
        liveness.run(None, {name: batch})
    return (time.perf_counter() - start) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE, help="reference images and models")
    parser.add_argument("--frames", type=int, default=150, help="timed frames per pipeline and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if not (args.reference_dir / "images").is_dir():
        parser.error(f"{args.reference_dir / 'images'} not found; pass --reference-dir (the shared reference folder)")
    suri_pth, suri_int8, yunet = (model_file(name, args.reference_dir) for name in FILES)
    frames = make_frames(args.reference_dir / "images")
    boxes = [YuNetDetector(yunet).detect(frame)[0].box for frame in frames]
    suri_fp32 = suri_int8.with_name("best_model.onnx")

    with tempfile.TemporaryDirectory() as work:
        fas_fp32, fas_int8 = build_fas_models(suri_pth, frames, boxes, Path(work))
        pipelines = {
            "fas predictor, INT8 (fas export, static recipe)": fas_pipeline(yunet, fas_int8),
            "suri-liveness pipeline, its INT8 (dynamic, best_model_quantized.onnx)": suri_pipeline(yunet, suri_int8),
            "fas predictor, FP32 (fas's export)": fas_pipeline(yunet, fas_fp32),
            "fas predictor, INT8, detection at 320x240 (detector.max_side=320)": fas_pipeline(yunet, fas_int8, 320),
        }
        if suri_fp32.is_file():
            pipelines["suri-liveness pipeline, its FP32 (best_model.onnx)"] = suri_pipeline(yunet, suri_fp32)
        labels = {name: [run(frame) for frame in frames] for name, run in pipelines.items()}
        detector = YuNetDetector(yunet)
        pipelines["YuNet detection alone (640x480, BGR)"] = detector.detect
        pipelines["YuNet detection alone (shrunk to 320x240)"] = YuNetDetector(yunet, max_side=320).detect

        for run in pipelines.values():
            time_pipeline(run, frames, 15)  # warm-up
        per_round: dict[str, list[float]] = {name: [] for name in pipelines}
        all_times: dict[str, list[float]] = {name: [] for name in pipelines}
        for _ in range(args.rounds):
            for name, run in pipelines.items():
                times = time_pipeline(run, frames, args.frames)
                per_round[name].append(len(times) / sum(times))
                all_times[name].extend(times)
        models = {"fas INT8": fas_int8, "suri INT8": suri_int8, "fas FP32": fas_fp32}
        if suri_fp32.is_file():
            models["suri FP32"] = suri_fp32
        latency = {name: model_latency_ms(path, 128, 300) for name, path in models.items()}
        sizes = {name: path.stat().st_size for name, path in models.items()}
        convention = read_metadata(fas_fp32).convention
        inputs = np.concatenate([face_batch(f, [b], convention) for f, b in zip(frames, boxes, strict=True)])
        int8_error = np.abs(load_backend(fas_int8).logits(inputs) - load_backend(fas_fp32).logits(inputs)).max()

    results = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, shared with other processes "
        f"(load average {os.getloadavg()[0]:.1f} at the end)",
        "versions": {"onnxruntime": ort.__version__, "opencv": cv2.__version__, "torch": torch.__version__},
        "frames": f"{args.rounds} rounds x {args.frames} frames of {FRAME_W}x{FRAME_H}, one face, 1 thread",
        "fps_median_of_rounds": {name: round(statistics.median(v), 1) for name, v in per_round.items()},
        "fps_per_round": {name: [round(f, 1) for f in v] for name, v in per_round.items()},
        "ms_per_frame_p50_p90": {
            name: [round(float(np.percentile(v, q)) * 1000, 2) for q in (50, 90)] for name, v in all_times.items()
        },
        "model_only_ms_batch1": {name: round(v, 2) for name, v in latency.items()},
        "model_bytes": sizes,
        "expected_labels": dict(zip(IMAGES, EXPECTED, strict=True)),
        "labels": {name: [found[0] if found else "no_face" for found in v] for name, v in labels.items()},
        "fas_int8_vs_fp32_max_abs_logit_difference": round(float(int8_error), 4),
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
