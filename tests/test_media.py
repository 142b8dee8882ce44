from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fas.inference.media import MediaError, image_files, open_video, read_image, video_frames

RNG = np.random.default_rng(0)
COLOR = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def test_color_image_is_read_as_is(tmp_path: Path) -> None:
    frame = read_image(write(tmp_path / "a.png", COLOR))
    np.testing.assert_array_equal(frame.image, COLOR)
    assert frame.notes == [] and frame.index is None


def test_grayscale_alpha_and_16_bit_are_converted_with_a_note(tmp_path: Path) -> None:
    gray = read_image(write(tmp_path / "gray.png", COLOR[..., 0]))
    np.testing.assert_array_equal(gray.image, np.repeat(COLOR[..., :1], 3, axis=2))
    assert "grayscale" in gray.notes[0]
    rgba = read_image(write(tmp_path / "rgba.png", np.dstack([COLOR, np.full((12, 16), 7, np.uint8)])))
    np.testing.assert_array_equal(rgba.image, COLOR)
    assert rgba.notes == ["alpha channel dropped"]
    deep = read_image(write(tmp_path / "deep.png", COLOR.astype(np.uint16) * 256 + 255))
    np.testing.assert_array_equal(deep.image, COLOR)  # (v * 256 + 255) >> 8 == v
    assert deep.notes == ["16-bit image reduced to 8 bits"]


def test_unreadable_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    jpeg = cv2.imencode(".jpg", COLOR)[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[:40])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("cut.jpg", "empty.jpg"):
        with pytest.raises(MediaError, match=rf"{name}: cannot decode the image"):
            read_image(tmp_path / name)
    with pytest.raises(MediaError, match=r"float32 pixels are not supported"):
        read_image(write(tmp_path / "float.tiff", COLOR.astype(np.float32)))
    with pytest.raises(MediaError, match="cannot open"):
        read_image(tmp_path / "missing.png")


def test_image_files_are_found_recursively_and_sorted(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.JPG", "a.png", "sub/c.webp", "notes.txt", "clip.mp4"):
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == ["a.png", "b.JPG", "sub/c.webp"]


def test_video_frames_stop_at_the_end_or_at_max_frames(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (16, 12))
    for value in (0, 100, 200):
        writer.write(np.full((12, 16, 3), value, np.uint8))
    writer.release()
    frames = list(video_frames(open_video(str(path)), str(path)))
    assert [f.index for f in frames] == [0, 1, 2] and frames[2].image.shape == (12, 16, 3)
    assert abs(int(frames[1].image.mean()) - 100) <= 3
    assert len(list(video_frames(open_video(str(path)), str(path), max_frames=2))) == 2
    with pytest.raises(MediaError, match=r"nothing.mp4: cannot open the video"):
        open_video(str(tmp_path / "nothing.mp4"))
