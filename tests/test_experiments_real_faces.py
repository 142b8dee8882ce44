"""experiments/real_faces/convert.py on tiny generated twins of the git mirrors of Replay-Attack, NUAA, OULU-NPU,
CASIA-FASD and MSU-MFSD.

Each twin is a bare git repository (`git init --bare` + one commit) of small generated JPEGs laid out as in
the real mirrors; the converted trees must be read by `FolderSource` with the expected types and subjects.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from fas.data.sample import BadSample, Sample
from fas.data.sources.folder import FolderSource

CONVERTER = Path(__file__).resolve().parents[1] / "experiments" / "real_faces" / "convert.py"
TYPES = {"live": 0, "print": 1, "tablet": 8, "phone": 9}
FRAMES = (0, 13, 25, 38)
REPLAY_CLIENTS = {"train": ("client001", "client002"), "devel": ("client003",), "test": ("client004",)}


@pytest.fixture(scope="module")
def convert() -> ModuleType:
    spec = importlib.util.spec_from_file_location("real_faces_convert", CONVERTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def jpeg(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def bare_repo(folder: Path, files: dict[str, bytes]) -> Path:
    """A bare git repository whose HEAD commit holds `files` (path -> content)."""
    work, repo = folder / "work", folder / "repo"
    for path, data in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(data)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    git = ["git", f"--git-dir={repo}", f"--work-tree={work}", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "add", "-A"], check=True, env=env)
    subprocess.run([*git, "commit", "-q", "-m", "twin"], check=True, env=env)
    return repo


def replay_videos(client: str) -> list[tuple[str, str, str]]:
    """(label, support, video name) of one client's videos; the print attack is filmed fixed and by hand."""
    return [
        ("real", "real", f"{client}_session01_webcam_authenticate_adverse_1"),
        ("attack", "fixed", f"attack_print_{client}_session01_highdef_photo_adverse"),
        ("attack", "hand", f"attack_print_{client}_session01_highdef_photo_adverse"),
        ("attack", "fixed", f"attack_mobile_{client}_session01_mobile_video_controlled"),
        ("attack", "hand", f"attack_highdef_{client}_session01_highdef_photo_controlled"),
    ]


@pytest.fixture(scope="module")
def replay_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files, seed = {}, 0
    for split, clients in REPLAY_CLIENTS.items():
        for client in clients:
            for label, support, video in replay_videos(client):
                for frame in FRAMES:
                    seed += 1
                    folder = f"frames/replay_attack/{split}/{split}__{label}__{support}__{video}"
                    files[f"{folder}/frame_{frame:05d}.jpg"] = jpeg(seed)
    files["metadata/replayattack_metadata.csv"] = b"video_id,split\n"
    return bare_repo(tmp_path_factory.mktemp("replay"), files)


NUAA_IMAGES = {  # (class folder, subject) -> file names
    ("ClientRaw", "0001"): ["0001_00_00_01_2.jpg", "0001_00_00_01_10.jpg", "0001_00_00_03_5.jpg"],
    ("ClientRaw", "0002"): ["0002_01_00_03_1.jpg", "0002_01_00_03_7.jpg"],
    ("ImposterRaw", "0001"): ["0001_00_00_01_4.jpg", "0001_00_00_03_8.jpg"],
    ("ImposterRaw", "0003"): ["0003_01_00_03_1.jpg", "0003_01_00_03_2.jpg", "0003_01_00_03_3.jpg"],
}
NUAA_TEST_SESSION = "_03_"  # in the twin, session 03 is the test set (as in the real lists)


def nuaa_files() -> dict[str, bytes]:
    files = {"db/readme.txt": b"short description\r\n", "db/ClientRaw/0001/Thumbs.db": b"\0\1"}
    listed: dict[str, list[str]] = {}
    for seed, ((folder, subject), names) in enumerate(NUAA_IMAGES.items()):
        prefix = "client" if folder == "ClientRaw" else "imposter"
        for i, name in enumerate(names):
            files[f"db/{folder}/{subject}/{name}"] = jpeg(100 * seed + i)
            split = "test" if NUAA_TEST_SESSION in name else "train"
            listed.setdefault(f"{prefix}_{split}", []).append(f"{subject}/{name}")
    listed["client_test"].append("0018/andra (1).jpg")  # an entry whose image the mirror does not hold
    for name, entries in listed.items():
        files[f"db/{name}_raw.txt"] = "".join(f"{entry}\r\n" for entry in entries).encode()
    return files


