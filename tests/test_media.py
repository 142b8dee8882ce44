from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fas.media import (
    MediaError,
    frame_count,
    media_files,
    open_video,
    read_image,
    set_max_pixels,
    video_frames,
)

RNG = np.random.default_rng(0)
COLOR = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def declared_png(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header declares width x height pixels (its pixel data is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def write_clip(path: Path, values: tuple[int, ...] = (0, 100, 200)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (16, 12))
    for value in values:
        writer.write(np.full((12, 16, 3), value, np.uint8))
    writer.release()
    return path


def test_color_image_is_read_as_is(tmp_path: Path) -> None:
    notes: list[str] = []
    np.testing.assert_array_equal(read_image(write(tmp_path / "a.png", COLOR), notes), COLOR)
    assert notes == []


def test_grayscale_alpha_and_16_bit_are_converted_with_a_note(tmp_path: Path) -> None:
    notes: list[str] = []
    gray = read_image(write(tmp_path / "gray.png", COLOR[..., 0]), notes)
    np.testing.assert_array_equal(gray, np.repeat(COLOR[..., :1], 3, axis=2))
    assert "grayscale" in notes[0]
    notes.clear()
    rgba = read_image(write(tmp_path / "rgba.png", np.dstack([COLOR, np.full((12, 16), 7, np.uint8)])), notes)
    np.testing.assert_array_equal(rgba, COLOR)
    assert notes == ["alpha channel dropped"]
    notes.clear()
    deep = read_image(write(tmp_path / "deep.png", COLOR.astype(np.uint16) * 256 + 255), notes)
    np.testing.assert_array_equal(deep, COLOR)  # (v * 256 + 255) >> 8 == v
    assert notes == ["16-bit image reduced to 8 bits"]


def test_unreadable_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    jpeg = cv2.imencode(".jpg", COLOR)[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[:-40])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match=r"cut.jpg: truncated image \(no end-of-image marker\)"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(MediaError, match=r"empty.jpg: empty image file"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(MediaError, match=r"text.png: cannot decode the image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(MediaError, match=r"float32 pixels are not supported"):
        read_image(write(tmp_path / "float.tiff", COLOR.astype(np.float32)))
    with pytest.raises(MediaError, match=r"missing.png: image file missing"):
        read_image(tmp_path / "missing.png")


def test_an_image_declaring_more_pixels_than_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    huge = declared_png(tmp_path / "huge.png", 30000, 30000)
    assert huge.stat().st_size < 200
    with pytest.raises(MediaError, match=r"huge.png: the image declares 30000x30000 pixels, more than the limit of "):
        read_image(huge)
    set_max_pixels(100)
    try:
        with pytest.raises(MediaError, match=r"declares 16x12 pixels, more than the limit of 100; .*max_image_pixels"):
            read_image(write(tmp_path / "small.png", COLOR))
    finally:
        set_max_pixels(None)
    assert read_image(tmp_path / "small.png").shape == (12, 16, 3)
    with pytest.raises(MediaError, match="max_image_pixels: -1 is not a positive number of pixels"):
        set_max_pixels(-1)


def test_media_files_are_found_recursively_and_sorted(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.JPG", "a.png", "sub/c.webp", "notes.txt", "clip.mp4", ".hidden/d.png", ".e.png"):
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in media_files(tmp_path)]
    assert found == ["a.png", "b.JPG", "clip.mp4", "sub/c.webp"]


def test_video_frames_stop_at_the_end_or_at_max_frames(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.avi")
    frames = list(video_frames(open_video(path), str(path)))
    assert [f.index for f in frames] == [0, 1, 2] and frames[2].image.shape == (12, 16, 3)
    assert abs(int(frames[1].image.mean()) - 100) <= 3
    assert len(list(video_frames(open_video(path), str(path), max_frames=2))) == 2
    assert frame_count(path) == 3
    with pytest.raises(MediaError, match=r"nothing.mp4: video file missing"):
        open_video(tmp_path / "nothing.mp4")


def test_a_playlist_or_concat_list_under_a_video_suffix_is_never_followed(tmp_path: Path) -> None:
    write_clip(tmp_path / "other.avi")
    concat = tmp_path / "clip.mp4"
    concat.write_text("ffconcat version 1.0\nfile other.avi\n")
    playlist = tmp_path / "list.mkv"
    playlist.write_text("#EXTM3U\nother.avi\n")
    for path in (concat, playlist):
        with pytest.raises(MediaError, match=r"not an MP4/MOV, AVI, Matroska/WebM, MPEG or WMV video .* never follows"):
            open_video(path)
        with pytest.raises(MediaError, match="never follows"):
            frame_count(path)
