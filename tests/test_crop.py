from __future__ import annotations

import numpy as np
import pytest

from fas.convention import InputConvention
from fas.data.crop import bb224_to_pixels, crop_face, is_valid_box, reflect_crop, shift_crop, shift_crop_box


def test_bb224_scales_each_axis_by_its_own_factor() -> None:
    assert bb224_to_pixels((56, 28, 112, 56), width=448, height=672) == (112, 84, 224, 168)


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


def test_reflect_crop_pads_by_mirroring() -> None:
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    crop = reflect_crop(image, (-2, 0, 4, 4), 1.0, 4)
    # Square of side 4 at x in [-2, 2): columns 2, 1 mirrored (reflect-101), then 0, 1.
    np.testing.assert_array_equal(crop[:, :, 0], image[0:4][:, [2, 1, 0, 1], 0])


def test_reflect_crop_survives_boxes_far_outside() -> None:
    image = np.zeros((6, 6, 3), np.uint8)
    assert reflect_crop(image, (0, 0, 6, 6), 4.0, 16).shape == (16, 16, 3)


@pytest.mark.parametrize("mode", ["shift", "reflect"])
def test_crop_face_uses_the_convention(mode: str) -> None:
    image = np.zeros((120, 90, 3), np.uint8)
    convention = InputConvention(input_size=64, crop_mode=mode, crop_scale=1.5)
    assert crop_face(image, (30, 40, 30, 30), convention).shape == (64, 64, 3)


def test_is_valid_box() -> None:
    assert is_valid_box((10, 10, 5, 5), 100, 100)
    assert not is_valid_box((10, 10, 0, 5), 100, 100)
    assert not is_valid_box((120, 10, 5, 5), 100, 100)
    assert not is_valid_box((float("nan"), 10, 5, 5), 100, 100)


def test_interpolation_overrides_the_rule_and_unknown_names_are_refused() -> None:
    import cv2

    from fas.errors import ConfigError

    image = np.random.default_rng(1).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    region = image[40:61, 30:71]  # shift_crop_box(200, 100, (40, 45, 20, 10), 2.0) == (30, 40, 70, 60)
    for name, flag in (("nearest", cv2.INTER_NEAREST), ("area", cv2.INTER_AREA)):
        expected = cv2.resize(region, (16, 16), interpolation=flag)
        np.testing.assert_array_equal(shift_crop(image, (40, 45, 20, 10), 2.0, 16, name), expected)
    np.testing.assert_array_equal(
        shift_crop(image, (40, 45, 20, 10), 2.0, 16), cv2.resize(region, (16, 16), interpolation=cv2.INTER_LINEAR)
    )
    with pytest.raises(ConfigError, match="unknown interpolation 'bicubic'"):
        crop_face(image, (40, 45, 20, 10), InputConvention(input_size=16), interpolation="bicubic")
