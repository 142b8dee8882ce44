"""Fine-tuning that keeps what a pretrained model knew: weight-space interpolation (WiSE-FT).

Fine-tuning a published model on one more data set can wreck what it handled before (its other attacks
and cameras). WiSE-FT (Wortsman et al., 2022, "Robust fine-tuning of zero-shot models") keeps
`(1 - a) * pretrained + a * fine-tuned` weights: the fine-tuned model's gain on the new data with much of
the pretrained model's robustness elsewhere. `WeightInterpolation` (`configs/callbacks/weight_interpolation.yaml`,
`finetune.interpolation=a` in `experiment=finetune_*`) applies it to the best checkpoint when the fit ends,
re-chooses the decision threshold on the validation split with the interpolated weights, and makes that
checkpoint the one the run tests and exports. `a = 1` keeps the fine-tuned weights; sweep `a` and choose it
on validation data that stands for what must be kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from fas.errors import ConfigError
from fas.metrics import ScoreCollector, choose_threshold, roc_auc
from fas.models.checkpoint import read_checkpoint
from fas.module import THRESHOLD_KEY, LivenessModule

log = logging.getLogger(__name__)

INTERPOLATED_NAME = "interpolated.ckpt"


def interpolate(pretrained: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], weight: float) -> dict:
    """`(1 - weight) * pretrained + weight * tuned` for every floating-point tensor both hold with one shape
    (weights and BatchNorm statistics); anything else (a new classifier, counters) is kept as tuned."""
    mixed = {}
    for key, value in tuned.items():
        start = pretrained.get(key)
        if start is not None and start.shape == value.shape and value.is_floating_point():
            mixed[key] = torch.lerp(start.to(value.dtype), value, weight)
        else:
            mixed[key] = value
    return mixed


class WeightInterpolation(Callback):
    """At the end of fit, interpolate the best checkpoint toward the weights the fit started from (the
    `pretrained=` weights) and make the result the run's best checkpoint (see the module docstring)."""

    def __init__(self, interpolation: float = 1.0) -> None:
        if isinstance(interpolation, bool) or not isinstance(interpolation, int | float) or not 0 <= interpolation <= 1:
            raise ConfigError(f"finetune.interpolation={interpolation!r}: give a weight in [0, 1] (1: fine-tuned only)")
        self.interpolation = float(interpolation)
        self.start: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start is None:  # a resumed run restored it from its checkpoint (state_dict below)
            self.start = {k: v.detach().clone().cpu() for k, v in pl_module.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start} if self.interpolation < 1 else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start = state_dict.get("start")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint_callback = trainer.checkpoint_callback
        best = checkpoint_callback.best_model_path if checkpoint_callback is not None else ""
        if self.interpolation >= 1 or self.start is None or not best or not isinstance(pl_module, LivenessModule):
            return
        checkpoint = read_checkpoint(best)
        checkpoint["state_dict"] = interpolate(self.start, checkpoint["state_dict"], self.interpolation)
        pl_module.load_state_dict(checkpoint["state_dict"])
        threshold, auroc = self.validate(trainer, pl_module)
        checkpoint[THRESHOLD_KEY] = threshold.to_dict()
        path = Path(best).with_name(INTERPOLATED_NAME)
        if trainer.is_global_zero:
            torch.save(checkpoint, path)
        trainer.strategy.barrier("fas_weight_interpolation")
        log.info(
            "WiSE-FT: %s = %.2f x fine-tuned %s + %.2f x the weights the fit started from; val ROC-AUC %s, "
            "threshold %s re-chosen on it",
            path,
            self.interpolation,
            Path(best).name,
            1 - self.interpolation,
            f"{auroc:.4f}" if auroc is not None else "undefined",
            f"{threshold.value:.4f}" if threshold.value is not None else "undefined",
        )
        checkpoint_callback.best_model_path = str(path)

    @torch.no_grad()
    def validate(self, trainer: L.Trainer, module: LivenessModule) -> tuple[Any, float | None]:
        """The EER threshold and ROC-AUC of the interpolated weights on the validation split (as training's)."""
        collector = ScoreCollector(sync_on_compute=False)
        was_training = module.training
        module.eval()
        for batch in trainer.datamodule.val_dataloader():
            batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            scores = module.spoof_scores(module(batch["image"]))
            collector.update(
                scores, batch["spoof_type"], batch["illumination"], batch["environment"], batch.get("source")
            )
        module.train(was_training)
        scores = collector.compute()
        return choose_threshold("eer", scores, split="val"), roc_auc(scores.score, scores.is_spoof)
