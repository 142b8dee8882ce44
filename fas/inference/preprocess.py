"""Image + face boxes -> the model's input batch, following its `InputConvention`.

Crop and normalisation come from `fas.data.crop`, the very functions the training data goes through.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fas.convention import InputConvention
from fas.data.crop import Box, crop_face, normalize


def face_batch(image_bgr: np.ndarray, boxes: Sequence[Box], convention: InputConvention) -> np.ndarray:
    """(N, 3, S, S) float32: each face cropped by the convention's rule and normalised."""
    size = convention.input_size
    batch = np.empty((len(boxes), 3, size, size), np.float32)
    for index, box in enumerate(boxes):
        batch[index] = normalize(crop_face(image_bgr, box, convention), convention)
    return batch
