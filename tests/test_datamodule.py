from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import hydra
import numpy as np
import pytest
import torch
from omegaconf import open_dict

from fas.convention import ClassScheme, InputConvention
from fas.data.datamodule import FaceDataModule, split_by_subject
from fas.data.datasets import FaceCropDataset
from fas.data.sample import DatasetError, Sample

from conftest import celeba_datamodule

BINARY = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1})


def make(root: Path, **kwargs) -> FaceDataModule:
    dm = celeba_datamodule(root, BINARY, batch_size=8, eval_batch_size=8, **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def test_splits_batches_and_normalisation(tiny_data: Path) -> None:
    dm = make(tiny_data, val_fraction=0.25, convention=InputConvention(input_size=64))
    train_subjects = {s.subject for s in dm.samples["train"]}
    val_subjects = {s.subject for s in dm.samples["val"]}
    assert len(val_subjects) == 1 and not train_subjects & val_subjects
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert set(batch) == {"image", "target", "spoof_type", "illumination", "environment", "source"}
    test_keys = {s.key for s in dm.samples["test"]}
    assert all(k.startswith("Data/test/") for k in test_keys)


def test_bgr_0_255_convention(tiny_data: Path) -> None:
    rgb = make(tiny_data, convention=InputConvention(input_size=32)).splits["test"][0]["image"]
    bgr = make(tiny_data, convention=InputConvention(input_size=32, color_order="bgr", pixel_scale=1.0)).splits["test"][
        0
    ]["image"]
    torch.testing.assert_close(bgr, rgb.flip(0) * 255, atol=1e-4, rtol=0)


def test_split_by_subject_is_seeded() -> None:
    from fas.data.sample import Sample

    samples = [Sample(Path(f"k{i}"), None, (0, 0, 1, 1), 0, str(i % 10), "train", "s", f"k{i}") for i in range(100)]
    a = split_by_subject(samples, 0.2, seed=1)
    b = split_by_subject(samples, 0.2, seed=1)
    assert [s.key for s in a[1]] == [s.key for s in b[1]]
    assert len({s.subject for s in a[1]}) == 2
    with pytest.raises(DatasetError, match=r"lower data.val_fraction"):
        split_by_subject(samples, 1.0, seed=1)


def test_bad_samples_stop_or_are_skipped_with_a_list(tmp_path: Path, tiny_data: Path) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    broken = sorted((root / "Data/train").rglob("*_BB.txt"))[0]
    broken.write_text("garbage")
    with pytest.raises(
        DatasetError,
        match=r"1 unusable sample\(s\) \(1 in the train split\).*, e\.g\. .*_BB.txt: malformed.*"
        r"data.skip_bad_samples=true",
    ):
        make(root)
    intact = make(tiny_data)
    dm = make(root, skip_bad_samples=True, bad_samples_dir=str(tmp_path / "run"))
    listing = (tmp_path / "run" / "bad_samples_train.tsv").read_text()
    assert str(broken) in listing and "malformed" in listing
    kept = len(dm.splits["train"]) + len(dm.splits["val"])
    assert kept == len(intact.splits["train"]) + len(intact.splits["val"]) - 1


def test_missing_root_and_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere: the root does not exist; point it at your CelebA-Spoof copy"):
        celeba_datamodule(tmp_path / "nowhere", BINARY).prepare_data()
    masks_only = ClassScheme("masks", ("live", "mask"), 0, {0: 0})
    metas = tmp_path / "metas/intra_test"
    metas.mkdir(parents=True)
    (metas / "train_label.json").write_text("{}")
    (metas / "test_label.json").write_text("{}")
    with pytest.raises(DatasetError, match="the train split has no usable samples for class scheme 'masks'"):
        celeba_datamodule(tmp_path, masks_only).setup()


SILENTFACE_TRANSFORMS = ["RandomResizedCrop", "ColorJitter", "Rotate", "HorizontalFlip"]
PRESETS = {
    "none": [],
    "silentface": SILENTFACE_TRANSFORMS,
    "strong": [*SILENTFACE_TRANSFORMS, "GaussianBlur", "ImageCompression", "RandomGamma", "GaussNoise"],
}


def augmentation(name: str, size: int, run_dir: Path, always: bool = False):
    """The `augmentation=<name>` preset as train.py builds it; `always` sets every transform's p to 1."""
    from conftest import compose_train

    cfg = compose_train([f"augmentation={name}", f"convention.input_size={size}"], run_dir)
    if cfg.augmentation.train is not None and always:
        with open_dict(cfg):
            for entry in cfg.augmentation.train.transforms:
                entry.p = 1.0
    return hydra.utils.instantiate(cfg.augmentation.train)


def face_crop(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (0, 0), 1.5)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("size", [80, 128])
def test_augmentation_presets_transform_crops_of_any_input_size(name: str, size: int, tmp_path: Path) -> None:
    transform = augmentation(name, size, tmp_path, always=True)
    if name == "none":
        assert transform is None
        return
    assert [type(t).__name__ for t in transform.transforms] == PRESETS[name]
    crop = face_crop(size)
    transform.set_random_seed(0)
    out = transform(image=crop)["image"]
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - crop).mean() > 5  # every transform ran (p=1): the crop really changed
    transform.set_random_seed(0)
    np.testing.assert_array_equal(transform(image=crop)["image"], out)


