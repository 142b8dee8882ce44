"""Capture stress: the test faces again under one everyday change of the capture each, for `evaluate.py stress=`.

A `CaptureChange` alters the whole frame before the crop (an albumentations transform: blur, JPEG quality, gamma,
noise, down-scaling) and/or the face box after detection (scaled about its centre, shifted by a fraction of its
size), so each model's crop rule then applies to the changed input as it would to a real one. `StressedCrops` is a
split's faces read again from their files under one change, seeded per face, so a stressed score is reproducible
and pairs with the clean score of the same face. Presets live in `configs/stress/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from fas.convention import InputConvention
from fas.data.crop import Box
from fas.data.datasets import FaceCropDataset, SplitDataset, Transform
from fas.data.loading import crop_from, pixel_box, read_sample_image
from fas.data.sample import Sample
from fas.errors import ConfigError

STRESS_SEED = 0  # each face's change is seeded by (STRESS_SEED, its index in the split)


@dataclass(frozen=True)
class CaptureChange:
    """One change of the capture: `frame` (an albumentations transform of the RGB frame, or None), then the face
    box scaled by `box_scale` about its centre and moved by `box_shift` (fractions of its width and height)."""

    name: str
    frame: Transform | None = None
    box_scale: float = 1.0
    box_shift: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not self.box_scale > 0:
            raise ConfigError(f"stress.changes.{self.name}.box_scale={self.box_scale}: give a positive factor")
        if len(self.box_shift) != 2:
            raise ConfigError(f"stress.changes.{self.name}.box_shift={self.box_shift}: give [dx, dy] (fractions)")
        object.__setattr__(self, "box_shift", tuple(float(v) for v in self.box_shift))

    def changed_box(self, box: Box) -> Box:
        """The box scaled about its centre and shifted (pixels in, pixels out)."""
        x, y, w, h = box
        cx, cy = x + w / 2 + self.box_shift[0] * w, y + h / 2 + self.box_shift[1] * h
        w, h = w * self.box_scale, h * self.box_scale
        return (cx - w / 2, cy - h / 2, w, h)

    def changed_frame(self, image_bgr: np.ndarray, seed: int) -> np.ndarray:
        """The BGR frame under `frame` (applied in RGB, as albumentations expects), seeded."""
        if self.frame is None:
            return image_bgr
        self.frame.set_random_seed(seed)
        rgb = self.frame(image=cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))["image"]
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def capture_changes(changes: dict[str, dict[str, Any]] | None) -> list[CaptureChange]:
    """A preset's `changes` (name -> `frame` transform, `box_scale`, `box_shift`; instantiated) as CaptureChanges."""
    result = []
    for name, settings in (changes or {}).items():
        unknown = set(settings) - {"frame", "box_scale", "box_shift"}
        if unknown:
            raise ConfigError(
                f"stress.changes.{name}: unknown key(s) {', '.join(sorted(unknown))}; use frame, box_scale, box_shift"
            )
        result.append(CaptureChange(name, **settings))
    return result


class StressedCrops(FaceCropDataset):
    """One source's faces read from their files again, changed by `change` (seeded per face), cropped by the
    convention; items as `FaceCropDataset`'s, never augmented. `first_index` numbers its faces within the split."""

    def __init__(
        self, samples: Sequence[Sample], convention: InputConvention, change: CaptureChange, first_index: int = 0
    ) -> None:
        super().__init__(samples, convention)
        self.change = change
        self.first_index = first_index

    def load_crop(self, index: int) -> np.ndarray:
        sample = self.samples[index]
        image = self.change.changed_frame(read_sample_image(sample), STRESS_SEED * 1_000_003 + self.first_index + index)
        height, width = image.shape[:2]
        box = self.change.changed_box(pixel_box(sample, width, height))
        return crop_from(image, replace(sample, box=box, box_frame=None), self.convention)


def stressed_split(
    samples: Sequence[Sample], source_names: Sequence[str], convention: InputConvention, change: CaptureChange
) -> SplitDataset:
    """A split's samples (in the split's order, grouped by source as the datamodule builds it) under one change,
    with the source index each item carries in the clean split."""
    parts, start = [], 0
    for index, name in enumerate(source_names):
        own = [s for s in samples if s.source == name]
        if own:
            parts.append((index, StressedCrops(own, convention, change, start)))
            start += len(own)
    return SplitDataset(parts)
