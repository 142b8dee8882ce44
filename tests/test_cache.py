"""The packed crop cache: reading it, refusing a mismatched config, and items equal to the image path."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fas.convention import ClassScheme, InputConvention
from fas.data.cache import manifest_path, open_cache, read_cached_split
from fas.data.datamodule import split_by_subject
from fas.data.datasets import FaceCropDataset, PackedCropDataset
from fas.data.sample import DatasetError, with_targets
from fas.data.sources.celeba_spoof import CelebASpoofSource
from fas.errors import ConfigError

from conftest import PREPARED_CROP_SETTINGS

CROP = InputConvention(**PREPARED_CROP_SETTINGS)
INTRA_TEST = CelebASpoofSource("unused").settings()
BINARY = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1})
ALL = ClassScheme("binary_all", ("live", "spoof"), 0, {t: int(t != 0) for t in range(11)})


def test_a_mismatched_crop_or_protocol_is_refused_with_the_fitting_overrides(prepared_cache: Path) -> None:
    assert open_cache(prepared_cache, CROP, INTRA_TEST)["complete"]
    with pytest.raises(
        DatasetError,
        match=r"holds 64x64 crops at scale 2.7 \(shift, the rule's own interpolation\), the config asks for "
        r"128x128 crops at scale 1.5 \(reflect, the rule's own interpolation\)\. Train with convention.input_size=64 "
        r"convention.crop_scale=2.7 convention.crop_mode=shift convention.interpolation=null, or prepare a matching "
        r"cache: python -m fas.data.prepare root=.* output=<new folder> convention.input_size=128 "
        r"convention.crop_scale=1.5 convention.crop_mode=reflect convention.interpolation=null",
    ):
        open_cache(prepared_cache, InputConvention(input_size=128, crop_scale=1.5, crop_mode="reflect"), INTRA_TEST)
    with pytest.raises(DatasetError, match=r"the config asks for 64x64 crops at scale 2.7 \(shift, area\)"):
        open_cache(prepared_cache, InputConvention(input_size=64, interpolation="area"), INTRA_TEST)
    with pytest.raises(DatasetError, match=r"made for protocol 'intra_test', the config asks for 'protocol1'"):
        open_cache(prepared_cache, CROP, {**INTRA_TEST, "protocol": "protocol1"})


def test_an_incomplete_or_missing_cache_is_refused(prepared_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"no cache manifest. Point data.cache at a folder made by"):
        open_cache(tmp_path, CROP, INTRA_TEST)
    partial = tmp_path / "partial"
    shutil.copytree(prepared_cache, partial)
    manifest = json.loads(manifest_path(partial).read_text())
    manifest_path(partial).write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(DatasetError, match=r"the cache is incomplete .* run the same `python -m fas.data.prepare"):
        open_cache(partial, CROP, INTRA_TEST)


def test_the_convention_validates_its_crop() -> None:
    with pytest.raises(ConfigError, match="crop_mode must be one of shift, reflect, pad, none, got 'padded'"):
        InputConvention(crop_mode="padded")
    with pytest.raises(ConfigError, match="interpolation must be one of nearest, linear, cubic, area, lanczos or null"):
        InputConvention(interpolation="bicubic")


def test_the_class_scheme_is_applied_when_reading(prepared_cache: Path, broken_data) -> None:
    _, broken = broken_data
    every = with_targets(read_cached_split(prepared_cache, "train", "celeba_spoof"), ALL, "train")
    binary = with_targets(read_cached_split(prepared_cache, "train", "celeba_spoof"), BINARY, "train")
    assert len(every) == 48 - 11
    assert {s.key for s in binary} == {s.key for s in every if s.spoof_type in (0, 1, 2, 3, 7, 8, 9)}
    assert all(s.target == int(s.spoof_type != 0) for s in every)
    assert not {s.key for s in every} & set(broken)
    train, val = split_by_subject(every, 0.25, seed=0)
    assert val and not {s.subject for s in train} & {s.subject for s in val}


def test_packed_items_equal_the_items_cropped_from_the_images(prepared_cache: Path) -> None:
    samples = with_targets(read_cached_split(prepared_cache, "test", "celeba_spoof"), ALL, "test")
    convention = InputConvention(input_size=64, color_order="bgr", pixel_scale=1.0, crop_scale=2.7)
    packed = PackedCropDataset(prepared_cache, samples, convention)
    files = FaceCropDataset(samples, convention)
    assert len(packed) == len(files) == 22
    for index in range(len(packed)):
        a, b = packed[index], files[index]
        torch.testing.assert_close(a.pop("image"), b.pop("image"), rtol=0, atol=0)
        assert a == b


def test_a_packed_dataset_pickles_without_its_pixels(prepared_cache: Path) -> None:
    samples = with_targets(read_cached_split(prepared_cache, "train", "celeba_spoof"), ALL, "train")
    dataset = PackedCropDataset(prepared_cache, samples, InputConvention(input_size=64))
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 10_000 and clone._images is None
    np.testing.assert_array_equal(clone.load_crop(3), dataset.load_crop(3))