def test_silentface_random_resized_crop_matches_torchvision_with_scale_up_to_1_1(tmp_path: Path) -> None:
    """Silent-Face's RandomResizedCrop(scale=(0.9, 1.1)) leaves 31.8% of square crops uncropped (simulated
    with torchvision's sampling rule); the preset's scale [0.9, 1.0] at p=0.75 must do the same."""
    transform = augmentation("silentface", 32, tmp_path)
    transform.set_random_seed(0)
    resized_crop = transform.transforms[0]
    crop = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    kept = [np.array_equal(resized_crop(image=crop)["image"], crop) for _ in range(2000)]
    assert 0.28 < np.mean(kept) < 0.36


def test_only_training_items_are_augmented(tiny_data: Path, tmp_path: Path) -> None:
    dm = make(
        tiny_data,
        convention=InputConvention(input_size=80),
        train_transform=augmentation("silentface", 80, tmp_path, always=True),
    )
    train = dm.splits["train"]
    assert dm.splits["val"].transform is None and dm.splits["test"].transform is None
    plain = FaceCropDataset(dm.samples["train"], dm.convention)
    assert not torch.equal(train[0]["image"], plain[0]["image"])
    assert train[0]["target"] == plain[0]["target"]


def test_undecodable_images_are_found_before_training(broken_data, tmp_path: Path, caplog) -> None:
    """Every broken file is listed up front (not one per run, mid-epoch); the check is paid once per file."""
    import csv
    import logging

    from conftest import BREAKAGES

    root, broken = broken_data
    train_faults = {key: reason for key, reason in broken.items() if key.startswith("Data/train/")}
    faults = rf"{len(broken)} unusable sample\(s\) \({len(broken) - len(train_faults)} in the test split, "
    with pytest.raises(DatasetError, match=faults + rf"{len(train_faults)} in the train split\)"):
        make(root, bad_samples_dir=str(tmp_path / "refused"))
    make(root, skip_bad_samples=True, bad_samples_dir=str(tmp_path / "first"))
    with caplog.at_level(logging.INFO):
        dm = make(root, skip_bad_samples=True, bad_samples_dir=str(tmp_path / "run"))
    assert "Checking" not in caplog.text  # the runs above decoded every image already
    listed = list(csv.DictReader((tmp_path / "run" / "bad_samples_train.tsv").open(), delimiter="\t"))
    assert len(listed) == len(train_faults) == sum(split == "train" for split, *_ in BREAKAGES)
    for key, reason in train_faults.items():
        (row,) = [row for row in listed if Path(row["path"]).stem in (Path(key).stem, f"{Path(key).stem}_BB")]
        assert reason in row["reason"], (key, row)
    # What is left trains through every batch, also from loader workers.
    dm.num_workers = 2
    seen = sum(len(batch["target"]) for batch in dm.train_dataloader())
    assert seen == len(dm.splits["train"]) - len(dm.splits["train"]) % dm.batch_size


