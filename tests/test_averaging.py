"""`callbacks=[default,ema]`: the moving average of the weights is what the run validates, checkpoints and tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from fas.averaging import reestimate_batchnorm, warn_if_run_is_short
from fas.convention import ClassScheme, InputConvention
from fas.data.datamodule import instantiate_datamodule
from fas.finetune import score
from fas.metrics import choose_threshold, roc_auc
from fas.module import LivenessModule
from fas.train import train

from conftest import TINY_RUN, compose_train


def test_the_moving_average_is_validated_checkpointed_and_tested(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = [f"data.root={tiny_data}", "convention.input_size=64", "optimizer=adamw", "trainer.max_epochs=2"]
    cfg = compose_train([*TINY_RUN, *overrides, "callbacks=[default,ema]", "callbacks.ema.decay=0.5"], tmp_path)
    with caplog.at_level("WARNING", logger="fas.averaging"):
        train(cfg)
    # 2 epochs of 4 batches are shorter than 5 spans of 2 steps.
    assert "about the last 2 optimizer steps of a 8-step run" in caplog.text
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())["models"][0]
    checkpoint = torch.load(report["path"], map_location="cpu", weights_only=True)
    averaged, trained = checkpoint["state_dict"], checkpoint["current_model_state"]
    key = "backbone.conv_45.conv.conv.weight"
    assert not torch.equal(averaged[key], trained[key])

    datamodule = instantiate_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = LivenessModule.load_from_checkpoint(report["path"], map_location="cpu", weights_only=True)
    module.load_state_dict(averaged)
    # The averaged weights chose the recorded threshold on the validation split and gave the test figures.
    threshold = choose_threshold("eer", score(module, datamodule.val_dataloader()), split="val")
    assert checkpoint["fas_threshold"]["value"] == pytest.approx(threshold.value, abs=1e-6)
    test_scores = score(module, datamodule.test_dataloader())
    assert report["metrics"]["auroc"] == pytest.approx(roc_auc(test_scores.score, test_scores.is_spoof), abs=1e-6)
    module.load_state_dict(trained)
    other = choose_threshold("eer", score(module, datamodule.val_dataloader()), split="val")
    assert other.value != pytest.approx(threshold.value, abs=1e-6)


def test_batchnorm_statistics_are_reestimated_on_training_batches_and_frozen_ones_kept() -> None:
    module = LivenessModule(
        "minifasnet_v2se",
        InputConvention(input_size=32).to_dict(),
        ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1}).to_dict(),
        frozen_stages=1,
    ).eval()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loader = DataLoader([{"image": image} for image in images], batch_size=4)  # 2 batches of 4
    frozen = module.backbone.conv1.bn.running_mean.clone()
    reestimate_batchnorm(module, loader, batches=2)
    assert not module.training and module.backbone.conv_23.conv.bn.momentum == 0.1  # left as it was found
    assert torch.equal(module.backbone.conv1.bn.running_mean, frozen)  # stage 0 is frozen
    # The first BatchNorm that trains reads conv_23's 1x1 convolution of the frozen stem's output.
    with torch.no_grad():
        inputs = module.backbone.conv_23.conv.conv(module.backbone.conv2_dw(module.backbone.conv1(images)))
    batch_means = inputs.unflatten(0, (2, 4)).mean(dim=(1, 3, 4))  # per batch and channel
    torch.testing.assert_close(module.backbone.conv_23.conv.bn.running_mean, batch_means.mean(0), rtol=1e-4, atol=1e-5)


def test_a_run_shorter_than_five_averaging_spans_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="fas.averaging"):
        warn_if_run_is_short(0.995, 275)  # the default run on generated data: 1.4 spans of 200 steps
        warn_if_run_is_short(0.995, 1344)  # Replay-Attack at 128 px, 12 epochs: 6.7 spans
        warn_if_run_is_short(0.995, float("inf"))  # max_epochs=-1
    (record,) = caplog.records
    assert "about the last 200 optimizer steps of a 275-step run" in record.message
    assert "callbacks.ema.decay=0.981" in record.message  # 1 - 5 / 275 = 0.9818, rounded down
