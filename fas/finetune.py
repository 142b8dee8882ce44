"""Fine-tuning that keeps what a pretrained model knew: LwF and L2-SP during the fit, WiSE-FT at its end.

Fine-tuning a published model on one more data set can wreck what it handled before (its other attacks
and cameras). `PretrainedAnchor` (`configs/callbacks/pretrained_anchor.yaml`) remembers the weights the fit
started from (the `pretrained=` weights) and keeps the result near them three ways:

- LwF (Li & Hoiem, 2016, "Learning without forgetting"), `finetune.distillation=w`: w x the distillation loss
  toward the start model's logits on the same batch joins the loss (`LivenessModule`, `fas.losses`): the outputs,
  not the weights, are kept near what the model answered before. The teacher is set here, from the start weights.
- L2-SP (Li et al., 2018, "Explicit inductive bias for transfer learning with convolutional networks"),
  `finetune.l2sp=alpha`: alpha / 2 * ||w - w_start||^2 joins the loss, added to the gradients before each
  optimizer step (weight decay pulls toward 0; this pulls toward what the model knew).
- WiSE-FT (Wortsman et al., 2022, "Robust fine-tuning of zero-shot models"), `finetune.interpolation=a`:
  when the fit ends the best checkpoint becomes `(1 - a) * w_start + a * fine-tuned`, its decision threshold
  re-chosen on the validation split with the interpolated weights, and that checkpoint is the one the run
  tests and exports. `a = 1` keeps the fine-tuned weights. Give a list of candidates and data that stands
  for what must be kept (`finetune.keep`, e.g. photos of the cameras and attacks the model handled before)
  and the run chooses: the largest `a` whose ROC-AUC on that data stays within `keep_tolerance` of the start's
  (`choose_interpolation`), i.e. as much of the new data as can be learned without losing the old.

Frozen stages and per-stage learning rates (`finetune.frozen_stages`, `finetune.stage_lr_decay`) live in
`fas.module.LivenessModule`, which builds the optimizer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from fas.data.datamodule import FaceDataModule
from fas.errors import ConfigError
from fas.metrics import ScoreCollector, Scores, choose_threshold, roc_auc
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


class PretrainedAnchor(Callback):
    """L2-SP toward the weights the fit started from while it runs, WiSE-FT toward them when it ends (see
    the module docstring). With both off (`l2sp=0`, `interpolation=1`) it only measures how far a fit from
    `pretrained=` weights moved (`moved`, which the run's report prints)."""

    def __init__(
        self, interpolation: float | Sequence[float] = 1.0, l2sp: float = 0.0, keep_tolerance: float = 0.005
    ) -> None:
        candidates = [interpolation] if isinstance(interpolation, int | float | bool) else list(interpolation)
        if not candidates or not all(is_weight(a) for a in candidates):
            raise ConfigError(
                f"finetune.interpolation={interpolation!r}: give a weight in [0, 1] (1: fine-tuned only) "
                "or a list of them to choose from on finetune.keep"
            )
        if isinstance(l2sp, bool) or not isinstance(l2sp, int | float) or l2sp < 0:
            raise ConfigError(f"finetune.l2sp={l2sp!r}: give a weight >= 0 (0: off)")
        self.candidates = sorted({float(a) for a in candidates})
        self.interpolation = self.candidates[-1]  # the one tested; chosen among the candidates at fit end
        self.l2sp = float(l2sp)
        self.keep_tolerance = float(keep_tolerance)
        # Data that stands for what the model must keep (`finetune.keep`; fas.train sets it): a datamodule
        # whose test split is scored for each candidate.
        self.keep: FaceDataModule | None = None
        self.start: dict[str, torch.Tensor] | None = None
        # After fit, how far the tested weights moved from the start (see `distance`): {"fine-tuned": ...,
        # "interpolated": ...}; empty without pretrained weights.
        self.moved: dict[str, float] = {}
        # After fit with `keep`: ROC-AUC there per interpolation weight (0: the start), and the weight chosen.
        self.keep_auroc: dict[float, float | None] = {}

    @property
    def active(self) -> bool:
        return self.candidates[0] < 1 or self.l2sp > 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(self.candidates) > 1 and self.keep is None:
            raise ConfigError(
                f"finetune.interpolation={self.candidates}: choosing among several weights needs data that stands "
                "for what the model must keep: +source@finetune.keep=folder finetune.keep.root=<folder>"
            )
        kept = getattr(pl_module, "pretrained_keys", None)
        if self.start is None and (self.active or kept is not None):  # a resumed run restored it (load_state_dict)
            if kept is None:
                log.warning(
                    "finetune.l2sp / finetune.interpolation keep the weights near the ones the fit starts from, "
                    "and no pretrained= weights were given: that is the random initialisation"
                )
            self.start = {
                k: v.detach().clone().cpu() for k, v in pl_module.state_dict().items() if kept is None or k in kept
            }
        self.parameter_names = {name for name, _ in pl_module.named_parameters()}
        if getattr(pl_module, "hparams", {}).get("distillation", 0) > 0:
            self.attach_teacher(pl_module, kept)
        if self.l2sp > 0:
            self.anchors = [
                (parameter, self.start[name].to(parameter.device, parameter.dtype))
                for name, parameter in pl_module.named_parameters()
                if parameter.requires_grad and name in self.start and self.start[name].shape == parameter.shape
            ]

    def attach_teacher(self, module: LivenessModule, kept: set[str] | None) -> None:
        """`finetune.distillation`'s teacher: the weights the fit started from, classifier included."""
        output_layer = f"backbone.{module.backbone.stages[-1][-1]}."  # the layer that writes the logits
        classifier = {k for k in module.state_dict() if k.startswith(output_layer)}
        if kept is None or not classifier <= kept:
            why = "no pretrained= weights were given" if kept is None else "the classifier was started afresh"
            raise ConfigError(
                f"finetune.distillation keeps a fine-tune's outputs near the pretrained model's, and {why}: give "
                "pretrained=<weights> with their own classifier, or finetune.distillation=0"
            )
        module.set_teacher(self.start)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Adds the L2-SP gradient l2sp * (w - w_start) (Lightning has unscaled mixed-precision gradients here)."""
        if self.l2sp <= 0:
            return
        with torch.no_grad():
            for parameter, start in self.anchors:
                if parameter.grad is not None:
                    parameter.grad.add_(parameter - start, alpha=self.l2sp)

    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start} if self.start is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start = state_dict.get("start")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint_callback = trainer.checkpoint_callback
        best = checkpoint_callback.best_model_path if checkpoint_callback is not None else ""
        if self.start is None or not best or not isinstance(pl_module, LivenessModule):
            return
        checkpoint = read_checkpoint(best)
        self.moved = {"fine-tuned": self.distance(checkpoint["state_dict"])}
        if self.keep is not None:
            self.interpolation = self.choose_on_keep(pl_module, checkpoint["state_dict"])
            pl_module.load_state_dict(checkpoint["state_dict"])
        if self.interpolation >= 1:
            log.info(
                "%s moved %.2f%% from the weights the fit started from", Path(best).name, 100 * self.moved["fine-tuned"]
            )
            return
        checkpoint["state_dict"] = interpolate(self.start, checkpoint["state_dict"], self.interpolation)
        self.moved["interpolated"] = self.distance(checkpoint["state_dict"])
        pl_module.load_state_dict(checkpoint["state_dict"])
        threshold, auroc = self.validate(trainer, pl_module)
        checkpoint[THRESHOLD_KEY] = threshold.to_dict()
        path = Path(best).with_name(INTERPOLATED_NAME)
        if trainer.is_global_zero:
            torch.save(checkpoint, path)
        trainer.strategy.barrier("fas_pretrained_anchor")
        log.info(
            "WiSE-FT: %s = %.2f x fine-tuned %s + %.2f x the weights the fit started from (moved %.2f%%, "
            "the fine-tuned ones %.2f%%); val ROC-AUC %s, threshold %s re-chosen on it",
            path,
            self.interpolation,
            Path(best).name,
            1 - self.interpolation,
            100 * self.moved["interpolated"],
            100 * self.moved["fine-tuned"],
            f"{auroc:.4f}" if auroc is not None else "undefined",
            f"{threshold.value:.4f}" if threshold.value is not None else "undefined",
        )
        checkpoint_callback.best_model_path = str(path)

    def distance(self, state_dict: dict[str, torch.Tensor]) -> float:
        """How far `state_dict`'s weights moved from the start: ||w - w_start|| / ||w_start|| over the
        parameters both hold (BatchNorm statistics left out)."""
        moved = total = 0.0
        for key, start in self.start.items():
            value = state_dict.get(key)
            if key in self.parameter_names and value is not None and value.shape == start.shape:
                moved += float((value.float() - start.float()).square().sum())
                total += float(start.float().square().sum())
        return (moved / total) ** 0.5 if total else 0.0

    def choose_on_keep(self, module: LivenessModule, tuned: dict[str, torch.Tensor]) -> float:
        """Score the start (a = 0) and each candidate on the keep data's test split; `choose_interpolation`."""
        loader = self.keep.test_dataloader()
        for weight in [0.0, *self.candidates]:
            module.load_state_dict(interpolate(self.start, tuned, weight))
            scores = score(module, loader)
            self.keep_auroc[weight] = roc_auc(scores.score, scores.is_spoof)
            log.info(
                "WiSE-FT a = %.2f: ROC-AUC %s on %s (what the model must keep)%s",
                weight,
                format_auroc(self.keep_auroc[weight]),
                self.keep.describe(),
                " -- the weights the fit started from" if weight == 0 else "",
            )
        chosen = choose_interpolation(
            {a: self.keep_auroc[a] for a in self.candidates}, self.keep_auroc[0.0], self.keep_tolerance
        )
        log.info(
            "WiSE-FT: a = %.2f chosen of %s on %s (ROC-AUC %s; the start's %s, tolerance %.3f)",
            chosen,
            self.candidates,
            self.keep.describe(),
            format_auroc(self.keep_auroc[chosen]),
            format_auroc(self.keep_auroc[0.0]),
            self.keep_tolerance,
        )
        return chosen

    @torch.no_grad()
    def validate(self, trainer: L.Trainer, module: LivenessModule) -> tuple[Any, float | None]:
        """The EER threshold and ROC-AUC of the interpolated weights on the validation split (as training's)."""
        scores = score(module, trainer.datamodule.val_dataloader())
        return choose_threshold("eer", scores, split="val"), roc_auc(scores.score, scores.is_spoof)


def format_auroc(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def is_weight(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value <= 1


def choose_interpolation(keep_auroc: dict[float, float | None], start_auroc: float | None, tolerance: float) -> float:
    """The largest weight whose ROC-AUC on the keep data is at least the start's minus `tolerance`; the smallest
    weight when none is (with a warning), the largest when the keep data cannot define ROC-AUC (one class only)."""
    weights = sorted(keep_auroc)
    if start_auroc is None or any(value is None for value in keep_auroc.values()):
        log.warning(
            "finetune.keep has live or spoof samples only: ROC-AUC is undefined there, a = %.2f kept", weights[-1]
        )
        return weights[-1]
    kept = [a for a in weights if keep_auroc[a] >= start_auroc - tolerance]
    if not kept:
        log.warning(
            "WiSE-FT: every a of %s loses more than %.3f ROC-AUC on finetune.keep (the start: %.4f); the smallest, "
            "%.2f, is kept: try smaller ones, more frozen stages or finetune.l2sp",
            weights,
            tolerance,
            start_auroc,
            weights[0],
        )
        return weights[0]
    return kept[-1]


@torch.no_grad()
def score(module: LivenessModule, loader: Iterable[dict[str, Any]]) -> Scores:
    """The module's spoof scores on every batch of `loader`, in eval mode."""
    collector = ScoreCollector(sync_on_compute=False)
    was_training = module.training
    module.eval()
    for batch in loader:
        batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        scores = module.spoof_scores(module(batch["image"]))
        collector.update(scores, batch["spoof_type"], batch["illumination"], batch["environment"], batch.get("source"))
    module.train(was_training)
    return collector.compute()
