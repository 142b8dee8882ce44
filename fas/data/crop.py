"""Face crops: the two published rules (Silent-Face's shifted box, suri-liveness's reflect-padded square).

Boxes are (x, y, w, h) in pixels of the image they refer to.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fas.convention import InputConvention
from fas.errors import ConfigError

Box = tuple[float, float, float, float]

BB_FRAME = 224  # CelebA-Spoof's _BB.txt coordinates refer to the image resized to 224x224

# Resampling of the crop to the output size. None keeps each rule's own: bilinear for the shift crop
# (Silent-Face), area when shrinking and Lanczos when growing for the reflect crop (suri-liveness).
INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def interpolation_flag(name: str | None, default: int) -> int:
    """The cv2 flag of an interpolation name; `default` when the name is None."""
    if name is None:
        return default
    if name not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {name!r}; choose one of {', '.join(INTERPOLATIONS)}, or null")
    return INTERPOLATIONS[name]


def bb224_to_pixels(box_224: Box, width: int, height: int) -> Box:
    """Map a CelebA-Spoof `_BB.txt` box from the 224x224 frame to the real image size."""
    x, y, w, h = box_224
    sx, sy = width / BB_FRAME, height / BB_FRAME
    return (x * sx, y * sy, w * sx, h * sy)


def shift_crop_box(width: int, height: int, box: Box, scale: float) -> tuple[int, int, int, int]:
    """Silent-Face's `CropImage._get_new_box`: scale the box about its centre, shift it into the frame.

    The scale is first reduced so the scaled box fits the image; the result is the inclusive
    integer corners (x1, y1, x2, y2), truncated exactly as the original does.
    """
    x, y, box_w, box_h = box
    scale = min((height - 1) / box_h, (width - 1) / box_w, scale)
    new_w, new_h = box_w * scale, box_h * scale
    cx, cy = x + box_w / 2, y + box_h / 2
    x1, y1, x2, y2 = cx - new_w / 2, cy - new_h / 2, cx + new_w / 2, cy + new_h / 2
    if x1 < 0:
        x2 -= x1
        x1 = 0
    if y1 < 0:
        y2 -= y1
        y1 = 0
    if x2 > width - 1:
        x1 -= x2 - width + 1
        x2 = width - 1
    if y2 > height - 1:
        y1 -= y2 - height + 1
        y2 = height - 1
    return int(x1), int(y1), int(x2), int(y2)


def shift_crop(
    image: np.ndarray, box: Box, scale: float, out_size: int, interpolation: str | None = None
) -> np.ndarray:
    """Silent-Face's `CropImage.crop`: shifted scaled box, then `cv2.resize` (bilinear) to out_size."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = shift_crop_box(width, height, box, scale)
    flag = interpolation_flag(interpolation, cv2.INTER_LINEAR)
    return cv2.resize(image[y1 : y2 + 1, x1 : x2 + 1], (out_size, out_size), interpolation=flag)


def reflect_crop(
    image: np.ndarray, box: Box, scale: float, out_size: int, interpolation: str | None = None
) -> np.ndarray:
    """suri-liveness's crop: square of side max(w, h) * scale about the box centre, reflect-101
    padding where it leaves the image, resized to out_size (area when shrinking, Lanczos when growing).
    """
    x, y, w, h = box
    side = max(int(max(w, h) * scale), 1)
    cx, cy = x + w / 2, y + h / 2
    x1, y1 = int(cx - side / 2), int(cy - side / 2)
    x2, y2 = x1 + side, y1 + side
    height, width = image.shape[:2]
    pad_left, pad_top = max(0, -x1), max(0, -y1)
    pad_right, pad_bottom = max(0, x2 - width), max(0, y2 - height)
    if pad_left or pad_top or pad_right or pad_bottom:
        image = _reflect_pad(image, pad_top, pad_bottom, pad_left, pad_right)
        x1, x2, y1, y2 = x1 + pad_left, x2 + pad_left, y1 + pad_top, y2 + pad_top
    square = image[y1:y2, x1:x2]
    flag = interpolation_flag(interpolation, cv2.INTER_AREA if side > out_size else cv2.INTER_LANCZOS4)
    return cv2.resize(square, (out_size, out_size), interpolation=flag)


def _reflect_pad(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """BORDER_REFLECT_101 padding that also works when the pad exceeds the image (reflects repeatedly)."""
    while top or bottom or left or right:
        height, width = image.shape[:2]
        t, b = min(top, height - 1), min(bottom, height - 1)
        lft, r = min(left, width - 1), min(right, width - 1)
        image = cv2.copyMakeBorder(image, t, b, lft, r, cv2.BORDER_REFLECT_101)
        top, bottom, left, right = top - t, bottom - b, left - lft, right - r
    return image


def crop_face(image: np.ndarray, box: Box, convention: InputConvention, interpolation: str | None = None) -> np.ndarray:
    """Crop a face from an HxWx3 uint8 image with the convention's rule and size.

    `interpolation` overrides the rule's own resampling (see INTERPOLATIONS); None keeps it.
    """
    if convention.crop_mode == "shift":
        return shift_crop(image, box, convention.crop_scale, convention.input_size, interpolation)
    return reflect_crop(image, box, convention.crop_scale, convention.input_size, interpolation)


def is_valid_box(box: Box, width: int, height: int) -> bool:
    """A box is usable when its sides are positive and it overlaps the image."""
    x, y, w, h = box
    finite = all(math.isfinite(v) for v in box)
    return finite and w >= 1 and h >= 1 and x < width and y < height and x + w > 0 and y + h > 0
