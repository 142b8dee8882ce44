"""`fas.module.LivenessModule` beyond what the training runs exercise: a diverged fit stops with one line."""

from __future__ import annotations

import functools

import pytest
import torch

from fas.convention import ClassScheme, InputConvention
from fas.errors import TrainingDivergedError
from fas.module import LivenessModule


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a training step outside a Trainer
@pytest.mark.parametrize("frozen_batchnorm", [False, True])
def test_a_loss_that_is_no_longer_a_number_stops_training_with_the_fix(frozen_batchnorm: bool) -> None:
    module = LivenessModule(
        "minifasnet_v2se",
        InputConvention(input_size=32).to_dict(),
        ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1}).to_dict(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.01),
        frozen_batchnorm=frozen_batchnorm,
    )
    module.train()
    batch = {"image": torch.rand(4, 3, 32, 32), "target": torch.tensor([0, 1, 0, 1])}
    assert torch.isfinite(module.training_step(batch, 0))
    batch["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(
        TrainingDivergedError, match=r"at epoch 0, step 0 \(loss nan, loss_ce nan, loss_ft nan\)"
    ) as error:
        module.training_step(batch, 1)
    assert "lower the learning rate (model.optimizer.lr, now 0.01)" in str(error.value)
    assert ("frozen_batchnorm=true" in str(error.value)) == frozen_batchnorm