def test_an_image_changed_after_its_check_is_checked_again(tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    make(root)
    image = sorted((root / "Data/train").rglob("*.jpg"))[0]
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"truncated image \(no end-of-image marker\)"):
        make(root)


def folder_datamodule(root: Path, tmp_path: Path, reference_dir: Path, stage: str = "fit", **kwargs) -> FaceDataModule:
    """A datamodule over a folder source, with YuNet for the faces without a box, prepared and set up."""
    from fas.data.sources.folder import FolderSource
    from fas.detect import detector_factory

    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    sources = kwargs.pop("sources", None) or {"mine": FolderSource(str(root))}
    dm = FaceDataModule(
        sources,
        BINARY_WITH_UNKNOWN,
        convention=InputConvention(input_size=48),
        batch_size=8,
        eval_batch_size=8,
        prepared_dir=str(tmp_path / "prepared"),
        detector=detector_factory({"_target_": "fas.detect.YuNetDetector", "model_path": str(yunet)}),
        **kwargs,
    )
    dm.prepare_data()
    dm.setup(stage)
    return dm


BINARY_WITH_UNKNOWN = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1, 11: 1})


def test_a_folder_source_trains_from_its_automatic_cache(tiny_folder: Path, tmp_path: Path, reference_dir: Path):
    dm = folder_datamodule(tiny_folder, tmp_path, reference_dir)
    (cache,) = (p for p in (tmp_path / "prepared").iterdir() if p.is_dir())
    assert cache.name.startswith("mine-48px-") and (cache / "manifest.json").is_file()
    assert {s.split for s in dm.samples["test"]} == {"test"} and {s.split for s in dm.samples["train"]} == {"train"}
    assert not {s.subject for s in dm.samples["train"]} & {s.subject for s in dm.samples["val"]}
    assert any(s.spoof_type == 11 for split in dm.samples.values() for s in split)  # a bare spoof/: unknown attack
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape[1:] == (3, 48, 48) and set(batch["source"].tolist()) == {0}
    again = folder_datamodule(tiny_folder, tmp_path, reference_dir)  # the cache is reused, not prepared again
    assert [s.key for s in again.samples["train"]] == [s.key for s in dm.samples["train"]]


def test_an_unsplit_folder_is_split_by_subject_and_videos_stay_whole(
    tiny_folder: Path, tmp_path: Path, reference_dir: Path
) -> None:
    import shutil

    root = tmp_path / "flat"
    for split in ("train", "test"):
        shutil.copytree(tiny_folder / split, root, dirs_exist_ok=True)
    dm = folder_datamodule(root, tmp_path, reference_dir, val_fraction=0.25, test_fraction=0.34)
    subjects = {split: {s.subject for s in samples} for split, samples in dm.samples.items()}
    assert all(subjects.values())
    assert not subjects["train"] & subjects["val"] and not subjects["train"] & subjects["test"]
    assert not subjects["val"] & subjects["test"]
    for split, samples in dm.samples.items():
        for clip in {s.path for s in samples if s.frame is not None}:
            assert all(s.path != clip for other, rest in dm.samples.items() if other != split for s in rest)
    whole = folder_datamodule(root, tmp_path, reference_dir, "test", unsplit="test")  # evaluate.py: all is tested
    assert len(whole.splits["train"]) == len(whole.splits["val"]) == 0
    assert len(whole.splits["test"]) == sum(len(d) for d in dm.splits.values())


