"""`train(cfg)`: data -> model -> fit -> test on the best checkpoint -> report. Used by `train.py`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from fas.convention import ModelInfo
from fas.data.datamodule import FaceDataModule, datamodule_for, instantiate_datamodule
from fas.detect import detector_factory
from fas.download import resolve_model_file
from fas.errors import ConfigError
from fas.evaluate import score_loader
from fas.export.callback import ModelExport
from fas.finetune import PretrainedAnchor
from fas.hydra_utils import check_config, close_loggers, instantiate_group, register_resolvers, silence_library_noise
from fas.inference.backends import load_backend
from fas.loggers import ContinuingCSVLogger
from fas.media import set_max_pixels
from fas.metrics import pad_metrics, pad_metrics_per_source
from fas.models.checkpoint import check_resume_checkpoint
from fas.models.pretrained import load_pretrained
from fas.module import LivenessModule
from fas.report import ModelEvaluation, flat_metrics, log_to_wandb, write_report

log = logging.getLogger(__name__)

LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")


def train(cfg: DictConfig) -> tuple[float | None, dict[str, Any]]:
    """Train, test the best checkpoint and write the report (`report/metrics.json`, `report.md`, `report.html`).

    Returns the value of `cfg.optimized_metric` (for sweepers) and all test metrics.
    """
    register_resolvers()
    silence_library_noise()
    check_config(cfg)
    set_max_pixels(cfg.get("max_image_pixels"))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_datamodule(cfg.data, detector=detector_factory(cfg.get("detector")))
    model: LivenessModule = hydra.utils.instantiate(
        cfg.model,
        convention=datamodule.convention.to_dict(),
        class_scheme=datamodule.class_scheme.to_dict(),
    )
    if model.frozen_modules:  # finetune.frozen_stages keeps them in eval mode on purpose: not worth a warning
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    if cfg.get("pretrained"):
        from_file = load_pretrained(
            model.backbone,
            resolve_model_file(cfg.pretrained),
            cfg.model.backbone,
            datamodule.convention,
            reinit_classifier=cfg.get("pretrained_reinit_classifier", False),
        )
        model.pretrained_keys = {f"backbone.{key}" for key in from_file}
    ckpt_path = cfg.get("ckpt_path")
    callbacks: list[Callback] = instantiate_group(cfg.get("callbacks"))
    attach_keep_data(cfg, callbacks, datamodule)
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    if ckpt_path and ckpt_path not in LIGHTNING_CKPT_ALIASES:
        prepare_resume(ckpt_path, model, loggers, cfg.model.backbone)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        return fit_test_and_report(cfg, trainer, model, datamodule, ckpt_path)
    finally:
        close_loggers(loggers)


def prepare_resume(ckpt_path: str, model: LivenessModule, loggers: list[Logger], backbone: str) -> None:
    """Check the checkpoint fits the model, note the resume in the run's log, continue its CSV log."""
    checkpoint = check_resume_checkpoint(model, ckpt_path, backbone)
    step = int(checkpoint.get("global_step", 0))
    log.info("Resuming from %s (saved in epoch %s at step %d)", ckpt_path, checkpoint.get("epoch"), step)
    for logger in loggers:
        if isinstance(logger, ContinuingCSVLogger):
            logger.continue_from(step)


def fit_test_and_report(
    cfg: DictConfig, trainer: L.Trainer, model: LivenessModule, datamodule: FaceDataModule, ckpt_path: str | None
) -> tuple[float | None, dict[str, Any]]:
    # weights_only: Lightning would otherwise leave the choice to torch's default; a checkpoint must never run code.
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C (SIGINT) into SystemExit(1)
        log.warning(
            "Interrupted in epoch %d at step %d. Resume with: python train.py <the same overrides> "
            "ckpt_path=%s hydra.run.dir=%s",
            trainer.current_epoch,
            trainer.global_step,
            Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
            cfg.paths.output_dir,
        )
        raise
    best = best_checkpoint(trainer)
    trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    validation = best_validation_score(trainer)
    metrics.update(validation)

    value = metrics.get(cfg.get("optimized_metric"))
    value = float(value) if value is not None else None
    if not trainer.is_global_zero:  # under DDP every rank tested the whole split; rank 0 reports
        return value, metrics

    output_dir = Path(cfg.paths.output_dir)
    scores, result, per_source = model.test_evaluation
    info = ModelInfo(model.convention, model.class_scheme, cfg.model.backbone)
    name = Path(best).name if best else "final weights"
    evaluation = ModelEvaluation(name, best, info, model.threshold, scores, result, per_source, datamodule.describe())
    evaluations = [evaluation, *int8_evaluation(trainer, model, datamodule)]
    scopes = ["test", "int8/test"][: len(evaluations)]
    int8_metrics = {k: v for k, v in flat_metrics(evaluations, "test", scopes).items() if k.startswith("int8/")}
    metrics.update({k: v for k, v in int8_metrics.items() if v is not None})
    anchor = next((c for c in trainer.callbacks if isinstance(c, PretrainedAnchor) and c.moved), None)
    context, finetune_metrics = finetune_summary(anchor) if anchor is not None else ({}, {})
    extra_metrics = {**validation, **finetune_metrics}
    report = write_report(
        output_dir / "report",
        evaluations,
        split="test",
        extra_metrics=extra_metrics,
        metric_scopes=scopes,
        data_root=datamodule.describe(),
        **context,
    )
    log_to_wandb(trainer.loggers, evaluations, report, prefix="test")
    for logger in trainer.loggers:
        logger.log_metrics({k: v for k, v in int8_metrics.items() if v is not None})
    log.info("Test metrics: %s", {k: round(float(v), 4) for k, v in metrics.items()})
    log.info("Run directory: %s", output_dir)
    log.info("Best checkpoint: %s%s", best or "none (no ModelCheckpoint callback)", resumed_note(best, output_dir))
    log.info("Report: %s (and report.md, report.html beside it)", report.metrics)
    for callback in trainer.callbacks:
        if isinstance(callback, ModelExport) and callback.result is not None:
            log.info("Export: %s", callback.result.summary())
    return value, metrics


