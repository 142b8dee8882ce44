"""Face crops and their normalisation: image + face box -> model input, for training and inference alike.

Crops follow the published rules (Silent-Face's shifted box or whole image, suri-liveness's
reflect-padded square with letterbox, hairymax/Face-AntiSpoofing's black-padded one), each
reproducing its original's pixels exactly. A pixel scale
of 1/k (k an integer, e.g. 1/255) is applied as a float32 division by k, as the originals do: a
multiply by the rounded 1/255 would differ from `pixel / 255.0` in the last bit for some pixels.

Boxes are (x, y, w, h) in pixels of the image they refer to. Cropping and resizing act on each channel
alike, so the image may be BGR or RGB; the colour order is the convention's business, not the crop's.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fas.convention import InputConvention

Box = tuple[float, float, float, float]

BB_FRAME = 224  # CelebA-Spoof's _BB.txt coordinates refer to the image resized to 224x224

# `InputConvention.interpolation` -> cv2 flag. None keeps each rule's own: bilinear for the shift crop
# and the whole image (Silent-Face) and for the pad crop (hairymax), area when shrinking and Lanczos
# when growing for the letterbox of the reflect crop (suri-liveness).
INTERPOLATION_FLAGS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def interpolation_flag(name: str | None, default: int) -> int:
    """The cv2 flag of an interpolation name (checked by `InputConvention`); `default` when the name is None."""
    return default if name is None else INTERPOLATION_FLAGS[name]


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


def square_about_box(image: np.ndarray, box: Box, scale: float, border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    """A square of side max(w, h) * scale about the box centre, padded with `border` where it leaves the
    image: reflect-101 for suri-liveness, black (`cv2.BORDER_CONSTANT`) for hairymax/Face-AntiSpoofing.

    Rounding follows both originals exactly: the corner is `int(centre - side / 2)` (truncation toward
    zero, so -3.5 -> -3) with the unrounded side, and the side itself is `int(max(w, h) * scale)`.
    """
    x, y, w, h = box
    extent = max(w, h) * scale
    side = max(int(extent), 1)
    x1, y1 = int(x + w / 2 - extent / 2), int(y + h / 2 - extent / 2)
    height, width = image.shape[:2]
    visible = image[max(0, y1) : min(height, y1 + side), max(0, x1) : min(width, x1 + side)]
    if visible.size == 0:
        raise ValueError(f"the {side}-pixel square about face box {box} lies outside the {width}x{height} image")
    top, left = max(0, -y1), max(0, -x1)
    bottom, right = max(0, y1 + side - height), max(0, x1 + side - width)
    return cv2.copyMakeBorder(visible, top, bottom, left, right, border, value=0)


def letterbox(
    image: np.ndarray, out_size: int, interpolation: str | None = None, border: int = cv2.BORDER_REFLECT_101
) -> np.ndarray:
    """Longer side to out_size, the shorter side truncated, the remainder padded with `border`.

    suri-liveness resizes with Lanczos when enlarging and area otherwise and pads reflect-101 (a square
    input can come out one pixel short from float rounding, and gets that pixel padded, as in the
    original); hairymax resizes bilinearly and pads black (`border=cv2.BORDER_CONSTANT`).
    """
    height, width = image.shape[:2]
    ratio = out_size / max(height, width)
    new_height, new_width = int(height * ratio), int(width * ratio)
    if border == cv2.BORDER_CONSTANT:
        default = cv2.INTER_LINEAR
    else:
        default = cv2.INTER_LANCZOS4 if ratio > 1.0 else cv2.INTER_AREA
    resized = cv2.resize(image, (new_width, new_height), interpolation=interpolation_flag(interpolation, default))
    pad_h, pad_w = out_size - new_height, out_size - new_width
    return cv2.copyMakeBorder(resized, pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2, border, value=0)


def reflect_crop(
    image: np.ndarray, box: Box, scale: float, out_size: int, interpolation: str | None = None
) -> np.ndarray:
    """suri-liveness's whole preprocessing up to pixels: the reflect-padded square, then `letterbox`."""
    return letterbox(square_about_box(image, box, scale), out_size, interpolation)


def pad_crop(image: np.ndarray, box: Box, scale: float, out_size: int, interpolation: str | None = None) -> np.ndarray:
    """hairymax/Face-AntiSpoofing's preprocessing: the black-padded square, then a bilinear black letterbox."""
    square = square_about_box(image, box, scale, cv2.BORDER_CONSTANT)
    return letterbox(square, out_size, interpolation, cv2.BORDER_CONSTANT)


def whole_image(image: np.ndarray, out_size: int, interpolation: str | None = None) -> np.ndarray:
    """Silent-Face's `org` models: no crop, the whole image resized (bilinear, aspect not kept)."""
    return cv2.resize(image, (out_size, out_size), interpolation=interpolation_flag(interpolation, cv2.INTER_LINEAR))


def crop_face(image: np.ndarray, box: Box, convention: InputConvention) -> np.ndarray:
    """Crop a face from an HxWx3 uint8 image with the convention's rule, size and resampling.

    The one crop of fas: the packed training cache, evaluation, export calibration, `fas.predict` and the
    LiteRT parity checks all come through here.
    """
    interpolation = convention.interpolation
    if convention.crop_mode == "shift":
        return shift_crop(image, box, convention.crop_scale, convention.input_size, interpolation)
    if convention.crop_mode == "reflect":
        return reflect_crop(image, box, convention.crop_scale, convention.input_size, interpolation)
    if convention.crop_mode == "pad":
        return pad_crop(image, box, convention.crop_scale, convention.input_size, interpolation)
    return whole_image(image, convention.input_size, interpolation)


def is_valid_box(box: Box, width: int, height: int) -> bool:
    """A box is usable when its sides are positive and it overlaps the image."""
    x, y, w, h = box
    finite = all(math.isfinite(v) for v in box)
    return finite and w >= 1 and h >= 1 and x < width and y < height and x + w > 0 and y + h > 0


def normalize(crop_bgr: np.ndarray, convention: InputConvention) -> np.ndarray:
    """HxWx3 uint8 BGR crop -> 3xHxW float32 in the convention's colour order, scale, mean and std."""
    pixels = crop_bgr[..., ::-1] if convention.color_order == "rgb" else crop_bgr
    values = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
    divisor = 1.0 / convention.pixel_scale
    if abs(divisor - round(divisor)) < 1e-9 * divisor:
        values /= np.float32(round(divisor))
    else:
        values *= np.float32(convention.pixel_scale)
    if any(convention.mean) or any(s != 1.0 for s in convention.std):
        values -= np.array(convention.mean, np.float32)[:, None, None]
        values /= np.array(convention.std, np.float32)[:, None, None]
    return values