def test_mixed_sources_weights_and_a_held_out_source(tiny_folder: Path, tiny_data: Path, tmp_path, reference_dir):
    from fas.data.datasets import EpochSeededSampler
    from fas.data.sources.celeba_spoof import CelebASpoofSource
    from fas.data.sources.folder import FolderSource

    sources = {
        "celeba": CelebASpoofSource(str(tiny_data), weight=1.0),
        "mine": FolderSource(str(tiny_folder), weight=3),
    }
    dm = folder_datamodule(tiny_folder, tmp_path, reference_dir, sources=sources)
    assert dm.source_names == ["celeba", "mine"]
    train = dm.splits["train"]
    sizes = [len(dataset) for _, dataset in train.parts]
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, EpochSeededSampler) and len(sampler) == len(train)
    drawn = [train.source_of(index) for _ in range(20) for index, _ in sampler]
    share = sum(drawn) / len(drawn)
    expected = 3 * sizes[1] / (sizes[0] + 3 * sizes[1])
    assert abs(share - expected) < 0.05, (share, expected)
    held_out = folder_datamodule(tiny_folder, tmp_path, reference_dir, sources=sources, held_out="mine")
    assert {s.source for s in held_out.samples["test"]} == {"mine"}
    assert {s.source for s in held_out.samples["train"]} == {"celeba"}
    assert len(held_out.samples["test"]) == sum(s.source == "mine" for split in dm.samples.values() for s in split)


def test_a_tree_of_face_crops_is_prepared_without_a_detector(tmp_path: Path) -> None:
    from test_folder import face_crop_tree

    from fas.data.loading import load_crop
    from fas.data.sources.folder import FolderSource

    root = face_crop_tree(tmp_path / "crops")
    convention = InputConvention(input_size=32, crop_scale=1.5, crop_mode="reflect")
    source = FolderSource(str(root), name="oulu", face_crops=True, face_crop_scale=1.2)
    dm = FaceDataModule(
        {"oulu": source}, BINARY, convention=convention, eval_batch_size=8, prepared_dir=str(tmp_path / "prepared")
    )
    dm.prepare_data()  # no detector: a face crop needs none
    dm.setup()
    assert len(dm.splits["test"]) == 4 and dm.skipped == {"oulu": 0}
    records = {r.key: r for r in source.records() if isinstance(r, Sample)}
    (_, cached), *_ = dm.splits["test"].parts
    for index, key in enumerate(cached.keys):
        np.testing.assert_array_equal(cached.load_crop(index), load_crop(records[key], convention))


def test_balanced_sources_draw_an_equal_share_of_each_sources_live_and_spoof_part(
    tiny_folder: Path, tiny_data: Path, tmp_path: Path, reference_dir: Path
) -> None:
    """balance=source_class: each (source, live or spoof) group is a quarter of the draws, whatever its size;
    epoch_size sets the draws, and a sample drawn twice gets two augmentation seeds."""
    from fas.data.sources.celeba_spoof import CelebASpoofSource
    from fas.data.sources.folder import FolderSource

    sources = {"celeba": CelebASpoofSource(str(tiny_data)), "mine": FolderSource(str(tiny_folder))}
    dm = folder_datamodule(
        tiny_folder, tmp_path, reference_dir, sources=sources, balance="source_class", epoch_size=500
    )
    train = dm.samples["train"]
    sizes = Counter((s.source, s.target) for s in train)
    assert len(sizes) == 4 and len(set(sizes.values())) > 1  # unequal groups, to be evened out
    weights = dm.sample_weights()
    for group, size in sizes.items():  # hand-computed: weight 1 / group size, summing to 1 per group
        assert sum(w for s, w in zip(train, weights, strict=True) if (s.source, s.target) == group) == pytest.approx(1)
        assert {w for s, w in zip(train, weights, strict=True) if (s.source, s.target) == group} == {1 / size}
    sampler = dm.train_dataloader().sampler
    assert len(sampler) == 500
    draws = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    drawn = Counter((train[index].source, train[index].target) for index, _ in draws)
    assert all(abs(count / len(draws) - 0.25) < 0.04 for count in drawn.values()), drawn
    seeds_of = {}
    for index, seed in draws[:500]:
        seeds_of.setdefault(index, set()).add(seed)
    repeated = [seeds for index, seeds in seeds_of.items() if sum(i == index for i, _ in draws[:500]) > 1]
    assert repeated and all(len(seeds) > 1 for seeds in repeated)

    by_source = FaceDataModule(sources, BINARY, balance="source")
    by_source.samples = dm.samples
    counts = Counter(s.source for s in train)
    assert by_source.sample_weights() == [1 / counts[s.source] for s in train]
    assert FaceDataModule(sources, BINARY).sample_weights() is None  # nothing set up: nothing to weigh


