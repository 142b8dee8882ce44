"""`python -m fas.data.prepare`: broken samples listed, crops exact, resumable, idempotent, flat memory."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fas.convention import InputConvention
from fas.data.cache import chunk_path, images_path, manifest_path, samples_path, skipped_path
from fas.data.loading import load_crop, pixel_box
from fas.data.prepare import prepare
from fas.data.sample import DatasetError
from fas.data.sources.celeba_spoof import read_split
from fas.inference.onnx_file import read_metadata
from fas.train import train

from conftest import PREPARED_CROP_SETTINGS, REPO_ROOT, compose_train

CROP = InputConvention(**PREPARED_CROP_SETTINGS)


@pytest.fixture
def prepared(prepared_cache: Path) -> Path:
    return prepared_cache


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def test_every_broken_sample_is_listed_with_its_reason(
    prepared: Path, broken_data: tuple[Path, dict[str, str]]
) -> None:
    root, broken = broken_data
    listed = {row["key"]: row for row in read_tsv(skipped_path(prepared))}
    assert set(listed) == set(broken)
    for key, reason in broken.items():
        assert reason in listed[key]["reason"], (key, listed[key])
        assert listed[key]["split"] == key.split("/")[1]
        assert Path(listed[key]["file"]).parent == (root / key).parent
    manifest = json.loads(manifest_path(prepared).read_text())
    assert manifest["complete"] is True
    assert manifest["counts"] == {
        "train": {"samples": 48 - 11, "skipped": 11},
        "test": {"samples": 24 - 2, "skipped": 2},
    }
    assert manifest["crop"] == {"input_size": 64, "crop_scale": 2.7, "crop_mode": "shift", "interpolation": None}


def test_cached_crops_are_the_crops_of_the_original_images(prepared: Path, broken_data) -> None:
    root, broken = broken_data
    for split in ("train", "test"):
        images = np.load(images_path(prepared, split), mmap_mode="r")
        keys = list(json.loads((root / f"metas/intra_test/{split}_label.json").read_text()))
        assert images.shape == (len(keys), 64, 64, 3) and images.dtype == np.uint8
        rows = read_tsv(samples_path(prepared, split))
        assert [r["key"] for r in rows] == [k for k in keys if k not in broken]
        records = {s.key: s for s in read_split(root, split)[0]}
        for row in rows[:5]:
            record = records[row["key"]]
            np.testing.assert_array_equal(images[int(row["row"])], load_crop(record, CROP))
            assert int(row["row"]) == keys.index(row["key"])
            height, width = cv2.imread(str(record.path)).shape[:2]
            assert tuple(float(row[c]) for c in "xywh") == pytest.approx(pixel_box(record, width, height))
            assert (row["box_from"], row["file"], row["frame"]) == ("given", str(record.path), "")
        skipped_rows = [keys.index(k) for k in broken if k.split("/")[1] == split]
        assert not images[skipped_rows].any()


def test_rerun_skips_finished_work(prepared: Path, broken_data) -> None:
    root, _ = broken_data
    stamp = {p: p.stat().st_mtime_ns for p in prepared.rglob("*") if p.is_file()}
    summary = prepare(root, prepared, CROP, workers=2, chunk_size=8, progress=False)
    assert summary.chunks_run == 0 and summary.samples == {"train": 37, "test": 22}
    assert sum(summary.skipped.values()) == 13
    assert {p: p.stat().st_mtime_ns for p in prepared.rglob("*") if p.is_file()} == stamp


def test_an_interrupted_run_resumes_the_unfinished_chunks(prepared: Path, broken_data, tmp_path: Path) -> None:
    """An interruption leaves chunks without result files (rows are written first) and no `complete` flag."""
    root, _ = broken_data
    resumed = tmp_path / "cache"
    shutil.copytree(prepared, resumed)
    for split in ("train", "test"):
        samples_path(resumed, split).unlink()
    manifest = json.loads(manifest_path(resumed).read_text())
    manifest.pop("counts")
    manifest_path(resumed).write_text(json.dumps({**manifest, "complete": False}))
    images = np.load(images_path(resumed, "train"), mmap_mode="r+")
    images[8:24] = 0  # chunks 1 and 2 of train were being written
    images.flush()
    del images
    chunk_path(resumed, "train", 1).unlink()
    chunk_path(resumed, "train", 2).unlink()

    summary = prepare(root, resumed, CROP, workers=1, chunk_size=8, progress=False)
    assert summary.chunks_run == 2
    for split in ("train", "test"):
        assert images_path(resumed, split).read_bytes() == images_path(prepared, split).read_bytes()
        assert samples_path(resumed, split).read_text() == samples_path(prepared, split).read_text()
    assert skipped_path(resumed).read_text() == skipped_path(prepared).read_text()


def test_other_settings_or_a_foreign_folder_are_refused(prepared: Path, broken_data, tmp_path: Path) -> None:
    root, _ = broken_data
    with pytest.raises(
        DatasetError, match=r"holds a cache made with other settings \(crop .*'input_size': 64.*'input_size': 80"
    ):
        prepare(root, prepared, InputConvention(input_size=80), workers=1, chunk_size=8, progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"not empty and holds no manifest.json"):
        prepare(root, tmp_path, CROP, workers=1, progress=False)
    with pytest.raises(DatasetError, match=r"no 'protocol9' protocol .* set data.protocol to one of: intra_test"):
        prepare(root, tmp_path / "new", CROP, protocol="protocol9", workers=1, progress=False)


def test_cli_prints_the_count_and_refuses_missing_settings(broken_data, tmp_path: Path) -> None:
    root, _ = broken_data
    command = [
        sys.executable,
        "-m",
        "fas.data.prepare",
        f"root={root}",
        "convention.input_size=64",
        "workers=2",
        "progress=false",
    ]
    done = subprocess.run([*command, f"output={tmp_path / 'cache'}"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"59 crops (train 37, test 22); skipped 13 sample(s), listed with their reason in {tmp_path}" in done.stdout
    missing = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and "error: output is not set: python -m fas.data.prepare" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert (REPO_ROOT / "configs" / "prepare.yaml").is_file()


def test_a_file_as_root_or_output_is_refused_by_name(broken_data, tmp_path: Path) -> None:
    root, _ = broken_data
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(DatasetError, match=rf"{a_file}: output is a file, not a folder; choose a new or empty folder"):
        prepare(root, a_file, InputConvention(input_size=64), progress=False)
    with pytest.raises(DatasetError, match=rf"{a_file}: the root is a file, not a folder"):
        prepare(a_file, tmp_path / "cache", InputConvention(input_size=64), progress=False)


def replicated_tree(source: Path, root: Path, copies: int) -> None:
    """A tree whose train split lists every train image of `source` `copies` times (hard links)."""
    labels = json.loads((source / "metas/intra_test/train_label.json").read_text())
    out: dict[str, list[int]] = {}
    for copy in range(copies):
        for key, vector in labels.items():
            new_key = key.replace("Data/train/", f"Data/train/{copy}")
            for src in ((source / key), (source / key).with_name(Path(key).stem + "_BB.txt")):
                dst = root / new_key if src.suffix == ".jpg" else (root / new_key).with_name(src.name)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.hardlink_to(src)
            out[new_key] = vector
    (root / "metas/intra_test").mkdir(parents=True)
    (root / "metas/intra_test/train_label.json").write_text(json.dumps(out))


def peak_traced_bytes(root: Path, output: Path) -> int:
    tracemalloc.start()
    prepare(root, output, InputConvention(input_size=128), splits=("train",), workers=1, chunk_size=16, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_peak_memory_does_not_grow_with_the_number_of_images(tiny_data: Path, tmp_path: Path) -> None:
    """Preparing 4x the images must not hold 4x the pixels: the extra peak stays far below one crop each."""
    replicated_tree(tiny_data, tmp_path / "small", 1)
    replicated_tree(tiny_data, tmp_path / "large", 4)
    small = peak_traced_bytes(tmp_path / "small", tmp_path / "small_cache")
    large = peak_traced_bytes(tmp_path / "large", tmp_path / "large_cache")
    extra_images = 3 * 48
    crop_bytes = 128 * 128 * 3
    assert large - small < 0.25 * extra_images * crop_bytes, (small, large)


def test_training_runs_on_the_prepared_cache(prepared: Path, tmp_path: Path) -> None:
    """Train from the cache with Silent-Face's 3 classes (bf16 on CPU); the real class index lands in the
    checkpoint and in the INT8 export."""
    overrides = [
        "data=celeba_spoof_packed",
        f"data.cache={prepared}",
        "trainer=cpu_bf16",
        "convention.input_size=64",
        "data.num_workers=1",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "class_scheme=silentface3",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+trainer.enable_progress_bar=false",
    ]
    _, metrics = train(compose_train(overrides, tmp_path / "run"))
    assert 0.0 <= float(metrics["test/auroc"]) <= 1.0
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    scheme = checkpoint["hyper_parameters"]["class_scheme"]
    assert (scheme["name"], scheme["real_class_index"], scheme["class_names"]) == (
        "silentface3",
        1,
        ("print", "live", "replay"),
    )
    assert checkpoint["hyper_parameters"]["convention"]["input_size"] == 64
    exported = read_metadata(tmp_path / "run/export/model_int8.onnx")  # calibrated on packed crops
    assert exported.class_scheme.real_class_index == 1 and exported.convention.input_size == 64
    with pytest.raises(DatasetError, match=r"the cache holds 64x64 crops .* Train with convention.input_size=64"):
        train(compose_train([*overrides[:2], "+trainer.enable_progress_bar=false"], tmp_path / "mismatch"))


@pytest.fixture(scope="module")
def prepared_folder(tiny_folder: Path, reference_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`python -m fas.data.prepare source=folder` on the folder twin: boxes given or detected by YuNet."""
    from fas.data.sources.folder import FolderSource
    from fas.detect import detector_factory

    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    detector = detector_factory({"_target_": "fas.detect.YuNetDetector", "model_path": str(yunet)})
    output = tmp_path_factory.mktemp("prepared_folder") / "cache"
    summary = prepare(FolderSource(str(tiny_folder)), output, CROP, detector, workers=2, chunk_size=16, progress=False)
    return output, summary


