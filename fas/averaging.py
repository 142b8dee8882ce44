"""An exponential moving average (EMA) of the weights, validated, checkpointed, tested and exported in their place.

With a high learning rate the validation ROC-AUC of a small PAD model swings from epoch to epoch, and which epoch
the checkpoint callback keeps becomes luck; the average of the last few hundred steps' weights swings less.
Lightning's `WeightAveraging` keeps the average (`torch.optim.swa_utils.AveragedModel`), swaps it in for every
validation epoch and writes it as each checkpoint's `state_dict` (the weights being trained go under
`current_model_state`, for resuming), so the best checkpoint, its threshold, the test and the export all see the
averaged weights.

BatchNorm statistics are not averaged: the running statistics of weights that moved are not those of their
average (on Replay-Attack at 128 px, epoch 4 of a run at lr 0.02, a third of devel: ROC-AUC 0.912 with averaged
statistics, 0.996 with statistics re-estimated for the averaged weights, 0.990 for the weights being trained). As in SWA
(Izmailov et al., 2018), they are re-estimated on `bn_batches` training batches before each validation epoch.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_avg_fn
from torch.utils.data import DataLoader

from fas.errors import ConfigError
from fas.module import BATCH_NORMS

log = logging.getLogger(__name__)

# Runs shorter than this many averaging spans (1 / (1 - decay) steps) get a warning: the average still holds the
# weights of the run's start. Measured (experiments/real_faces/README.md): 6.7 spans raised test ROC-AUC on three
# seeds of three, 1.4 spans lowered it on three of three.
MIN_SPANS = 5


class WeightEma(WeightAveraging):
    """Averages the parameters after every optimizer step, `average = decay * average + (1 - decay) * weights`,
    and re-estimates the averaged model's BatchNorm statistics on `bn_batches` training batches before each
    validation epoch (see the module docstring). Outside fitting, a checkpoint's `state_dict` (the average) is the
    model: its `current_model_state` is not loaded over it, so `trainer.test` tests what was validated."""

    def __init__(self, decay: float = 0.995, bn_batches: int = 30) -> None:
        if not 0 < decay < 1:
            raise ConfigError(f"callbacks.ema.decay={decay!r}: give a number in (0, 1), e.g. 0.995")
        super().__init__(use_buffers=False, avg_fn=get_ema_avg_fn(decay))
        self.decay = decay
        self.bn_batches = bn_batches

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        warn_if_run_is_short(self.decay, trainer.estimated_stepping_batches)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)  # the averaged weights are now the module's
        if self._average_model is not None and not trainer.sanity_checking:
            reestimate_batchnorm(pl_module, trainer.train_dataloader, self.bn_batches)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


def warn_if_run_is_short(decay: float, steps: float) -> None:
    """Warn when a run of `steps` optimizer steps is shorter than `MIN_SPANS` averaging spans."""
    span = 1 / (1 - decay)
    if math.isfinite(steps) and steps < MIN_SPANS * span:
        suggested = math.floor((1 - MIN_SPANS / steps) * 1000) / 1000
        log.warning(
            "callbacks.ema.decay=%s averages about the last %d optimizer steps of a %d-step run, so the average "
            "still holds the weights of the run's start (on such runs it scored below the trained weights): "
            "set callbacks.ema.decay=%s or lower, train longer, or leave the ema callback out",
            decay,
            round(span),
            steps,
            suggested if suggested > 0 else "0.5",
        )


@torch.no_grad()
def reestimate_batchnorm(module: L.LightningModule, loader: DataLoader | None, batches: int) -> None:
    """Replace the running statistics of every BatchNorm of `module.backbone` that trains (frozen ones keep theirs)
    by their mean over the first `batches` batches of `loader` (the training loader). Not
    `torch.optim.swa_utils.update_bn`: it resets every BatchNorm, frozen ones too, and reads tensor or tuple
    batches, not fas's dict batches."""
    if loader is None:
        return
    was_training = module.training
    module.train()  # LivenessModule.train keeps frozen stages in eval mode
    norms = [m for m in module.backbone.modules() if isinstance(m, BATCH_NORMS) and m.training]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative mean over the batches below
    # The training epoch's own order and augmentation (its sampler is a pure function of seed and epoch), in
    # this process: no second set of workers, and nothing drawn from the training's random state.
    again = DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler, collate_fn=loader.collate_fn
    )
    for batch in itertools.islice(again, batches):
        module(batch["image"].to(module.device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    module.train(was_training)
