"""Your own data as a folder tree: labels from folder names, subjects, boxes, video frames, every fault listed."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from fas.data.sample import UNKNOWN_ATTACK, BadSample, DatasetError, Sample
from fas.data.sources.folder import FolderSource
from fas.media import frame_count, read_frames, sampled_frames

# generate_folder's class folders -> the spoof types they map to
FOLDER_TYPES = {"live": 0, "spoof/print": 1, "spoof/replay": 7, "spoof": UNKNOWN_ATTACK}


NOT_A_VIDEO = (
    "not an MP4/MOV, AVI, Matroska/WebM, MPEG or WMV video (a broken file, or another kind of file such as a "
    "playlist or concat list, which fas never follows)"
)


def records(source: FolderSource) -> tuple[list[Sample], list[BadSample]]:
    found = list(source.records())
    return [r for r in found if isinstance(r, Sample)], [r for r in found if isinstance(r, BadSample)]


def test_folder_names_subjects_splits_and_boxes(tiny_folder: Path) -> None:
    samples, bad = records(FolderSource(str(tiny_folder)))
    assert bad == []
    for sample in samples:
        relative = sample.path.relative_to(tiny_folder)
        assert sample.split == relative.parts[0]
        assert sample.spoof_type == FOLDER_TYPES["/".join(relative.parts[1:-2])]
        assert sample.subject == relative.parts[-2]  # the folder below the label folder
        assert sample.source == "folder" and sample.box_frame is None
    images = [s for s in samples if s.frame is None]
    with_box = [s for s in images if s.box is not None]
    assert with_box and len(with_box) < len(images)  # every other image has a pixel _BB.txt
    for sample in with_box:
        x, y, w, h = (float(v) for v in sample.path.with_name(f"{sample.path.stem}_BB.txt").read_text().split())
        assert sample.box == (x, y, w, h)
    assert {s.spoof_type for s in samples} == set(FOLDER_TYPES.values())


def test_video_frames_are_samples_of_one_subject(tiny_folder: Path) -> None:
    samples, _ = records(FolderSource(str(tiny_folder), frames_per_video=4))
    frames = [s for s in samples if s.frame is not None]
    clips = {s.path for s in frames}
    assert len(clips) == 8  # a live and a replay clip of two subjects in each split
    for clip in clips:
        of_clip = [s for s in frames if s.path == clip]
        assert [s.frame for s in of_clip] == [1, 4, 7, 10]  # 4 of 12 frames, evenly spaced
        assert {s.subject for s in of_clip} == {clip.parent.name}
        assert [s.key for s in of_clip] == [f"{clip.relative_to(tiny_folder).as_posix()}#{f}" for f in (1, 4, 7, 10)]
    strided, _ = records(FolderSource(str(tiny_folder), frame_stride=5))
    assert sorted({s.frame for s in strided if s.frame is not None}) == [0, 5, 10]


def test_video_frames_decode_in_one_pass_as_when_read_one_by_one(tiny_folder: Path) -> None:
    clip = next(tiny_folder.rglob("clip.mp4"))
    assert frame_count(clip) == 12
    wanted = sampled_frames(12, 3, None)
    together = dict(read_frames(clip, wanted))
    for index in wanted:
        ((_, alone),) = read_frames(clip, [index])
        np.testing.assert_array_equal(together[index], alone)
    capture = cv2.VideoCapture(str(clip))
    reference = [capture.read()[1] for _ in range(12)]
    for index in wanted:
        np.testing.assert_array_equal(together[index], reference[index])


def copy_tree(tiny_folder: Path, target: Path) -> Path:
    shutil.copytree(tiny_folder, target)
    return target


def test_a_folder_that_maps_to_nothing_names_the_folder_and_the_key(tiny_folder: Path, tmp_path: Path) -> None:
    root = copy_tree(tiny_folder, tmp_path / "mine")
    (root / "train" / "cutouts").mkdir()
    shutil.copy(next(root.rglob("*.jpg")), root / "train" / "cutouts" / "a.jpg")
    with pytest.raises(DatasetError) as refused:
        list(FolderSource(str(root), name="mine").records())
    assert "folder(s) cutouts/ map to no spoof type; name each with +data.sources.mine.labels.<folder>=<type>" in str(
        refused.value
    )
    named, _ = records(FolderSource(str(root), name="mine", labels={"cutouts": "region_mask"}))
    assert {s.spoof_type for s in named if "cutouts" in s.key} == {6}


def test_faults_are_listed_not_dropped(tiny_folder: Path, tmp_path: Path) -> None:
    root = copy_tree(tiny_folder, tmp_path / "mine")
    (root / "stray.jpg").write_bytes(b"x")  # outside train/ and test/ of a split tree
    (root / "train/live/s00/broken.mp4").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "train/live/s00/playlist.mp4").write_text("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n")
    image = next((root / "train/live").rglob("*.jpg"))
    image.with_name(f"{image.stem}_BB.txt").write_text("10 10 0 5")
    samples, bad = records(FolderSource(str(root)))
    reasons = {b.path.name: b.reason for b in bad}
    assert reasons == {
        "stray.jpg": "outside train/, val/ and test/ of a tree split into them; move it under one",
        "broken.mp4": NOT_A_VIDEO,
        "playlist.mp4": NOT_A_VIDEO,
        f"{image.stem}_BB.txt": "degenerate box x=10.0 y=10.0 w=0.0 h=5.0",
    }
    assert len(samples) + len(bad) == len(records(FolderSource(str(tiny_folder)))[0]) + 3


def test_an_unsplit_tree_and_subjects_from_a_regex(tiny_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "flat"
    shutil.copytree(tiny_folder / "train", root)
    source = FolderSource(str(root), subject_regex=r"/(s\d+)/")
    assert source.splits == ("all",)
    samples, _ = records(source)
    assert {s.split for s in samples} == {None}
    assert Counter(s.subject for s in samples).keys() == {f"s0{i}" for i in range(4)}


def test_settings_and_fingerprint_follow_the_tree(tiny_folder: Path, tmp_path: Path) -> None:
    root = copy_tree(tiny_folder, tmp_path / "mine")
    source = FolderSource(str(root))
    before = source.fingerprint()
    assert set(before) == {"train", "test"}
    next(root.rglob("*.jpg")).write_bytes(b"changed")
    assert source.fingerprint() != before
    assert FolderSource(str(root), labels={"replay": 9}).settings()["labels"]["replay"] == 9


def test_image_stride_thins_each_folder_of_extracted_frames(tiny_folder: Path) -> None:
    every = [r for r in FolderSource(str(tiny_folder)).records() if r.frame is None]
    thinned = [r for r in FolderSource(str(tiny_folder), image_stride=3).records() if r.frame is None]
    by_folder: dict[Path, list[str]] = {}
    for record in every:
        by_folder.setdefault(record.path.parent, []).append(record.key)
    expected = [key for keys in by_folder.values() for key in sorted(keys)[::3]]
    assert sorted(r.key for r in thinned) == sorted(expected) and len(thinned) < len(every) / 2
    videos = [r for r in FolderSource(str(tiny_folder), image_stride=3).records() if r.frame is not None]
    assert len(videos) == sum(r.frame is not None for r in FolderSource(str(tiny_folder)).records())
    assert FolderSource(str(tiny_folder), image_stride=3).settings()["image_stride"] == 3


def face_crop_tree(root: Path) -> Path:
    """A split tree of 60x50 'face crops' (random pixels), two subjects per class, a _BB.txt beside one of them."""
    rng = np.random.default_rng(7)
    for split in ("train", "test"):
        for label in ("live", "print"):
            for subject in ("u01", "u02"):
                folder = root / split / label / subject
                folder.mkdir(parents=True)
                cv2.imwrite(str(folder / "crop.png"), rng.integers(0, 256, (50, 60, 3), dtype=np.uint8))
    (root / "test" / "live" / "u01" / "crop_BB.txt").write_text("4 5 30 20\n")
    return root


def test_a_tree_of_face_crops_takes_each_image_as_its_face(tmp_path: Path) -> None:
    from fas.convention import InputConvention
    from fas.data.loading import load_crop, pixel_box

    root = face_crop_tree(tmp_path / "crops")
    samples, bad = records(FolderSource(str(root), face_crops=True, face_crop_scale=1.25))
    assert bad == [] and len(samples) == 8
    given = [s for s in samples if s.box_frame is None]
    assert [s.box for s in given] == [(4.0, 5.0, 30.0, 20.0)]  # its own _BB.txt still wins
    for sample in samples:
        if sample.box_frame is not None:
            assert sample.box_frame == (1, 1)
            assert pixel_box(sample, 60, 50) == pytest.approx((6.0, 5.0, 48.0, 40.0))  # the centred 1/1.25
    # each convention crops about that box by its own rule: 2.7x the box does not fit, so the shift crop takes the
    # whole 60x50 image; a 1.25x reflect crop is the 60-px square about the centre, 5 rows mirrored above and below
    image = cv2.imread(str(samples[-1].path))
    shift = load_crop(samples[-1], InputConvention(input_size=60, crop_scale=2.7))
    np.testing.assert_array_equal(shift, cv2.resize(image, (60, 60))[..., ::-1])
    reflect = load_crop(samples[-1], InputConvention(input_size=60, crop_scale=1.25, crop_mode="reflect"))
    padded = cv2.copyMakeBorder(image, 5, 5, 0, 0, cv2.BORDER_REFLECT_101)
    np.testing.assert_array_equal(reflect, padded[..., ::-1])
    plain, _ = records(FolderSource(str(root)))
    assert sum(s.box is None for s in plain) == 7  # without the setting the faces are to be detected
    assert FolderSource(str(root), face_crops=True).settings() != FolderSource(str(root)).settings()


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"face_crops": "yes"}, "give true or false"), ({"face_crops": True, "face_crop_scale": 0.5}, "a number >= 1")],
)
def test_face_crop_settings_are_checked(tmp_path: Path, settings: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        FolderSource(str(tmp_path), name="oulu", **settings)


def test_frames_know_their_video(tmp_path: Path, tiny_folder: Path) -> None:
    """A video file's frames name it; images extracted from videos name theirs by `video_regex`; photos none."""
    root = tmp_path / "frames"
    for video in ("client001_take1", "client001_take2"):
        for frame in (0, 10):
            path = root / "test" / "live" / "client001" / f"{video}__frame_{frame:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((40, 40, 3), 100, np.uint8))
    samples, _ = records(FolderSource(str(root), video_regex=r"^.*/(.+)__frame_[0-9]+"))
    assert sorted(Counter(s.video for s in samples).items()) == [("client001_take1", 2), ("client001_take2", 2)]
    assert {s.video for s in records(FolderSource(str(root)))[0]} == {None}
    clips, _ = records(FolderSource(str(tiny_folder)))
    framed = [s for s in clips if s.frame is not None]
    assert framed and all(s.video == s.key.split("#")[0] for s in framed)
    assert FolderSource(str(root), video_regex="x").settings()["video_regex"] == "x"
    assert "video_regex" not in FolderSource(str(root)).settings()  # caches made before the setting stay valid