def test_leave_one_out_reads_only_the_groups_other_members(tmp_path: Path, tiny_data: Path) -> None:
    """Holding out a member of `leave_one_out` trains on the group's others; a source outside it is never read
    (here a folder that does not exist), and holding out no member trains on every other source."""
    from fas.data.datamodule import used_sources
    from fas.data.sources.celeba_spoof import CelebASpoofSource
    from fas.data.sources.folder import FolderSource

    group = ["oulu", "casia", "replay", "msu"]
    names = [*group, "nuaa"]
    assert used_sources(names, "casia", group) == group
    assert used_sources(names, "nuaa", group) == names
    assert used_sources(names, None, group) == names
    assert used_sources(names, "casia", None) == names
    sources = {
        "a": CelebASpoofSource(str(tiny_data)),
        "b": CelebASpoofSource(str(tiny_data)),
        "outside": FolderSource(str(tmp_path / "missing")),
    }
    dm = FaceDataModule(sources, BINARY, held_out="a", leave_one_out=["a", "b"], convention=InputConvention(32))
    dm.prepare_data()
    dm.setup()
    assert dm.source_names == ["a", "b"]
    assert {s.source for s in dm.samples["test"]} == {"a"} and {s.source for s in dm.samples["train"]} == {"b"}
    with pytest.raises(DatasetError, match="missing"):
        FaceDataModule(sources, BINARY, held_out="outside", leave_one_out=["a", "b"]).prepare_data()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"balance": "domains"}, r"data.balance='domains': choose one of none, source, source_class"),
        ({"epoch_size": 0}, r"data.epoch_size=0: give a positive whole number"),
        ({"leave_one_out": ["a", "x"]}, r"data.leave_one_out names x, not among the sources: a"),
    ],
)
def test_balance_settings_are_checked(tiny_data: Path, settings: dict, message: str) -> None:
    from fas.data.sources.celeba_spoof import CelebASpoofSource
    from fas.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        FaceDataModule({"a": CelebASpoofSource(str(tiny_data))}, BINARY, **settings)


def test_an_evaluation_of_the_held_out_source_reads_all_its_parts(tiny_data: Path) -> None:
    """held_out with only the test split needed (evaluate.py data.held_out=<set>): the set is tested whole,
    its train part included, and the other sources are not read."""
    from fas.data.sources.celeba_spoof import CelebASpoofSource
    from fas.data.sources.folder import FolderSource

    sources = {"a": CelebASpoofSource(str(tiny_data)), "b": FolderSource("/nonexistent")}
    dm = FaceDataModule(sources, BINARY, held_out="a", needed_splits=("test",), convention=InputConvention(32))
    dm.prepare_data()
    dm.setup("test")
    whole = make(tiny_data)
    assert dm.source_names == ["a"]
    assert len(dm.samples["test"]) == sum(len(part) for part in whole.samples.values())
