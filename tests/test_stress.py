"""Capture stress: changed boxes and frames (seeded), the stressed crops of a split, and the figures against clean."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
from omegaconf import OmegaConf

from fas.convention import ClassScheme, InputConvention
from fas.data.datasets import FaceCropDataset
from fas.data.sample import with_targets
from fas.data.sources.celeba_spoof import read_split
from fas.data.stress import CaptureChange, StressedCrops, capture_changes, stressed_split
from fas.errors import ConfigError
from fas.metrics import Scores, stress_metrics

from conftest import CONFIG_DIR

CONVENTION = InputConvention(input_size=48, crop_scale=1.5, crop_mode="reflect")
BINARY = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1})


def labelled(root: Path, count: int) -> list:
    return with_targets(read_split(root, "test")[0], BINARY, "test")[:count]


def test_the_box_is_scaled_about_its_centre_and_shifted_by_its_size() -> None:
    change = CaptureChange("wide_right", box_scale=1.5, box_shift=(0.1, 0.0))
    assert change.changed_box((10.0, 20.0, 40.0, 60.0)) == pytest.approx((4.0, 5.0, 60.0, 90.0))
    assert CaptureChange("same").changed_box((1.0, 2.0, 3.0, 4.0)) == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ConfigError, match="box_scale=0"):
        CaptureChange("flat", box_scale=0)


def test_an_unchanged_capture_gives_the_clean_crops_and_a_change_is_seeded(tiny_data: Path) -> None:
    samples = labelled(tiny_data, 6)
    clean = FaceCropDataset(samples, CONVENTION)
    same = StressedCrops(samples, CONVENTION, CaptureChange("same"))
    for index in range(len(samples)):
        np.testing.assert_array_equal(same[index]["image"].numpy(), clean[index]["image"].numpy())
    noise = hydra.utils.instantiate({"_target_": "albumentations.GaussNoise", "std_range": [0.1, 0.1], "p": 1.0})
    noisy = StressedCrops(samples, CONVENTION, CaptureChange("noise", frame=noise))
    first, again = noisy[0]["image"].numpy(), noisy[0]["image"].numpy()
    np.testing.assert_array_equal(first, again)  # the same face, the same noise
    assert np.abs(first - clean[0]["image"].numpy()).mean() > 0.01
    assert not np.array_equal(noisy[1]["image"].numpy() - clean[1]["image"].numpy(), first - clean[0]["image"].numpy())


def test_stress_figures_against_the_clean_scores_by_hand() -> None:
    spoof_types = np.array([0, 1, 0, 1])
    clean = Scores(np.array([0.1, 0.9, 0.4, 0.6]), spoof_types)
    changed = Scores(np.array([0.2, 0.3, 0.7, 0.8]), spoof_types)
    figures = stress_metrics(clean, changed, 0.5, [1])
    # live 0.2, 0.7 against spoof 0.3, 0.8: 3 of 4 pairs ordered; clean: all 4
    assert figures["auroc"] == pytest.approx(0.75) and figures["auroc_change"] == pytest.approx(-0.25)
    assert figures["apcer"] == 0.5 and figures["bpcer"] == 0.5 and figures["hter"] == 0.5
    assert figures["flipped"] == 0.5 and figures["mean_score_change"] == pytest.approx(0.0)
    assert stress_metrics(clean, changed, None, [1])["flipped"] is None


def test_the_light_preset_builds_and_every_frame_change_alters_a_frame() -> None:
    preset = OmegaConf.load(CONFIG_DIR / "stress" / "light.yaml")
    changes = capture_changes(hydra.utils.instantiate(OmegaConf.to_container(preset.changes)))
    names = [c.name for c in changes]
    assert {"blur_sigma_2", "jpeg_30", "darker_gamma_2", "half_resolution", "box_1.15"} <= set(names)
    frame = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    for change in changes:
        if change.frame is not None:
            changed = change.changed_frame(frame.copy(), seed=3)
            assert changed.shape == frame.shape and not np.array_equal(changed, frame), change.name
            np.testing.assert_array_equal(changed, change.changed_frame(frame.copy(), seed=3))
    with pytest.raises(ConfigError, match=r"stress.changes.x: unknown key\(s\) scale"):
        capture_changes({"x": {"scale": 2}})


def test_a_stressed_split_keeps_each_faces_source_index(tiny_data: Path) -> None:
    import dataclasses

    samples = labelled(tiny_data, 4)
    samples = [dataclasses.replace(s, source="b" if i >= 2 else "a") for i, s in enumerate(samples)]
    split = stressed_split(samples, ["a", "unused", "b"], CONVENTION, CaptureChange("same"))
    assert [split[i]["source"] for i in range(4)] == [0, 0, 2, 2]
    assert [part.first_index for _, part in split.parts] == [0, 2]