def records(root: Path) -> list[Sample]:
    found = list(FolderSource(str(root)).records())
    assert [r for r in found if isinstance(r, BadSample)] == []
    return [r for r in found if isinstance(r, Sample)]


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name[0] != ".")


def test_replay_tree(convert: ModuleType, replay_mirror: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "replay"
    assert convert.main(["replay", "--mirror", str(replay_mirror), "--output", str(output)]) == 0
    client = sorted((output / "train" / "print" / "client001").iterdir())
    assert [p.name for p in client] == [
        f"attack_print_client001_session01_highdef_photo_adverse__{support}__frame_{frame:05d}.jpg"
        for support in ("fixed", "hand")
        for frame in FRAMES
    ]
    assert sorted(p.name for p in (output / "val" / "live" / "client003").iterdir()) == [
        f"client003_session01_webcam_authenticate_adverse_1__frame_{frame:05d}.jpg" for frame in FRAMES
    ]
    assert not any(p.is_symlink() for p in output.rglob("*"))
    assert not (tmp_path / "out" / "replay.tmp").exists()
    samples = records(output)
    per_video = len(FRAMES)
    expected = {
        (split, label): len(REPLAY_CLIENTS[source]) * per_video * (2 if label == "print" else 1)
        for source, split in (("train", "train"), ("devel", "val"), ("test", "test"))
        for label in TYPES
    }
    named = {number: name for name, number in TYPES.items()}
    assert Counter((s.split, named[s.spoof_type]) for s in samples) == expected
    for sample in samples:
        relative = sample.path.relative_to(output).parts
        assert sample.spoof_type == TYPES[relative[1]] and sample.subject == relative[2]
        assert sample.subject in sample.path.name  # the client of the video is the subject
    assert {s.subject for s in samples if s.split == "val"} == {"client003"}


def test_replay_every_and_rerun(
    convert: ModuleType, replay_mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "replay"
    args = ["replay", "--mirror", str(replay_mirror), "--output", str(output)]
    assert convert.main([*args, "--every", "3"]) == 0
    kept = files_under(output)
    assert len(kept) == 5 * 4 * 2  # 5 videos x 4 clients x frames 0 and 38 of 0, 13, 25, 38
    assert {name.rsplit("__", 1)[1] for name in kept} == {"frame_00000.jpg", "frame_00038.jpg"}
    capsys.readouterr()
    stamp = (output / kept[0]).stat().st_mtime_ns
    assert convert.main([*args, "--every", "3"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (output / kept[0]).stat().st_mtime_ns == stamp
    assert convert.main(args) == 0  # other settings: the tree is replaced
    assert len(files_under(output)) == 5 * 4 * len(FRAMES)
    assert json.loads((output / convert.MARKER).read_text())["settings"]["every"] == 1


def test_refuses_a_folder_it_did_not_make(convert: ModuleType, replay_mirror: Path, tmp_path: Path) -> None:
    output = tmp_path / "mine"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert convert.main(["replay", "--mirror", str(replay_mirror), "--output", str(output)]) == 2
    assert files_under(output) == ["keep.txt"]
    assert not (tmp_path / "mine.tmp").exists()


def test_nuaa_official_split(convert: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = nuaa_files()
    files["db/ClientRaw/0002/0002_01_00_03_9.jpg"] = b"not a jpeg"  # listed, but does not decode
    files["db/client_test_raw.txt"] += b"0002/0002_01_00_03_9.jpg\r\n"
    mirror = bare_repo(tmp_path / "mirror", files)
    output = tmp_path / "nuaa"
    assert convert.main(["nuaa", "--mirror", str(mirror), "--output", str(output)]) == 0
    assert "does not decode" in capsys.readouterr().err
    assert files_under(output) == [
        "test/live/0001/0001_00_00_03_5.jpg",
        "test/live/0002/0002_01_00_03_1.jpg",
        "test/live/0002/0002_01_00_03_7.jpg",
        "test/print/0001/0001_00_00_03_8.jpg",
        "test/print/0003/0003_01_00_03_1.jpg",
        "test/print/0003/0003_01_00_03_2.jpg",
        "test/print/0003/0003_01_00_03_3.jpg",
        "train/live/0001/0001_00_00_01_10.jpg",
        "train/live/0001/0001_00_00_01_2.jpg",
        "train/print/0001/0001_00_00_01_4.jpg",
    ]
    marker = json.loads((output / convert.MARKER).read_text())
    assert marker["notes"]["split"] == "official train/test lists"
    assert marker["notes"]["listed images not in the mirror"] == 1
    assert marker["image sizes"] == {"32x24": 10, "undecodable (left out)": 1}
    samples = records(output)
    assert Counter((s.split, s.spoof_type) for s in samples) == {
        ("train", 0): 2,
        ("train", 1): 1,
        ("test", 0): 3,
        ("test", 1): 4,
    }
    assert all(s.subject == s.path.parent.name == s.path.name[:4] for s in samples)


def test_nuaa_unsplit_and_every(convert: ModuleType, tmp_path: Path) -> None:
    files = nuaa_files()
    files["db/imposter_train_raw.txt"] = b""  # the lists no longer cover every image
    mirror = bare_repo(tmp_path / "mirror", files)
    output = tmp_path / "nuaa"
    assert convert.main(["nuaa", "--mirror", str(mirror), "--output", str(output), "--every", "2"]) == 0
    # every 2nd photo of each subject and class, in the order of the numbers in their names
    assert files_under(output) == [
        "live/0001/0001_00_00_01_2.jpg",
        "live/0001/0001_00_00_03_5.jpg",
        "live/0002/0002_01_00_03_1.jpg",
        "print/0001/0001_00_00_01_4.jpg",
        "print/0003/0003_01_00_03_1.jpg",
        "print/0003/0003_01_00_03_3.jpg",
    ]
    samples = records(output)
    assert {s.split for s in samples} == {None}
    assert Counter(s.spoof_type for s in samples) == {0: 3, 1: 3}
    assert {s.subject for s in samples} == {"0001", "0002", "0003"}


def test_unknown_layout_is_refused(convert: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mirror = bare_repo(
        tmp_path / "mirror", {"frames/replay_attack/train/train__real__real__x/frame_00000.jpg": jpeg(0)}
    )
    output = tmp_path / "replay"
    assert convert.main(["replay", "--mirror", str(mirror), "--output", str(output)]) == 2
    assert "not a Replay-Attack frame folder name" in capsys.readouterr().err
    assert not output.exists() and not (tmp_path / "replay.tmp").exists()


OULU = "dataset_224/pr_depth_map/Oulu_NPU"
OULU_VIDEOS = {"Train_files": ("01", "02"), "Dev_files": ("21",), "Test_files": ("36",)}  # users of each part


def test_oulu_face_crops(convert: ModuleType, tmp_path: Path) -> None:
    files, seed = {}, 0
    for part, users in OULU_VIDEOS.items():
        for user in users:
            for kind in "12345":
                seed += 1
                name = f"{OULU}/{part}/crop_frame/crop_face/cropped_{1 + seed % 6}_{1 + seed % 3}_{user}_{kind}"
                files[f"{name}.jpg"] = jpeg(seed)
                files[f"{name}_depth.jpg"] = jpeg(1000 + seed)  # pseudo-depth maps are left out
    files["train.py"] = b"print('code beside the data')\n"
    mirror = bare_repo(tmp_path / "mirror", files)
    output = tmp_path / "oulu"
    assert convert.main(["oulu", "--mirror", str(mirror), "--output", str(output)]) == 0
    written = files_under(output)
    assert len(written) == 4 * 5 and not [name for name in written if "depth" in name]
    assert "train/print/user01/3_3_01_2.jpg" in written and "val/replay/user21/4_1_21_5.jpg" in written
    marker = json.loads((output / convert.MARKER).read_text())
    assert marker["notes"]["depth maps left out"] == 20
    found = list(FolderSource(str(output), face_crops=True, face_crop_scale=1.2).records())
    samples = [r for r in found if isinstance(r, Sample)]
    assert len(samples) == 20 and all(s.box is not None and s.box_frame == (1, 1) for s in samples)
    assert Counter((s.split, s.spoof_type) for s in samples) == {
        **{("train", t): n for t, n in ((0, 2), (1, 4), (7, 4))},
        **{("val", t): n for t, n in ((0, 1), (1, 2), (7, 2))},
        **{("test", t): n for t, n in ((0, 1), (1, 2), (7, 2))},
    }
    assert {s.subject for s in samples if s.split == "train"} == {"user01", "user02"}
    assert convert.main(["oulu", "--mirror", str(mirror), "--output", str(output), "--every", "2"]) == 2


def evaluation_mirror(folder: Path, root: str, names: dict[tuple[str, str], list[str]]) -> Path:
    """A twin of face-antispoofing/Evaluation: `<root>/<training set|testing set>/<real|attack>/<name>` PNG frames."""
    files = {"Results.md": b"# results\n"}
    for seed, ((part, label), frames) in enumerate(names.items()):
        for i, name in enumerate(frames):
            image = np.random.default_rng(10 * seed + i).integers(0, 256, (24, 32, 3), dtype=np.uint8)
            files[f"{root}/{part}/{label}/{name}"] = cv2.imencode(".png", image)[1].tobytes()
    return bare_repo(folder, files)


def test_casia_frames(convert: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = {
        ("training set", "real"): ["averaged_frame_1.avi.png", "averaged_frame_HR_1 (2).avi.png"],
        ("training set", "attack"): ["averaged_frame_3 (2).avi.png", "averaged_frame_HR_3.avi.png"],
        ("testing set", "real"): ["averaged_frame_2 (30).avi.png"],
        ("testing set", "attack"): ["averaged_frame_8 (30).avi.png", "averaged_frame_HR_4.avi.png"],
    }
    mirror = evaluation_mirror(tmp_path / "mirror", "CASIA_dataset", names)
    output = tmp_path / "casia"
    assert convert.main(["casia", "--mirror", str(mirror), "--output", str(output)]) == 0
    assert files_under(output) == [
        "test/live/test30/test30_2.png",
        "test/tablet/test01/test01_HR_4.png",
        "test/tablet/test30/test30_8.png",
        "train/live/train01/train01_1.png",
        "train/live/train02/train02_HR_1.png",
        "train/print/train01/train01_HR_3.png",  # a cut photo is a printed photo
        "train/print/train02/train02_3.png",
    ]
    samples = records(output)
    assert {s.subject for s in samples if s.split == "test"} == {"test01", "test30"}
    assert Counter(s.spoof_type for s in samples) == {0: 3, 1: 2, 8: 2}
    wrong = {("training set", "real"): ["averaged_frame_7 (4).avi.png"]}  # a replay among the real videos
    bad_mirror = evaluation_mirror(tmp_path / "bad", "CASIA_dataset", wrong)
    assert convert.main(["casia", "--mirror", str(bad_mirror), "--output", str(tmp_path / "bad_out")]) == 2
    assert "video type 7 is not a real video" in capsys.readouterr().err


def test_msu_frames(convert: ModuleType, tmp_path: Path) -> None:
    names = {
        ("training set", "real"): ["averaged_frame_real_client002_android_SD_scene01.mp4.png"],
        ("training set", "attack"): [
            f"averaged_frame_attack_client002_{camera}_SD_{attack}_scene01.mp4.png"
            for camera in ("android", "laptop")
            for attack in ("printed_photo", "ipad_video", "iphone_video")
        ],
        ("testing set", "real"): ["averaged_frame_real_client001_laptop_SD_scene01.mp4.png"],
    }
    mirror = evaluation_mirror(tmp_path / "mirror", "MSU_dataset", names)
    output = tmp_path / "msu"
    assert convert.main(["msu", "--mirror", str(mirror), "--output", str(output)]) == 0
    assert files_under(output)[:3] == [
        "test/live/client001/laptop_real.png",
        "train/live/client002/android_real.png",
        "train/phone/client002/android_iphone_video.png",
    ]
    samples = records(output)
    assert Counter((s.split, s.spoof_type) for s in samples) == {
        ("train", 0): 1,
        ("train", 1): 2,
        ("train", 8): 2,
        ("train", 9): 2,
        ("test", 0): 1,
    }
    assert {s.subject for s in samples} == {"client001", "client002"}
