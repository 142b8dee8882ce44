"""Files from others, through the entry points a user calls: a playlist or concat list saved as `.mp4` is
never followed, and an image whose header declares more pixels than the limit is never decoded; each is
one line naming the file (an error of `fas.predict`, a row of the cache's `skipped.tsv` for training and
evaluation), and the rest of the data goes on."""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fas.evaluate import evaluate
from fas.predict import predict
from fas.train import train

from conftest import REPO_ROOT, TINY_RUN, compose_config, compose_train

PLAYLIST_REASON = "not an MP4/MOV, AVI, Matroska/WebM, MPEG or WMV video"
HUGE_REASON = "the image declares 30000x30000 pixels, more than the limit of 100,000,000"


def write_secret_clip(path: Path) -> Path:
    """The file a hostile playlist points at: if anything followed the playlist, its frames would be scored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for value in (40, 120, 200):
        writer.write(np.full((48, 64, 3), value, np.uint8))
    writer.release()
    return path


def write_concat_list(path: Path, target: Path) -> Path:
    """An ffconcat text named like a video, whose `file` line is a relative path to another file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"ffconcat version 1.0\nfile {os.path.relpath(target, path.parent)}\n")
    return path


def write_declared_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A PNG of a few hundred bytes whose header declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 256)) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def hostile_folder(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny folder tree with a concat list named `.mp4` (pointing outside the tree) and a declared-huge PNG
    in each split; the secret clip lies beside the tree."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "tree"
    shutil.copytree(tiny_folder, root)
    secret = write_secret_clip(base / "secret.avi")
    for split in ("train", "test"):
        write_concat_list(root / split / "spoof" / "replay" / "p90" / "clip.mp4", secret)
        write_declared_png(root / split / "live" / "p91" / "huge.png")
    return root


def skipped_rows(prepared_dir: Path, root: Path) -> dict[str, str]:
    """Skipped file (relative to `root`) -> reason, over the caches the datamodule prepared under `prepared_dir`."""
    rows = {}
    for table in prepared_dir.glob("*/skipped.tsv"):
        with table.open(newline="") as file:
            for row in csv.DictReader(file, delimiter="\t"):
                rows[Path(row["file"]).relative_to(root).as_posix()] = row["reason"]
    return rows


def assert_listed(skipped: dict[str, str], splits: tuple[str, ...]) -> None:
    for split in splits:
        assert PLAYLIST_REASON in skipped[f"{split}/spoof/replay/p90/clip.mp4"]
        assert skipped[f"{split}/live/p91/huge.png"] == HUGE_REASON
    assert not any("secret" in name for name in skipped)


def test_predict_refuses_a_concat_list_and_a_huge_image_in_one_line(reference_dir: Path, tmp_path: Path) -> None:
    secret = write_secret_clip(tmp_path / "secret.avi")
    concat = write_concat_list(tmp_path / "a" / "b" / "c" / "d" / "clip.mp4", secret)
    huge = write_declared_png(tmp_path / "huge.png")
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    suri = reference_dir / "suri-liveness/best_model.pth"
    base = [
        sys.executable,
        "-m",
        "fas.predict",
        f"detector.model_path={yunet}",
        f"liveness.models=[{suri}]",
        "liveness.threshold=0.5",
    ]
    for path, reason in ((concat, PLAYLIST_REASON), (huge, HUGE_REASON)):
        out = tmp_path / f"out_{path.stem}"
        done = subprocess.run(
            [*base, f"input={path}", f"output_dir={out}", f"hydra.run.dir={out}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert str(path) in errors[0] and reason in errors[0]
        assert "secret" not in (out / "predictions.jsonl").read_text()


def test_predict_on_a_folder_lists_them_and_scores_the_rest(reference_dir: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(reference_dir / "images/image_T1.jpg", inputs / "live.jpg")
    secret = write_secret_clip(tmp_path / "secret.avi")
    write_concat_list(inputs / "x" / "y" / "z" / "clip.mp4", secret)
    write_declared_png(inputs / "huge.png")
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    suri = reference_dir / "suri-liveness/best_model.pth"
    overrides = [f"detector.model_path={yunet}", f"liveness.models=[{suri}]", f"input={inputs}", "annotate=false"]
    jsonl = predict(compose_config("predict", overrides, tmp_path / "run"))
    records = {Path(r["file"]).name: r for r in map(json.loads, jsonl.read_text().splitlines())}
    assert set(records) == {"live.jpg", "clip.mp4", "huge.png"}
    assert records["live.jpg"]["label"] == "real"
    assert PLAYLIST_REASON in records["clip.mp4"]["error"] and HUGE_REASON in records["huge.png"]["error"]
    assert "secret" not in jsonl.read_text()


def folder_overrides(root: Path, reference_dir: Path, run_dir: Path) -> list[str]:
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    return [
        "data=folder",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        f"detector.model_path={yunet}",
        f"paths.data_dir={run_dir / 'data'}",
    ]


def test_train_lists_them_as_skipped_and_trains_on_the_rest(
    hostile_folder: Path, reference_dir: Path, tmp_path: Path
) -> None:
    overrides = [*TINY_RUN[1:], *folder_overrides(hostile_folder, reference_dir, tmp_path), "convention.input_size=48"]
    _, metrics = train(compose_train([*overrides, "trainer.max_epochs=1"], tmp_path))
    assert "test/auroc" in metrics
    assert_listed(skipped_rows(tmp_path / "data" / "prepared", hostile_folder), ("train", "test"))


def test_evaluate_lists_them_as_skipped_and_scores_the_rest(
    hostile_folder: Path, reference_dir: Path, tmp_path: Path
) -> None:
    suri = reference_dir / "suri-liveness/best_model.pth"
    overrides = [f"ckpt_path={suri}", *folder_overrides(hostile_folder, reference_dir, tmp_path)]
    report = json.loads(evaluate(compose_config("evaluate", overrides, tmp_path)).metrics.read_text())
    assert report["models"][0]["counts"]["live"] > 0
    assert_listed(skipped_rows(tmp_path / "data" / "prepared", hostile_folder), ("test",))


# --- every record is used or listed with its reason -------------------------------------------------------------


def manifest_tree(tiny_folder: Path, tmp_path: Path, rows: list[str]) -> Path:
    """A manifest over copies of two of the tiny folder's photos (a.jpg live, b.jpg print) and the given rows."""
    root = tmp_path / "data"
    root.mkdir()
    photos = sorted((tiny_folder / "train/live").rglob("*.jpg"))[:2]
    for name, photo in zip(("a.jpg", "b.jpg"), photos, strict=True):
        shutil.copy(photo, root / name)
    manifest = root / "list.csv"
    manifest.write_text("path,label,subject,split,box\n" + "\n".join(rows) + "\n")
    return manifest


def prepared(source, tmp_path: Path) -> tuple[object, dict[str, str]]:
    from fas.convention import InputConvention
    from fas.data.prepare import prepare

    summary = prepare(source, tmp_path / "cache", InputConvention(input_size=32), workers=1, progress=False)
    with (tmp_path / "cache" / "skipped.tsv").open(newline="") as file:
        skipped = {row["key"]: row["reason"] for row in csv.DictReader(file, delimiter="\t")}
    return summary, skipped


def test_a_manifest_split_that_does_not_exist_names_the_line(tiny_folder: Path, tmp_path: Path) -> None:
    manifest = manifest_tree(tiny_folder, tmp_path, ["a.jpg,live,p1,train,1 1 20 20", "b.jpg,print,p2,bogus,1 1 20 20"])
    command = [sys.executable, "-m", "fas.data.prepare", "source=manifest", f"source.manifest={manifest}"]
    done = subprocess.run(
        [*command, f"root={manifest.parent}", f"output={tmp_path / 'cache'}", "workers=1", "progress=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert errors[0] == (
        f"error: {manifest}:3: split 'bogus' is not one of train, val, test; leave it empty to let fas split the "
        "rows by subject"
    )


def test_a_file_listed_twice_with_two_labels_names_both_lines(tiny_folder: Path, tmp_path: Path) -> None:
    from fas.data.sample import DatasetError
    from fas.data.sources.manifest import ManifestSource

    rows = ["a.jpg,live,p1,train,1 1 20 20", "b.jpg,live,p2,train,1 1 20 20", "a.jpg,print,p1,train,1 1 20 20"]
    with pytest.raises(
        DatasetError, match=r"list.csv:4: a.jpg is listed again with label photo, but line 2 gives it live"
    ):
        prepared(ManifestSource(str(manifest_tree(tiny_folder, tmp_path, rows))), tmp_path)


def test_a_file_listed_twice_with_one_label_is_used_once_and_counted(tiny_folder: Path, tmp_path: Path) -> None:
    from fas.data.sources.manifest import ManifestSource

    rows = ["a.jpg,live,p1,,1 1 20 20", "b.jpg,print,p2,,1 1 20 20", "./a.jpg,live,p1,,1 1 20 20"]
    summary, skipped = prepared(ManifestSource(str(manifest_tree(tiny_folder, tmp_path, rows))), tmp_path)
    assert summary.samples == {"all": 2}
    assert skipped == {"./a.jpg@4": "line 4: listed again (line 2, same label); used once"}
    assert summary.skipped_by_type == {"live": {"listed again": 1}}


def test_links_that_leave_the_data_folder_are_listed_not_followed(tiny_folder: Path, tmp_path: Path) -> None:
    from fas.data.sources.folder import FolderSource
    from fas.data.sources.manifest import ManifestSource

    outside = tmp_path / "outside.jpg"
    shutil.copy(next((tiny_folder / "train/live").rglob("*.jpg")), outside)
    rows = ["a.jpg,live,p1,,1 1 20 20", "b.jpg,print,p2,,1 1 20 20", "link.jpg,print,p3,,1 1 20 20"]
    manifest = manifest_tree(tiny_folder, tmp_path, rows)
    (manifest.parent / "link.jpg").symlink_to(outside)
    summary, skipped = prepared(ManifestSource(str(manifest)), tmp_path / "m")
    assert summary.samples == {"all": 2} and skipped["link.jpg"].startswith("line 4: a link to a file outside")
    tree = tmp_path / "tree"
    (tree / "live" / "p1").mkdir(parents=True)
    (tree / "spoof" / "p2").mkdir(parents=True)
    shutil.copy(manifest.parent / "a.jpg", tree / "live" / "p1" / "a.jpg")
    shutil.copy(manifest.parent / "b.jpg", tree / "spoof" / "p2" / "b.jpg")
    (tree / "spoof" / "p2" / "link.jpg").symlink_to(outside)
    inside = tree / "live" / "p1" / "inside.jpg"
    inside.symlink_to(tree / "live" / "p1" / "a.jpg")  # a link that stays inside is a file like the others
    source = FolderSource(str(tree))
    source.prepare()
    found = {r.key: r for r in source.records()}
    assert found["spoof/p2/link.jpg"].reason.startswith("a link to a file outside the data folder")
    assert found["live/p1/inside.jpg"].frame is None and not hasattr(found["live/p1/inside.jpg"], "reason")


# --- interrupted runs and outputs --------------------------------------------------------------------------------


SMALL_SYNTHETIC = [
    "data.synthetic.train_subjects=6",
    "data.synthetic.test_subjects=4",
    "data.synthetic.images_per_subject=40",
    "data.num_workers=0",
]


def test_a_train_killed_while_generating_leaves_nothing_half_made(tmp_path: Path) -> None:
    """Kill a real `python train.py` while it generates the embedded data; its worker processes end with it,
    and the same command then regenerates the data and trains."""
    import os
    import signal
    import time

    command = [sys.executable, str(REPO_ROOT / "train.py"), *SMALL_SYNTHETIC, f"paths.data_dir={tmp_path / 'data'}"]
    process = subprocess.Popen(
        [*command, "hydra.run.dir=first"], cwd=tmp_path, start_new_session=True, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("data/.synthetic.partial-*/Data/*/*/*/*.jpg")):
        assert time.monotonic() < deadline and process.poll() is None, "generation never started"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while True:  # the generator's workers die with their parent (same process group)
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "generator workers outlived the killed train.py"
        time.sleep(0.1)
    assert not (tmp_path / "data" / "synthetic").exists()  # nothing half-made where the data goes
    done = subprocess.run(
        [*command, "debug=fdr", "hydra.run.dir=second"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "data" / "synthetic" / "synthetic.json").is_file()
    assert not list((tmp_path / "data").glob(".synthetic.partial-*"))


def test_predict_writes_only_under_its_output_dir(reference_dir: Path, tmp_path: Path) -> None:
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    suri = reference_dir / "suri-liveness/best_model.pth"
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fas.predict",
            f"input={reference_dir / 'images/image_T1.jpg'}",
            f"detector.model_path={yunet}",
            f"liveness.models=[{suri}]",
            "liveness.threshold=0.5",
            f"output_dir={out}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "predictions.jsonl").is_file() and (out / "predict.log").is_file()
