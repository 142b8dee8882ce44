"""Image + face boxes -> the model's input batch, following its `InputConvention`.

The crop comes from `fas.data.crop` (exact copies of the published rules). A pixel scale of 1/k
(k an integer, e.g. 1/255) is applied as a float32 division by k, as the originals do: a multiply by
the rounded 1/255 would differ from `pixel / 255.0` in the last bit for some pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fas.convention import InputConvention
from fas.data.crop import Box, crop_face


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


def face_batch(image_bgr: np.ndarray, boxes: Sequence[Box], convention: InputConvention) -> np.ndarray:
    """(N, 3, S, S) float32: each face cropped by the convention's rule and normalised."""
    size = convention.input_size
    batch = np.empty((len(boxes), 3, size, size), np.float32)
    for index, box in enumerate(boxes):
        batch[index] = normalize(crop_face(image_bgr, box, convention), convention)
    return batch
