from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np

from fas.convention import InputConvention
from fas.data.crop import normalize
from fas.inference.preprocess import face_batch
from fas.registry import published_convention


def test_normalize_orders_scales_and_standardises() -> None:
    crop = np.array([[[10, 20, 30]]], np.uint8)  # one BGR pixel
    rgb = InputConvention(input_size=16, color_order="rgb", pixel_scale=0.5, mean=(1, 2, 3), std=(2, 4, 8))
    np.testing.assert_allclose(normalize(crop, rgb)[:, 0, 0], [(15 - 1) / 2, (10 - 2) / 4, (5 - 3) / 8])
    bgr = InputConvention(input_size=16, color_order="bgr", pixel_scale=1.0)
    np.testing.assert_array_equal(normalize(crop, bgr)[:, 0, 0], [10, 20, 30])


def test_division_by_255_is_exact_in_float32() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    convention = InputConvention(input_size=16, pixel_scale=1 / 255)
    np.testing.assert_array_equal(normalize(pixels, convention)[0], pixels[..., 0].astype(np.float32) / 255.0)


def test_suri_inputs_match_the_recorded_hashes(reference_dir: Path) -> None:
    expected = json.loads((reference_dir / "expected/suri_liveness.json").read_text())
    for name, record in expected["images"].items():
        image = cv2.imread(str(reference_dir / "images" / name))
        for face in record["faces"]:
            batch = face_batch(image, [face["bbox_xywh"]], published_convention("suri_liveness"))
            assert batch.shape == (1, 3, 128, 128)
            assert hashlib.sha256(batch.tobytes()).hexdigest() == face["input_sha256"], name
