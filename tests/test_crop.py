from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fas.convention import InputConvention
from fas.data.crop import (
    crop_face,
    is_valid_box,
    letterbox,
    reflect_crop,
    shift_crop,
    shift_crop_box,
    square_about_box,
    whole_image,
)
from fas.data.loading import pixel_box
from fas.data.sample import Sample
from fas.errors import ConfigError


def test_a_box_in_the_224_frame_scales_each_axis_by_its_own_factor() -> None:
    sample = Sample(Path("a.jpg"), None, (56, 28, 112, 56), 0, "s", "train", "x", "a.jpg", box_frame=(224, 224))
    assert pixel_box(sample, width=448, height=672) == (112, 84, 224, 168)


def test_shift_crop_box_scales_about_the_centre() -> None:
    # 20x10 box at (40, 45) scaled 2x -> 40x20 about the centre (50, 50); fits, so no shift.
    assert shift_crop_box(200, 100, (40, 45, 20, 10), 2.0) == (30, 40, 70, 60)


def test_shift_crop_box_shifts_inside_the_frame() -> None:
    # Near the top-left corner: the scaled box is moved right/down, not padded.
    assert shift_crop_box(200, 100, (0, 0, 20, 10), 2.0) == (0, 0, 40, 20)
    # Near the bottom-right corner: moved left/up to end at the last pixel.
    assert shift_crop_box(200, 100, (185, 95, 10, 4), 3.0) == (169, 87, 199, 99)


def test_shift_crop_box_reduces_the_scale_to_fit() -> None:
    # Silent-Face image F1: 480x640 image, 223x225 box, scale 2.7 -> limited to 479/223 (both scales agree).
    box = (178, 136, 223, 225)
    assert shift_crop_box(480, 640, box, 2.7) == shift_crop_box(480, 640, box, 4.0) == (0, 6, 479, 490)


def test_shift_crop_output_size() -> None:
    image = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    assert shift_crop(image, (40, 45, 20, 10), 2.0, 80).shape == (80, 80, 3)


def test_square_about_box_pads_by_mirroring() -> None:
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    square = square_about_box(image, (-2, 0, 6, 6), 1.0)
    # Square of side 6 at x in [-2, 4): columns 2, 1 mirrored (reflect-101), then 0..3.
    np.testing.assert_array_equal(square[:, :, 0], image[0:6][:, [2, 1, 0, 1, 2, 3], 0])


def test_square_about_box_mirrors_inside_the_visible_part_only() -> None:
    # As the original: crop the visible part first, then pad it. Side 4 at x in [-2, 2) sees columns 0, 1
    # only, so the padding mirrors those two (0, 1, 0, 1), not the image's column 2.
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    crop = reflect_crop(image, (-2, 0, 4, 4), 1.0, 4)
    np.testing.assert_array_equal(crop[:, :, 0], image[0:4][:, [0, 1, 0, 1], 0])


def test_reflect_crop_survives_boxes_far_outside() -> None:
    image = np.zeros((6, 6, 3), np.uint8)
    assert reflect_crop(image, (0, 0, 6, 6), 4.0, 16).shape == (16, 16, 3)


@pytest.mark.parametrize("mode", ["shift", "reflect", "none"])
def test_crop_face_uses_the_convention(mode: str) -> None:
    image = np.zeros((120, 90, 3), np.uint8)
    convention = InputConvention(input_size=64, crop_mode=mode, crop_scale=1.5)
    assert crop_face(image, (30, 40, 30, 30), convention).shape == (64, 64, 3)


def test_is_valid_box() -> None:
    assert is_valid_box((10, 10, 5, 5), 100, 100)
    assert not is_valid_box((10, 10, 0, 5), 100, 100)
    assert not is_valid_box((120, 10, 5, 5), 100, 100)
    assert not is_valid_box((float("nan"), 10, 5, 5), 100, 100)


def test_square_about_box_truncates_corners_toward_zero() -> None:
    # Box 2x4 at (-0.5, 0), scale 1.5: extent 6, centre (0.5, 2) -> corner (int(-2.5), int(-1.0)) = (-2, -1),
    # truncated toward zero as the original does (floor would give -3).
    image = np.arange(8 * 8, dtype=np.uint8).reshape(8, 8, 1).repeat(3, axis=2)
    square = square_about_box(image, (-0.5, 0, 2, 4), 1.5)
    assert square.shape == (6, 6, 3)
    # Columns -2..3 with reflect-101: -2 -> 2, -1 -> 1; rows -1..4: -1 -> 1.
    np.testing.assert_array_equal(square[:, :, 0], image[[1, 0, 1, 2, 3, 4]][:, [2, 1, 0, 1, 2, 3], 0])


def test_square_about_box_outside_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="lies outside the 8x8 image"):
        square_about_box(np.zeros((8, 8, 3), np.uint8), (40, 40, 4, 4), 1.5)


