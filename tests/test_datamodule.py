from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fas.convention import ClassScheme
from fas.data.celeba_spoof import DatasetError
from fas.data.datamodule import FaceDataModule, split_by_subject

BINARY = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1})


def make(root: Path, **kwargs) -> FaceDataModule:
    dm = FaceDataModule(root=str(root), class_scheme=BINARY, batch_size=8, eval_batch_size=8, **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def test_splits_batches_and_normalisation(tiny_data: Path) -> None:
    dm = make(tiny_data, val_fraction=0.25, input_size=64)
    train_subjects = {s.subject for s in dm.splits["train"].samples}
    val_subjects = {s.subject for s in dm.splits["val"].samples}
    assert len(val_subjects) == 1 and not train_subjects & val_subjects
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert set(batch) == {"image", "target", "spoof_type", "illumination", "environment"}
    test_keys = {s.key for s in dm.splits["test"].samples}
    assert all(k.startswith("Data/test/") for k in test_keys)


def test_bgr_0_255_convention(tiny_data: Path) -> None:
    rgb = make(tiny_data, input_size=32).splits["test"][0]["image"]
    bgr = make(tiny_data, input_size=32, color_order="bgr", pixel_scale=1.0).splits["test"][0]["image"]
    torch.testing.assert_close(bgr, rgb.flip(0) * 255, atol=1e-4, rtol=0)


def test_split_by_subject_is_seeded() -> None:
    from fas.data.celeba_spoof import Sample

    samples = [Sample(f"k{i}", Path(f"k{i}"), (0, 0, 1, 1), str(i % 10), 0, 0, 0, 0) for i in range(100)]
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
        match=r"1 unusable sample\(s\) in the train split, e\.g\. .*_BB.txt: malformed.*data.skip_bad_samples=true",
    ):
        make(root)
    intact = make(tiny_data)
    dm = make(root, skip_bad_samples=True, bad_samples_dir=str(tmp_path / "run"))
    listing = (tmp_path / "run" / "bad_samples_train.tsv").read_text()
    assert str(broken) in listing and "malformed" in listing
    kept = len(dm.splits["train"]) + len(dm.splits["val"])
    assert kept == len(intact.splits["train"]) + len(intact.splits["val"]) - 1


def test_missing_root_and_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data.root does not exist"):
        FaceDataModule(root=str(tmp_path / "nowhere"), class_scheme=BINARY).prepare_data()
    masks_only = ClassScheme("masks", ("live", "mask"), 0, {0: 0})
    metas = tmp_path / "metas/intra_test"
    metas.mkdir(parents=True)
    (metas / "train_label.json").write_text("{}")
    with pytest.raises(DatasetError, match="the train split has no usable samples for class scheme 'masks'"):
        FaceDataModule(root=str(tmp_path), class_scheme=masks_only).setup()
