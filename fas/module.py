"""The LightningModule: backbone + optional Fourier head, the combined loss and the PAD metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, MulticlassAccuracy

from fas.convention import ClassScheme, InputConvention
from fas.losses import LivenessLoss, fourier_target, to_gray_255
from fas.models import FTHead, build_backbone

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class LivenessModule(L.LightningModule):
    """Trains a registered backbone with (1 - ft_weight) * CE + ft_weight * FT-MSE.

    `convention` and `class_scheme` (plain dicts, so they live in the checkpoint's hyperparameters)
    come from the data config; export and evaluation read them back from the checkpoint.
    The spoof score used by every metric is 1 - softmax[real_class_index].
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
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.convention = InputConvention.from_dict(convention)
        self.class_scheme = ClassScheme.from_dict(class_scheme)
        self.backbone = build_backbone(
            backbone,
            input_size=self.convention.input_size,
            num_classes=self.class_scheme.num_classes,
            embedding_size=embedding_size,
            dropout=dropout,
        )
        self.ft_head = FTHead(self.backbone.feature_channels) if ft_weight > 0 else None
        self.criterion = LivenessLoss(ft_weight, label_smoothing)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.val_metrics = self._metrics("val/")
        self.test_metrics = self._metrics("test/")

    def _metrics(self, prefix: str) -> MetricCollection:
        return MetricCollection(
            {
                "auroc": BinaryAUROC(),
                "accuracy": MulticlassAccuracy(self.class_scheme.num_classes, average="micro"),
                "live_spoof_accuracy": BinaryAccuracy(),
            },
            prefix=prefix,
        )

    def forward(self, images: Tensor) -> Tensor:
        """Logits of the backbone alone (what export keeps)."""
        return self.backbone(self._layout(images))

    def _layout(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def spoof_scores(self, logits: Tensor) -> Tensor:
        return 1.0 - logits.float().softmax(dim=1)[:, self.class_scheme.real_class_index]

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
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(images))
        return losses["loss"]

    def _evaluate(self, batch: dict[str, Tensor], metrics: MetricCollection) -> Tensor:
        logits = self(batch["image"])
        targets = batch["target"]
        is_spoof = (targets != self.class_scheme.real_class_index).long()
        predicted_spoof = (logits.argmax(dim=1) != self.class_scheme.real_class_index).long()
        metrics["auroc"].update(self.spoof_scores(logits), is_spoof)
        metrics["accuracy"].update(logits, targets)
        metrics["live_spoof_accuracy"].update(predicted_spoof, is_spoof)
        return logits

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_factory is None:
            raise RuntimeError("LivenessModule was built without an optimizer; pass model.optimizer in the config")
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}