def int8_evaluation(trainer: L.Trainer, model: LivenessModule, datamodule: FaceDataModule) -> list[ModelEvaluation]:
    """The INT8 export scored on the same test crops at the checkpoint's threshold (what ships, measured as the
    checkpoint is), as a one-item list; empty when no INT8 file was exported."""
    export = next((c for c in trainer.callbacks if isinstance(c, ModelExport) and c.result is not None), None)
    if export is None or export.result.int8 is None:
        return []
    path = export.result.int8
    backend = load_backend(path)
    scores = score_loader(backend, datamodule.test_dataloader(), f"{path.name} test")
    attack_types = model.attack_types
    result = pad_metrics(scores, model.threshold.value, attack_types)
    per_source = pad_metrics_per_source(scores, model.threshold.value, attack_types, datamodule.source_names)
    return [
        ModelEvaluation(
            path.name, str(path), backend.info, model.threshold, scores, result, per_source, datamodule.describe()
        )
    ]


def attach_keep_data(cfg: DictConfig, callbacks: list[Callback], datamodule: FaceDataModule) -> None:
    """`finetune.keep`: the data standing for what a fine-tune must keep, cropped like the training data and
    prepared now (a missing folder fails before the fit), for `PretrainedAnchor` to choose the WiSE-FT weight on."""
    keep = cfg.get("finetune", {}).get("keep")
    if not keep:
        return
    anchor = next((c for c in callbacks if isinstance(c, PretrainedAnchor)), None)
    if anchor is None or not cfg.get("pretrained"):
        raise ConfigError(
            "finetune.keep chooses how far a fine-tune of pretrained= weights may move; it needs pretrained= and "
            "the pretrained_anchor callback (configs/callbacks/default.yaml)"
        )
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.update(sources={"keep": OmegaConf.to_container(keep, resolve=True)}, unsplit="test")
    info = ModelInfo(datamodule.convention, datamodule.class_scheme, cfg.model.backbone)
    anchor.keep = datamodule_for(OmegaConf.create(data), info, cfg.get("detector"), needed_splits=("test",))
    anchor.keep.prepare_data()
    anchor.keep.setup("test")


def finetune_summary(anchor: PretrainedAnchor) -> tuple[dict[str, str], dict[str, float]]:
    """What `PretrainedAnchor` measured, in words for the report and as metrics (`finetune/*`)."""
    parts = [f"{kind} weights {100 * value:.2f}%" for kind, value in anchor.moved.items()]
    notes = {
        "moved_from_pretrained": ", ".join(parts)
        + " (||w - w_pretrained|| / ||w_pretrained||; the tested ones are the last)"
    }
    metrics = {f"finetune/moved_{k.replace('-', '_')}": v for k, v in anchor.moved.items()}
    if anchor.keep_auroc:
        shown = ", ".join(
            f"a = {a:.2f}: {'undefined' if v is None else f'{v:.4f}'}" for a, v in sorted(anchor.keep_auroc.items())
        )
        notes["finetune_keep"] = (
            f"ROC-AUC on {anchor.keep.describe()} (finetune.keep; a = 0: the pretrained weights) {shown}; "
            f"a = {anchor.interpolation:.2f} tested"
        )
        metrics["finetune/interpolation"] = anchor.interpolation
        for a, value in anchor.keep_auroc.items():
            if value is not None:
                metrics[f"finetune/keep_auroc_a{a:.2f}"] = value
    return notes, metrics


def resumed_note(best: str | None, output_dir: Path) -> str:
    """Where a best checkpoint outside this run's folder comes from: the run this one resumed."""
    if best and not Path(best).resolve().is_relative_to(output_dir.resolve()):
        return " (written by the run this one resumed from; no later epoch of this run did better)"
    return ""


def best_validation_score(trainer: L.Trainer) -> dict[str, float]:
    """The monitored validation metric of the checkpoint that was tested (e.g. the best `val/auroc`)."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor and callback.best_model_score is not None:
            return {callback.monitor: float(callback.best_model_score)}
    return {}


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """The best checkpoint of the monitoring ModelCheckpoint (or of any, when none monitors a metric)."""
    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.best_model_path]
    monitoring = [c for c in checkpoints if c.monitor]
    chosen = monitoring or checkpoints
    return chosen[0].best_model_path if chosen else None
