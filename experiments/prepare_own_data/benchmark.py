"""Speed and peak memory of `fas.data.prepare` on your own data: full-size photos and videos, faces detected.

    python experiments/prepare_own_data/benchmark.py            # writes results.json and results.md here

Two folder trees are built in a temporary folder from the three real photos in ../shared/reference/images
(varied by a random crop, flip and brightness, then resized to the size of a phone photo):
- photos: 240 JPEGs of 1920x1440 (q 92), no boxes: every face is found by YuNet with the settings of
  configs/detector/yunet.yaml (score 0.8, detection on a 640-px copy), then cropped at 80 px from the
  full-size photo (Silent-Face's rule);
- videos: 6 MP4 clips of 1280x720, 90 frames each, 30 frames sampled per clip (frames_per_video=30).
Each tree is prepared in a fresh process, once with 1 worker (everything in one process: its peak RSS
is the pipeline's) and once with one worker per core, interleaved; each run prepares into a new folder.
Reported: records (images or frames) per second, and the peak RSS of the main process and of the
largest worker (from `resource.getrusage` of the process and of its children).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from fas.hardware import cpu_info, describe_cpu

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REFERENCE = Path(os.environ.get("FAS_SHARED_DIR", REPO.parent / "shared")) / "reference"
PHOTO_SIZE, VIDEO_SIZE = (1920, 1440), (1280, 720)

PREPARE_ONE = """
import json, resource, sys, time
from fas.convention import InputConvention
from fas.data.sources.folder import FolderSource
from fas.data.prepare import prepare
from fas.detect import detector_factory
from omegaconf import OmegaConf
root, output, workers, frames, yunet = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
settings = OmegaConf.load("configs/detector/yunet.yaml")  # as python train.py data=folder detects
settings.model_path = yunet
detector = detector_factory(settings)
start = time.perf_counter()
crop = InputConvention(input_size=80, crop_scale=2.7, crop_mode="shift")
summary = prepare(FolderSource(root, frames_per_video=frames), output, crop, detector,
                  workers=workers, chunk_size=32, progress=False)
seconds = time.perf_counter() - start
records = sum(summary.samples.values()) + sum(summary.skipped.values())
print(json.dumps({"records": records, "crops": sum(summary.samples.values()), "seconds": seconds,
                  "main_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def varied(image: np.ndarray, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A random 85-100% crop of a photo, maybe flipped, brightened or darkened, resized to `size`."""
    height, width = image.shape[:2]
    scale = rng.uniform(0.85, 1.0)
    h, w = int(height * scale), int(width * scale)
    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    out = image[y : y + h, x : x + w]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = np.clip(out.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
    return cv2.resize(out, size, interpolation=cv2.INTER_CUBIC)


def build_trees(work: Path, photos: int, clips: int, frames_per_clip: int) -> tuple[Path, Path]:
    sources = [cv2.imread(str(p)) for p in sorted((REFERENCE / "images").glob("*.jpg"))]
    labels = {"image_T1.jpg": "live"}
    names = sorted(p.name for p in (REFERENCE / "images").glob("*.jpg"))
    rng = np.random.default_rng(0)
    photo_root, video_root = work / "photos", work / "videos"
    for index in range(photos):
        which = index % len(sources)
        folder = photo_root / labels.get(names[which], "spoof") / f"p{index // 12:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(folder / f"{index:04d}.jpg"), varied(sources[which], rng, PHOTO_SIZE), [cv2.IMWRITE_JPEG_QUALITY, 92]
        )
    for clip in range(clips):
        which = clip % len(sources)
        folder = video_root / labels.get(names[which], "spoof") / f"v{clip:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, VIDEO_SIZE)
        for _ in range(frames_per_clip):
            writer.write(varied(sources[which], rng, VIDEO_SIZE))
        writer.release()
    return photo_root, video_root


def run_once(root: Path, output: Path, workers: int, frames: int) -> dict:
    yunet = REFERENCE / "yunet/face_detection_yunet_2023mar.onnx"
    command = [sys.executable, "-c", PREPARE_ONE, str(root), str(output), str(workers), str(frames), str(yunet)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=240)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--frames-per-clip", type=int, default=90)
    parser.add_argument("--sampled-frames", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print("CPU:", describe_cpu(), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos, videos = build_trees(work, args.photos, args.clips, args.frames_per_clip)
        for round_index in range(args.rounds):
            for kind, root in (("photos", photos), ("videos", videos)):
                for workers in (1, cores):
                    output = work / f"cache_{kind}_{workers}_{round_index}"
                    run = run_once(root, output, workers, args.sampled_frames)
                    run.update(
                        kind=kind, workers=workers, round=round_index, per_second=run["records"] / run["seconds"]
                    )
                    print(json.dumps(run), flush=True)
                    results.append(run)
    summary = {
        "cpu": cpu_info(),
        "settings": vars(args) | {"photo_size": PHOTO_SIZE, "video_size": VIDEO_SIZE, "crop": "80 px, 2.7, shift"},
        "runs": results,
    }
    (HERE / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_markdown(summary)


def write_markdown(summary: dict) -> None:
    lines = [
        "# `fas.data.prepare` on your own data: photos and videos, faces detected with YuNet",
        "",
        f"CPU: {describe_cpu(summary['cpu'])}. Command: `python experiments/prepare_own_data/benchmark.py` "
        f"(settings: {json.dumps(summary['settings'])}).",
        "",
        "| data | workers | records | crops | records / s (median) | main peak RSS (MB) | worker peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("photos", "videos"):
        for workers in sorted({r["workers"] for r in summary["runs"]}):
            runs = [r for r in summary["runs"] if r["kind"] == kind and r["workers"] == workers]
            rate = float(np.median([r["per_second"] for r in runs]))
            lines.append(
                f"| {kind} | {workers} | {runs[0]['records']} | {runs[0]['crops']} | {rate:.1f} | "
                f"{max(r['main_rss_mb'] for r in runs):.0f} | {max(r['worker_rss_mb'] for r in runs):.0f} |"
            )
    lines += ["", "Records are images (photos) or sampled frames (videos); crops are those with a face found."]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
