"""`python -m fas.predict`: end to end with YuNet on the reference images, odd files, video, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import hydra
import numpy as np
import pytest

from fas.detect import YuNetDetector
from fas.errors import ConfigError
from fas.media import MediaError
from fas.predict import PredictError, predict
from fas.registry import read_registry

from conftest import CONFIG_DIR, REPO_ROOT, compose_config

RECORDED_LABELS = {"image_F1.jpg": "spoof", "image_F2.jpg": "spoof", "image_T1.jpg": "real"}
LIVENESS_FILES = {
    "silentface_pair": ["silentface/2.7_80x80_MiniFASNetV2.pth", "silentface/4_0_0_80x80_MiniFASNetV1SE.pth"],
    "suri_liveness": ["suri-liveness/best_model.pth"],
}


def run(reference_dir: Path, run_dir: Path, overrides: list[str]) -> list[dict]:
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    cfg = compose_config("predict", [f"detector.model_path={yunet}", *overrides], run_dir)
    jsonl = predict(cfg)
    assert jsonl == run_dir / "predictions.jsonl"
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


def models_override(paths: list[Path]) -> str:
    return "liveness.models=[" + ",".join(str(p) for p in paths) + "]"


@pytest.mark.parametrize("liveness", sorted(LIVENESS_FILES))
def test_reference_images_get_the_recorded_labels(reference_dir: Path, tmp_path: Path, liveness: str) -> None:
    files = [reference_dir / f for f in LIVENESS_FILES[liveness]]
    overrides = [f"input={reference_dir / 'images'}", f"liveness={liveness}", models_override(files)]
    records = run(reference_dir, tmp_path, overrides)
    assert {Path(r["file"]).name: r["label"] for r in records} == RECORDED_LABELS
    assert all(r["face"] == 0 and r["frame"] is None and len(r["models"]) == len(files) for r in records)
    for name in RECORDED_LABELS:
        annotated = cv2.imread(str(tmp_path / "annotated" / name))
        assert annotated.shape == (640, 480, 3)


def test_onnx_exports_give_the_recorded_labels(
    reference_dir: Path, tmp_path: Path, published_onnx: dict[str, Path]
) -> None:
    models = [published_onnx[Path(f).name] for f in LIVENESS_FILES["silentface_pair"]]
    overrides = [f"input={reference_dir / 'images'}", models_override(models), "annotate=false"]
    records = run(reference_dir, tmp_path, overrides)
    assert {Path(r["file"]).name: r["label"] for r in records} == RECORDED_LABELS
    assert not (tmp_path / "annotated").exists()


def test_odd_files_are_reported_one_by_one(reference_dir: Path, tmp_path: Path) -> None:
    live = cv2.imread(str(reference_dir / "images/image_T1.jpg"))
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "gray.png"), cv2.cvtColor(live, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "rgba.png"), cv2.cvtColor(live, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(folder / "sub/deep.png"), live.astype(np.uint16) * 256)
    cv2.imwrite(str(folder / "wall.png"), np.full((480, 640, 3), 200, np.uint8))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "readme.txt").write_text("ignored")
    overrides = [f"input={folder}", models_override([reference_dir / LIVENESS_FILES["suri_liveness"][0]])]
    records = {Path(r["file"]).name: r for r in run(reference_dir, tmp_path / "run", overrides)}
    assert set(records) == {"gray.png", "rgba.png", "deep.png", "wall.png", "broken.jpg"}
    assert "truncated image (no end-of-image marker)" in records["broken.jpg"]["error"]
    assert records["wall.png"]["label"] == "no_face" and records["wall.png"]["face"] is None
    assert "grayscale" in records["gray.png"]["notes"][0] and records["gray.png"]["label"] in ("real", "spoof")
    assert records["rgba.png"]["notes"] == ["alpha channel dropped"] and records["rgba.png"]["label"] == "real"
    assert records["deep.png"]["notes"] == ["16-bit image reduced to 8 bits"] and records["deep.png"]["label"] == "real"
    assert (tmp_path / "run/annotated/sub/deep.png").is_file()


def test_video_file_gives_a_line_per_frame_and_an_annotated_video(reference_dir: Path, tmp_path: Path) -> None:
    live = cv2.imread(str(reference_dir / "images/image_T1.jpg"))
    frames = [live, live, np.full_like(live, 90)]
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (480, 640))
    for frame in frames:
        writer.write(frame)
    writer.release()
    overrides = [f"input={clip}", models_override([reference_dir / LIVENESS_FILES["suri_liveness"][0]])]
    *records, track = run(reference_dir, tmp_path / "run", overrides)
    assert [(r["frame"], r["label"]) for r in records] == [(0, "real"), (1, "real"), (2, "no_face")]
    assert [r.get("track") for r in records] == [0, 0, None] and records[1]["track_label"] is None  # 2 of 5 frames
    assert track == {
        "file": str(clip), "kind": "track", "track": 0, "first_frame": 0, "last_frame": 1, "frames": 2,
        "judged_frames": 2, "spoof_score": pytest.approx(np.mean([r["spoof_score"] for r in records[:2]])),
        "label": "undecided",
    }  # fmt: skip
    annotated = cv2.VideoCapture(str(tmp_path / "run/clip_annotated.mp4"))
    assert annotated.get(cv2.CAP_PROP_FRAME_COUNT) == 3 and annotated.get(cv2.CAP_PROP_FPS) == 10
    annotated.release()
    limited = run(reference_dir, tmp_path / "limited", [*overrides, "max_frames=1"])
    assert [r.get("frame") for r in limited] == [0, None]  # the frame, then its track's line
    untracked = run(reference_dir, tmp_path / "untracked", [*overrides, "tracking=null"])
    assert len(untracked) == 3 and "track" not in untracked[0]


def test_two_moving_faces_in_a_video_are_two_tracks_with_one_decision_each(reference_dir: Path, tmp_path: Path) -> None:
    live, printed = (cv2.imread(str(reference_dir / f"images/{name}.jpg")) for name in ("image_T1", "image_F2"))
    clip = tmp_path / "two.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (1000, 640))
    for step in range(6):  # both faces drift 6 px right a frame
        canvas = np.full((640, 1000, 3), 128, np.uint8)
        canvas[:, 6 * step : 6 * step + 480] = live
        canvas[:, 500 + 2 * step : 500 + 2 * step + 480] = printed
        writer.write(canvas)
    writer.release()
    suri = models_override([reference_dir / LIVENESS_FILES["suri_liveness"][0]])
    records = run(reference_dir, tmp_path / "run", [f"input={clip}", suri, "tracking.min_frames=3"])
    faces = [r for r in records if r.get("kind") != "track"]
    tracks = [r for r in records if r.get("kind") == "track"]
    by_track = {}
    for face in faces:
        by_track.setdefault(face["track"], set()).add(face["box_xywh"][0] < 500)
    assert len(faces) == 12 and by_track in ({0: {True}, 1: {False}}, {0: {False}, 1: {True}})
    assert sorted((t["frames"], t["judged_frames"]) for t in tracks) == [(6, 6), (6, 6)]
    decided = {next(iter(by_track[t["track"]])): t["label"] for t in tracks}
    assert decided == {True: "real", False: "spoof"}  # the live face on the left, the print on the right
    assert faces[-1]["track_label"] in ("real", "spoof") and faces[0]["track_label"] is None


def test_bad_inputs_are_user_errors(reference_dir: Path, tmp_path: Path) -> None:
    models = models_override([reference_dir / LIVENESS_FILES["suri_liveness"][0]])
    with pytest.raises(ConfigError, match="input is not set"):
        run(reference_dir, tmp_path, [models])
    with pytest.raises(MediaError, match=r"nowhere.jpg: input not found"):
        run(reference_dir, tmp_path, [models, f"input={tmp_path / 'nowhere.jpg'}"])
    with pytest.raises(MediaError, match="camera 9: cannot open the video"):
        run(reference_dir, tmp_path, [models, "input=9"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match="no image or video files in this folder"):
        run(reference_dir, tmp_path, [models, f"input={tmp_path / 'empty'}"])
    (tmp_path / "corrupt").mkdir()
    for name in ("a.jpg", "b.png"):
        (tmp_path / "corrupt" / name).write_bytes(b"not an image")
    with pytest.raises(
        PredictError, match=r"nothing was predicted: .*a.jpg: cannot decode .*\(all 2 input\(s\) failed, each listed"
    ):
        run(reference_dir, tmp_path / "corrupt_run", [models, f"input={tmp_path / 'corrupt'}"])


@pytest.mark.parametrize("liveness", sorted(p.stem for p in (CONFIG_DIR / "liveness").glob("*.yaml")))
def test_liveness_options_name_registry_models(liveness: str, tmp_path: Path) -> None:
    cfg = compose_config("predict", [f"liveness={liveness}"], tmp_path)
    registry = read_registry()
    assert cfg.liveness.models and all(registry[name].kind == "liveness" for name in cfg.liveness.models)
    assert registry[cfg.detector.model_path].kind == "detector"


def test_detector_config_instantiates(reference_dir: Path, tmp_path: Path) -> None:
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    cfg = compose_config("predict", [f"detector.model_path={yunet}"], tmp_path)
    assert isinstance(hydra.utils.instantiate(cfg.detector), YuNetDetector)


def test_command_line(reference_dir: Path, tmp_path: Path) -> None:
    """The real command: one image end to end, then the defaults with an empty cache: a one-line error."""
    command = [
        sys.executable,
        "-m",
        "fas.predict",
        f"input={reference_dir / 'images/image_T1.jpg'}",
        f"detector.model_path={reference_dir / 'yunet/face_detection_yunet_2023mar.onnx'}",
        models_override([reference_dir / LIVENESS_FILES["suri_liveness"][0]]),
        "liveness.threshold=0.5",
        f"output_dir={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    environment = {**os.environ, "FAS_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "out/predictions.jsonl").read_text().splitlines()]
    assert record["label"] == "real"
    failed = subprocess.run(
        [*command[:4], f"hydra.run.dir={tmp_path / 'hydra2'}"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: yunet-2023mar is not downloaded yet; run: python -m fas.download yunet-2023mar"
    )
