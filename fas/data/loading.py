"""A `Sample` -> its face crop: read the image or video frame, place the box in pixels, crop by the convention.

The one path by which training (from files), `fas.data.prepare` and the image check turn records into
pixels, whatever source they came from.
"""

from __future__ import annotations

import cv2
import numpy as np

from fas.convention import InputConvention
from fas.data.crop import Box, crop_face, is_valid_box
from fas.data.sample import Sample, SampleError
from fas.media import MediaError, read_frames, read_image


def pixel_box(sample: Sample, width: int, height: int) -> Box:
    """The sample's box in pixels of a width x height image (scaled from its `box_frame` when it has one)."""
    if sample.box is None:
        raise SampleError(sample.path, "no face box (run fas.data.prepare to detect faces)")
    x, y, w, h = sample.box
    if sample.box_frame is None:
        return (x, y, w, h)
    sx, sy = width / sample.box_frame[0], height / sample.box_frame[1]
    return (x * sx, y * sy, w * sx, h * sy)


def box_problem(box: Box, width: int, height: int) -> str | None:
    """Why a face box (pixels) cannot be cropped from a width x height image, or None when it can."""
    if is_valid_box(box, width, height):
        return None
    x, y, w, h = (round(v, 1) for v in box)
    return f"face box x={x} y={y} w={w} h={h} is under a pixel or outside the {width}x{height} image"


def read_sample_image(sample: Sample) -> np.ndarray:
    """The HxWx3 uint8 BGR image of a sample: its image file, or its frame of a video (SampleError if unusable)."""
    if sample.frame is None:
        return read_image(sample.path)
    ((_, image),) = read_frames(sample.path, [sample.frame])
    if isinstance(image, MediaError):
        raise image
    return image


def crop_from(image_bgr: np.ndarray, sample: Sample, convention: InputConvention) -> np.ndarray:
    """The face crop of a sample from its already read image, as HxWx3 uint8 RGB (SampleError if unusable)."""
    height, width = image_bgr.shape[:2]
    box = pixel_box(sample, width, height)
    problem = box_problem(box, width, height)
    if problem:
        raise SampleError(sample.path, problem)
    try:
        crop = crop_face(image_bgr, box, convention)
    except (cv2.error, ValueError) as error:
        raise SampleError(sample.path, f"crop failed ({str(error).strip().splitlines()[-1]})") from None
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def load_crop(sample: Sample, convention: InputConvention) -> np.ndarray:
    """The face crop of a sample as HxWx3 uint8 RGB, before augmentation (MediaError if unusable)."""
    return crop_from(read_sample_image(sample), sample, convention)