def test_a_folder_is_prepared_with_given_boxes_and_detected_faces(prepared_folder, tiny_folder: Path) -> None:
    output, summary = prepared_folder
    rows = [row for split in ("train", "test") for row in read_tsv(samples_path(output, split))]
    given = [r for r in rows if r["box_from"] == "given"]
    detected = [r for r in rows if r["box_from"] == "detected"]
    assert given and detected and len(given) + len(detected) == sum(summary.samples.values())
    for row in given:  # the pixel _BB.txt, unchanged
        path = Path(row["file"])
        assert [float(row[c]) for c in "xywh"] == [
            float(v) for v in path.with_name(f"{path.stem}_BB.txt").read_text().split()
        ]
    assert all(0.8 <= float(r["detector_score"]) <= 1 for r in detected)
    assert {r["frame"] for r in rows if r["file"].endswith(".mp4")} <= {str(f) for f in range(12)}
    assert any(r["file"].endswith(".mp4") for r in detected)


def test_faces_not_found_are_listed_and_counted_per_class(prepared_folder) -> None:
    output, summary = prepared_folder
    skipped = read_tsv(skipped_path(output))
    assert skipped and all("no face found (detector score threshold 0.8)" in r["reason"] for r in skipped)
    per_class: dict[str, int] = {}
    for row in skipped:
        name = {"0": "live", "1": "photo", "7": "pc", "11": "unknown"}[row["spoof_type"]]
        per_class[name] = per_class.get(name, 0) + 1
    assert {name: sum(reasons.values()) for name, reasons in summary.skipped_by_type.items()} == per_class
    text = str(summary)
    for name, lost in per_class.items():
        total = summary.records_by_type[name]
        assert f"  {name}: skipped {lost} of {total} ({100 * lost / total:.1f}%): no face found {lost}" in text


def no_detector_expected():
    raise AssertionError("the detector was built again although every face was remembered")


def test_faces_found_once_are_reused_at_another_crop(tiny_folder: Path, reference_dir: Path, tmp_path: Path) -> None:
    from fas.data.sources.folder import FolderSource
    from fas.detect import detector_factory

    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    detector = detector_factory({"_target_": "fas.detect.YuNetDetector", "model_path": str(yunet)})
    memo = tmp_path / "faces.tsv"
    first = prepare(
        FolderSource(str(tiny_folder)), tmp_path / "a", CROP, detector, workers=1, progress=False, faces=memo
    )
    second = prepare(
        FolderSource(str(tiny_folder)),
        tmp_path / "b",
        InputConvention(input_size=96),
        no_detector_expected,
        workers=1,
        progress=False,
        faces=memo,
    )
    assert second.samples == first.samples and second.skipped_by_type == first.skipped_by_type
    for split in ("train", "test"):
        a, b = read_tsv(samples_path(tmp_path / "a", split)), read_tsv(samples_path(tmp_path / "b", split))
        assert [(r["key"], r["box_from"], r["x"], r["w"]) for r in a] == [
            (r["key"], r["box_from"], r["x"], r["w"]) for r in b
        ]
