"""The LightningModule: backbone + optional Fourier head, the combined loss and the PAD metrics (`fas.metrics`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor

from fas.convention import ClassScheme, InputConvention
from fas.errors import ConfigError, TrainingDivergedError
from fas.losses import LivenessLoss, distillation_loss, fourier_target, to_gray_255
from fas.metrics import (
    SOURCE_KEYS,
    PadResult,
    ScoreCollector,
    Scores,
    ThresholdChoice,
    choose_threshold,
    pad_metrics,
    pad_metrics_per_source,
    spoof_scores,
)
from fas.models import FTHead, build_backbone

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
VAL_METRICS = ("auroc", "eer", "average_precision", "threshold")
THRESHOLD_KEY = "fas_threshold"  # read back by fas.inference.backends.recorded_threshold


class LivenessModule(L.LightningModule):
    """Trains a registered backbone with (1 - ft_weight) * CE + ft_weight * FT-MSE.

    `convention` and `class_scheme` (plain dicts, so they live in the checkpoint's hyperparameters)
    come from the data config; export and evaluation read them back from the checkpoint.
    The spoof score used by every metric is 1 - softmax[real_class_index].

    Each validation epoch chooses the decision threshold at its EER point; checkpoints record it, and the
    test step applies it unchanged. After `trainer.test`, `test_evaluation` holds the test scores and metrics.

    For fine-tuning (`finetune.*` in `configs/train.yaml`): the first `frozen_stages` of the backbone's `stages`
    keep their weights and BatchNorm statistics (`frozen_batchnorm`: every BatchNorm of the backbone keeps its
    statistics, scale and shift), and stage i of n learns at lr * stage_lr_decay ** (n - 1 - i) (the classifier
    at lr, earlier stages slower; the FT head at lr). With `distillation` > 0 (learning without forgetting) the
    loss adds distillation x `distillation_loss` toward the logits of a frozen teacher, the weights the fine-tune
    started from (`set_teacher`, called by `fas.finetune.PretrainedAnchor`).
    """

    def __init__(
        self,
        backbone: str,
        convention: dict[str, Any],
        class_scheme: dict[str, Any],
        ft_weight: float = 0.5,
        embedding_size: int = 128,
        dropout: float = 0.2,
        label_smoothing: float = 0.0,
        channels_last: bool = True,
        seed: int = 0,
        frozen_stages: int = 0,
        stage_lr_decay: float = 1.0,
        frozen_batchnorm: bool = False,
        distillation: float = 0.0,
        distillation_temperature: float = 2.0,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.convention = InputConvention.from_dict(convention)
        self.class_scheme = ClassScheme.from_dict(class_scheme)
        # Plain dicts (not Hydra's DictConfig) so checkpoints load with torch.load(weights_only=True).
        convention, class_scheme = self.convention.to_dict(), self.class_scheme.to_dict()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.backbone = build_backbone(
            backbone,
            input_size=self.convention.input_size,
            num_classes=self.class_scheme.num_classes,
            embedding_size=embedding_size,
            dropout=dropout,
        )
        self.ft_head = FTHead(self.backbone.feature_channels) if ft_weight > 0 else None
        if not 0 < stage_lr_decay <= 1:
            raise ConfigError(f"finetune.stage_lr_decay={stage_lr_decay!r}: give a factor in (0, 1] (1: one lr)")
        self.stage_modules = backbone_stages(self.backbone, frozen_stages)
        self.frozen_modules = [m for stage in self.stage_modules[:frozen_stages] for m in stage]
        if frozen_batchnorm:  # every BatchNorm keeps its statistics, scale and shift; the convolutions still learn
            self.frozen_modules += [m for m in self.backbone.modules() if isinstance(m, BATCH_NORMS)]
        for module in self.frozen_modules:  # Lightning keeps each submodule's mode as it finds it
            module.requires_grad_(False).eval()
        self.criterion = LivenessLoss(ft_weight, label_smoothing)
        if isinstance(distillation, bool) or not isinstance(distillation, int | float) or distillation < 0:
            raise ConfigError(f"finetune.distillation={distillation!r}: give a weight >= 0 (0: off)")
        if isinstance(distillation_temperature, bool) or not (
            isinstance(distillation_temperature, int | float) and distillation_temperature > 0
        ):
            raise ConfigError(f"finetune.distillation_temperature={distillation_temperature!r}: give a number > 0")
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        # Every rank validates and tests the whole split (see FaceDataModule), so scores are not gathered.
        self.val_scores = ScoreCollector(sync_on_compute=False)
        self.test_scores = ScoreCollector(sync_on_compute=False)
        self.threshold = ThresholdChoice("eer", None, "val", "no validation epoch has run")
        self.test_evaluation: tuple[Scores, PadResult, dict[str, PadResult]] | None = None
        # State-dict keys whose values came from `pretrained=` weights (set by fas.train); fas.finetune keeps
        # only those near their start (a re-initialised classifier or the FT head learns freely).
        self.pretrained_keys: set[str] | None = None
        # The frozen backbone `distillation` pulls toward; set through __dict__ so that nn.Module does not register
        # it as a submodule: it stays out of the state dict, the checkpoints and the optimizer.
        self.__dict__["teacher"] = None

    def set_teacher(self, state_dict: dict[str, Tensor]) -> None:
        """The teacher of `distillation`: a frozen copy of the backbone holding `state_dict`'s `backbone.*`
        weights (the module's own keys), on the module's device."""
        teacher = copy.deepcopy(self.backbone)
        weights = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
        teacher.load_state_dict(weights, strict=False)
        self.__dict__["teacher"] = teacher.to(self.device).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LivenessModule:
        """Frozen stages (and with `frozen_batchnorm` every BatchNorm) stay in eval mode: their BatchNorm layers
        keep the pretrained statistics."""
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """Logits of the backbone alone (what export keeps)."""
        return self.backbone(self._layout(images))

    def _layout(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def spoof_scores(self, logits: Tensor) -> Tensor:
        return spoof_scores(logits, self.class_scheme.real_class_index)

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Dropout draws from torch's global RNG: reseed it from (seed, epoch) at each epoch's first batch
        so that each epoch, like the data order and augmentation (`EpochSeededSampler`), is a pure
        function of them and a run resumed from an epoch-end checkpoint retraces an uninterrupted one.
        (The first batch, not epoch start: Lightning creates the loader iterator, which draws from the
        same RNG, before `on_train_epoch_start` on a resumed run and after it otherwise.)"""
        if batch_idx == 0:
            torch.manual_seed(self.hparams.seed * 1_000_003 + self.current_epoch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images = self._layout(batch["image"])
        features = self.backbone.features(images)
        logits = self.backbone.classify(features)
        ft_map = ft_target = None
        if self.ft_head is not None:
            ft_map = self.ft_head(features)
            with torch.no_grad():
                ft_target = fourier_target(to_gray_255(batch["image"], self.convention), tuple(ft_map.shape[-2:]))
        losses = self.criterion(logits, batch["target"], ft_map, ft_target)
        if self.hparams.distillation > 0:
            if self.teacher is None:
                raise ConfigError(
                    "finetune.distillation pulls toward the model a fine-tune starts from: it needs "
                    "pretrained=<weights> and the pretrained_anchor callback (callbacks=default), which hands it over"
                )
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            losses["loss_distillation"] = distillation_loss(
                logits, teacher_logits, self.hparams.distillation_temperature
            )
            losses["loss"] = losses["loss"] + self.hparams.distillation * losses["loss_distillation"]
        if not torch.isfinite(losses["loss"]):  # stop now, not with NaN scores at the next validation
            raise self.diverged(losses)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(images))
        return losses["loss"]

    def diverged(self, losses: dict[str, Tensor]) -> TrainingDivergedError:
        lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        shown = ", ".join(f"{name} {float(value):.4g}" for name, value in losses.items())
        hint = (
            "; finetune.frozen_batchnorm=true leaves nothing to rescale what the convolutions learn: try without it"
            if self.hparams.frozen_batchnorm
            else ""
        )
        return TrainingDivergedError(
            f"the training loss is no longer a number at epoch {self.current_epoch}, step {self.global_step} "
            f"({shown}): the weights diverged; lower the learning rate (model.optimizer.lr, now {lr}){hint}"
        )

    def _score(self, batch: dict[str, Tensor], collector: ScoreCollector) -> None:
        scores = self.spoof_scores(self(batch["image"]))
        collector.update(scores, batch["spoof_type"], batch["illumination"], batch["environment"], batch.get("source"))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._score(batch, self.val_scores)

    def on_validation_epoch_end(self) -> None:
        if self._trainer is not None and self.trainer.sanity_checking:
            self.val_scores.reset()  # a few batches to catch crashes early: no threshold is chosen on them
            return
        scores = self.val_scores.compute()
        self.val_scores.reset()
        self.threshold = choose_threshold("eer", scores, split="val")
        metrics = pad_metrics(scores, self.threshold.value, self.attack_types).metrics
        self.log_dict({f"val/{key}": _loggable(metrics[key]) for key in VAL_METRICS}, prog_bar=True)
        for source, result in pad_metrics_per_source(
            scores, self.threshold.value, self.attack_types, self.sources
        ).items():
            self.log_dict({f"val/{source}/{key}": _loggable(result.metrics[key]) for key in VAL_METRICS})

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._score(batch, self.test_scores)

    def on_test_epoch_end(self) -> None:
        scores = self.test_scores.compute()
        self.test_scores.reset()
        result = pad_metrics(scores, self.threshold.value, self.attack_types)
        per_source = pad_metrics_per_source(scores, self.threshold.value, self.attack_types, self.sources)
        self.test_evaluation = (scores, result, per_source)
        self.log_dict({f"test/{key}": _loggable(value) for key, value in result.metrics.items()})
        for source, source_result in per_source.items():
            self.log_dict({f"test/{source}/{key}": _loggable(source_result.metrics[key]) for key in SOURCE_KEYS})

    @property
    def sources(self) -> list[str]:
        """The names of the datamodule's data sources (per-source metrics when there are several)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return list(getattr(datamodule, "source_names", []))

    @property
    def attack_types(self) -> list[int]:
        return [t for t in self.class_scheme.spoof_type_classes if t != 0]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[THRESHOLD_KEY] = self.threshold.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if THRESHOLD_KEY in checkpoint:
            self.threshold = ThresholdChoice(**checkpoint[THRESHOLD_KEY])

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is None:
            raise RuntimeError("LivenessModule was built without an optimizer; pass model.optimizer in the config")
        optimizer = self.optimizer_factory(params=self.param_groups())
        for group in optimizer.param_groups:  # before the scheduler records each group's initial lr
            group["lr"] *= group["lr_scale"]
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters grouped by lr multiplier (`lr_scale`, see the class docstring)."""
        count = len(self.stage_modules)
        scale_of = {
            id(parameter): self.hparams.stage_lr_decay ** (count - 1 - index)
            for index, stage in enumerate(self.stage_modules)
            for module in stage
            for parameter in module.parameters()
        }
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for parameter in self.parameters():
            if parameter.requires_grad:
                groups.setdefault(scale_of.get(id(parameter), 1.0), []).append(parameter)
        return [{"params": params, "lr_scale": scale} for scale, params in groups.items()]


def backbone_stages(backbone: torch.nn.Module, frozen_stages: int) -> list[list[torch.nn.Module]]:
    """The backbone's child modules by stage (its `stages` names), checking `frozen_stages` against them."""
    stages = [[getattr(backbone, name) for name in names] for names in backbone.stages]
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not 0 <= frozen_stages < len(stages):
        raise ConfigError(
            f"finetune.frozen_stages={frozen_stages!r}: give 0 to {len(stages) - 1} "
            f"(the backbone has {len(stages)} stages; the last one, the classifier, always learns)"
        )
    return stages


def _loggable(value: float | None) -> float:
    """Undefined metrics are logged as NaN (the checkpoint callback ranks NaN last)."""
    return float("nan") if value is None else value
