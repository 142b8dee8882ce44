"""WiSE-FT: the run's tested and exported checkpoint is the interpolation of the weights the fit started
from and the fine-tuned ones, with its threshold re-chosen on validation data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fas.errors import ConfigError
from fas.finetune import WeightInterpolation, interpolate
from fas.train import train

from conftest import TINY_RUN, compose_train


def test_interpolate_mixes_float_tensors_and_keeps_the_rest() -> None:
    start = {"w": torch.zeros(2, 3), "count": torch.tensor(4), "head": torch.zeros(3)}
    tuned = {"w": torch.ones(2, 3), "count": torch.tensor(9), "head": torch.ones(2), "new": torch.ones(1)}
    mixed = interpolate(start, tuned, 0.25)
    assert torch.equal(mixed["w"], torch.full((2, 3), 0.25))
    assert mixed["count"].item() == 9 and torch.equal(mixed["head"], torch.ones(2)) and "new" in mixed
    with pytest.raises(ConfigError, match=r"finetune.interpolation=1.5: give a weight in \[0, 1\]"):
        WeightInterpolation(1.5)


def test_a_finetune_tests_and_records_the_interpolated_weights(short_fit: Path, tiny_data: Path, tmp_path: Path):
    start = json.loads((short_fit / "report" / "metrics.json").read_text())["models"][0]["path"]
    overrides = [
        *TINY_RUN,
        f"data.root={tiny_data}",
        "convention.input_size=64",
        "optimizer=adamw",
        f"pretrained={start}",
        "finetune.interpolation=0.5",
        "trainer.max_epochs=1",
        "seed=3",
    ]
    train(compose_train(overrides, tmp_path))
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())["models"][0]
    assert Path(report["path"]).name == "interpolated.ckpt"
    interpolated = torch.load(report["path"], map_location="cpu", weights_only=True)
    (tuned_path,) = (p for p in (tmp_path / "checkpoints").glob("epoch_*.ckpt"))
    tuned = torch.load(tuned_path, map_location="cpu", weights_only=True)["state_dict"]
    pretrained = torch.load(start, map_location="cpu", weights_only=True)["state_dict"]
    key = "backbone.conv1.conv.weight"
    torch.testing.assert_close(interpolated["state_dict"][key], (pretrained[key] + tuned[key]) / 2)
    assert interpolated["fas_threshold"]["split"] == "val" and interpolated["fas_threshold"]["value"] is not None
    assert report["threshold_choice"]["value"] == pytest.approx(interpolated["fas_threshold"]["value"])