def test_letterbox_pads_the_pixel_lost_to_rounding() -> None:
    # 128 / 239 * 239 = 127.99999999999999 -> int 127: the original resizes to 127 and reflect-pads one pixel.
    image = np.random.default_rng(1).integers(0, 256, (239, 239, 3), dtype=np.uint8)
    out = letterbox(image, 128)
    resized = cv2.resize(image, (127, 127), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out[:127, :127], resized)
    np.testing.assert_array_equal(out[127, :127], resized[125])  # reflect-101 of the last row
    assert out.shape == (128, 128, 3)


def test_letterbox_enlarges_with_lanczos_and_keeps_the_aspect() -> None:
    image = np.random.default_rng(2).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    out = letterbox(image, 80)
    expected = cv2.resize(image, (40, 80), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(out[:, 20:60], expected)
    np.testing.assert_array_equal(out[:, 19], expected[:, 1])  # left pad mirrors column 1


def test_whole_image_ignores_the_box() -> None:
    image = np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    convention = InputConvention(input_size=32, crop_mode="none")
    np.testing.assert_array_equal(crop_face(image, (1, 2, 3, 4), convention), cv2.resize(image, (32, 32)))
    np.testing.assert_array_equal(whole_image(image, 32), cv2.resize(image, (32, 32)))


def test_silentface_crops_match_the_recorded_hashes(reference_dir: Path) -> None:
    expected = json.loads((reference_dir / "expected/silentface.json").read_text())
    for name, record in expected["images"].items():
        image = cv2.imread(str(reference_dir / "images" / name))
        assert list(image.shape) == record["image_shape"]
        for model in record["models"].values():
            crop = shift_crop(image, record["bbox_xywh"], model["scale"], 80)
            assert hashlib.sha256(crop.tobytes()).hexdigest() == model["crop_sha256"], (name, model["scale"])


def test_the_conventions_interpolation_overrides_the_rule_and_unknown_names_are_refused() -> None:
    image = np.random.default_rng(1).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    region = image[40:61, 30:71]  # shift_crop_box(200, 100, (40, 45, 20, 10), 2.0) == (30, 40, 70, 60)
    for name, flag in (("nearest", cv2.INTER_NEAREST), ("area", cv2.INTER_AREA)):
        expected = cv2.resize(region, (16, 16), interpolation=flag)
        np.testing.assert_array_equal(shift_crop(image, (40, 45, 20, 10), 2.0, 16, name), expected)
    np.testing.assert_array_equal(
        shift_crop(image, (40, 45, 20, 10), 2.0, 16), cv2.resize(region, (16, 16), interpolation=cv2.INTER_LINEAR)
    )
    area = InputConvention(input_size=16, crop_scale=2.0, interpolation="area")
    np.testing.assert_array_equal(
        crop_face(image, (40, 45, 20, 10), area), cv2.resize(region, (16, 16), interpolation=cv2.INTER_AREA)
    )
    with pytest.raises(ConfigError, match="interpolation must be one of nearest, linear, cubic, area, lanczos"):
        InputConvention(input_size=16, interpolation="bicubic")


def hairymax_pixels(image: np.ndarray, box: tuple[int, int, int, int], size: int = 128) -> np.ndarray:
    """hairymax/Face-AntiSpoofing's `increased_crop(bbox_inc=1.5)` and `AntiSpoof.preprocessing`, written
    out as its code does them (box given as x1, y1, x2, y2 there)."""
    real_h, real_w = image.shape[:2]
    x, y, w, h = box
    side = max(w, h)
    xc, yc = x + w / 2, y + h / 2
    x, y = int(xc - side * 1.5 / 2), int(yc - side * 1.5 / 2)
    x1, y1 = max(x, 0), max(y, 0)
    x2 = real_w if x + side * 1.5 > real_w else x + int(side * 1.5)
    y2 = real_h if y + side * 1.5 > real_h else y + int(side * 1.5)
    crop = image[y1:y2, x1:x2]
    crop = cv2.copyMakeBorder(
        crop, y1 - y, int(side * 1.5 - y2 + y), x1 - x, int(side * 1.5) - x2 + x, cv2.BORDER_CONSTANT, value=[0, 0, 0]
    )
    ratio = size / max(crop.shape[:2])
    scaled = tuple(int(v * ratio) for v in crop.shape[:2])
    crop = cv2.resize(crop, (scaled[1], scaled[0]))
    dh, dw = size - scaled[0], size - scaled[1]
    return cv2.copyMakeBorder(crop, dh // 2, dh - dh // 2, dw // 2, dw - dw // 2, cv2.BORDER_CONSTANT, value=[0, 0, 0])


@pytest.mark.parametrize("box", [(40, 30, 50, 60), (0, 0, 45, 38), (170, 100, 29, 40), (60, 20, 7, 90)])
def test_pad_crop_reproduces_hairymax_pixels(box: tuple[int, int, int, int]) -> None:
    image = np.random.default_rng(3).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    convention = InputConvention(input_size=128, crop_scale=1.5, crop_mode="pad")
    np.testing.assert_array_equal(crop_face(image, box, convention), hairymax_pixels(image, box))
