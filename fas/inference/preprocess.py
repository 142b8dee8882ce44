"""Image + face boxes -> the model's input batch, following its `InputConvention`.

The crop comes from `fas.data.crop` (exact copies of the published rules). Normalisation is computed
in float64 and rounded once to float32, so `pixel * (1/255)` gives the same float32 as the originals'
`pixel / 255.0` (a float32 multiply by a rounded 1/255 would differ in the last bit for some pixels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fas.convention import InputConvention
from fas.data.crop import Box, crop_face


def normalize(crop_bgr: np.ndarray, convention: InputConvention) -> np.ndarray:
    """HxWx3 uint8 BGR crop -> 3xHxW float32 in the convention's colour order, scale, mean and std."""
    pixels = crop_bgr[..., ::-1] if convention.color_order == "rgb" else crop_bgr
    values = (pixels.astype(np.float64) * convention.pixel_scale - convention.mean) / convention.std
    return np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32)


def face_batch(image_bgr: np.ndarray, boxes: Sequence[Box], convention: InputConvention) -> np.ndarray:
    """(N, 3, S, S) float32: each face cropped by the convention's rule and normalised."""
    size = convention.input_size
    batch = np.empty((len(boxes), 3, size, size), np.float32)
    for index, box in enumerate(boxes):
        batch[index] = normalize(crop_face(image_bgr, box, convention), convention)
    return batch
