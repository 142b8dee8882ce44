"""`evaluate(cfg)`: model files -> scores on the validation and test splits -> PAD metrics -> report.

Every model is loaded through `fas.inference.backends.load_backend`, so a Lightning checkpoint, its ONNX
export (FP32 or INT8) and imported published weights are scored by one code path. The evaluation data is
built with each model's own recorded input convention (crop rule, size, colour order, scale); the
decision threshold is chosen on the validation split and applied unchanged to the evaluated split.
`fuse=[[a,b]]` adds the models fused as Silent-Face's app fuses its pair (`fuse_models`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from fas.convention import ClassScheme, ModelInfo
from fas.data.datamodule import FaceDataModule, datamodule_for
from fas.data.datasets import single_threaded_opencv
from fas.data.sample import UNKNOWN_ATTACK
from fas.data.stress import CaptureChange, capture_changes, stressed_split
from fas.errors import ConfigError, FasError
from fas.hydra_utils import (
    check_config,
    close_loggers,
    instantiate_group,
    named_convention,
    register_resolvers,
    silence_library_noise,
)
from fas.inference.backends import Backend, load_backend
from fas.media import set_max_pixels
from fas.metrics import (
    Scores,
    ThresholdChoice,
    UndefinedMetricWarning,
    choose_threshold,
    pad_metrics,
    pad_metrics_per_source,
    sources_present,
    spoof_scores,
    stress_metrics,
    video_scores,
)
from fas.progress import ProgressLog
from fas.report import (
    LABELS,
    ModelEvaluation,
    ReportFiles,
    format_metric,
    log_scalars,
    log_to_wandb,
    unique_names,
    write_report,
)

log = logging.getLogger(__name__)

NO_VALIDATION = (
    "the data has no validation part, so the threshold was chosen on the evaluated data itself (optimistic); "
    "give the data a val/ part, or set threshold.rule=fixed threshold.value=<score>"
)
CONSOLE_KEYS = ("auroc", "eer", "apcer", "bpcer", "acer", "hter", "bpcer_at_apcer_5pct", "tpr_at_fpr_1e-3")


class ModelInputError(FasError, RuntimeError):
    """A model rejected input built from its own recorded convention."""


def model_paths(ckpt_path: Any) -> list[str]:
    """`ckpt_path=a.ckpt` or `ckpt_path=[a.ckpt,b.onnx]` -> list of paths."""
    if ckpt_path is None:
        raise ConfigError("ckpt_path is not set: pass ckpt_path=<model.ckpt|model.onnx> or ckpt_path=[a.ckpt,b.onnx]")
    paths = list(ckpt_path) if isinstance(ckpt_path, ListConfig | list | tuple) else [ckpt_path]
    if not paths:
        raise ConfigError("ckpt_path is an empty list: give at least one model file")
    return [str(p) for p in paths]


def evaluate(cfg: DictConfig) -> ReportFiles:
    """Score every model of `cfg.ckpt_path` and write one report comparing them."""
    paths = model_paths(None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path)
    register_resolvers()
    silence_library_noise()
    check_config(cfg)
    set_max_pixels(cfg.get("max_image_pixels"))
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r} cannot be evaluated; use split=test or split=val")
    convention = named_convention(cfg)
    backends = [load_backend(path, cfg.device, cfg.get("threads"), convention) for path in paths]
    for backend, path in zip(backends, paths, strict=True):
        check_model_io(backend, path)
    groups = fused_groups(cfg.get("fuse"), paths)
    scored = [
        evaluate_model(backend, name, path, cfg)
        for backend, name, path in zip(backends, unique_names(paths), paths, strict=True)
    ]
    evaluations = [model.evaluation for model in scored]
    evaluations += [fuse_models([scored[i] for i in group], cfg) for group in groups]
    output_dir = Path(cfg.paths.output_dir)
    files = write_report(
        output_dir / "report",
        evaluations,
        split=cfg.split,
        data_root=evaluations[0].data,
        threshold_rule=cfg.threshold.rule,
    )
    loggers = instantiate_group(cfg.get("logger"))
    log_scalars(loggers, evaluations, split=cfg.split)
    log_to_wandb(loggers, evaluations, files, prefix=cfg.split)
    for logger in loggers:
        logger.finalize("success")
    close_loggers(loggers)
    for e in evaluations:
        shown = " | ".join(f"{LABELS[k]} {format_metric(k, e.result.metrics[k])}" for k in CONSOLE_KEYS)
        log.info("%s: %s", e.name, shown)
    log.info("Report: %s (and report.md, report.html beside it)", files.metrics)
    return files


@dataclass(frozen=True)
class ScoredModel:
    """One model's evaluation and what fusing it with others needs: which face each score belongs to
    ((source index, `Sample.key`), per split) and its validation scores when they were scored."""

    evaluation: ModelEvaluation
    keys: dict[str, list[tuple[int, str]]]
    val_scores: Scores | None
    source_names: list[str]
    attack_types: list[int]


def evaluate_model(backend: Backend, name: str, path: str, cfg: DictConfig) -> ScoredModel:
    """Score one model on the validation split (for the threshold) and on `cfg.split`; with several data
    sources, each source also alone (the cross-dataset table), at its own threshold where the rule chooses one."""
    # The config's class scheme, else the model's own, keeping attacks of unknown type it has no class for
    chosen_scheme = (
        hydra.utils.instantiate(cfg.class_scheme)
        if cfg.get("class_scheme")
        else scoring_scheme(backend.info.class_scheme)
    )
    needs_val = (
        cfg.threshold.rule in ("eer", "apcer")
        or (cfg.threshold.rule == "model" and not backend.info.threshold)
        or bool(cfg.get("fuse"))  # a fused score's threshold is chosen on validation data
    )
    needed = (cfg.split, "val") if needs_val else (cfg.split,)  # only what is scored is detected and cropped
    datamodule = datamodule_for(cfg.data, backend.info, cfg.get("detector"), chosen_scheme, needed)
    datamodule.prepare_data()
    datamodule.setup("test")
    scores = score_loader(backend, split_loader(datamodule, cfg.split), f"{name} {cfg.split}")
    threshold, val_scores = decision_threshold(backend, name, path, datamodule, cfg, scores)
    if val_scores is None and needs_val and len(datamodule.splits["val"]):
        val_scores = score_loader(backend, datamodule.val_dataloader(), f"{name} val")
    attack_types = [t for t in datamodule.class_scheme.spoof_type_classes if t != 0]
    evaluation = model_evaluation(
        name,
        str(path),
        backend.info,
        threshold,
        scores,
        val_scores,
        datamodule.source_names,
        attack_types,
        datamodule.describe(),
        datamodule.skipped,
        cfg,
    )
    videos = video_scores(scores, [sample.video for sample in datamodule.samples[cfg.split]])
    if videos is not None:
        with warnings.catch_warnings():  # what the videos leave undefined, the report marks (the frames warned)
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            evaluation = replace(evaluation, video=pad_metrics(videos, threshold.value, attack_types))
    stress_preset = cfg.get("stress")
    changes = capture_changes(hydra.utils.instantiate(stress_preset.changes, _convert_="all")) if stress_preset else []
    if changes:
        stress = stress_evaluation(backend, name, datamodule, cfg.split, changes, scores, threshold.value, attack_types)
        evaluation = replace(evaluation, stress=stress)
    keys = {split: datamodule.splits[split].record_keys() for split in needed}
    return ScoredModel(evaluation, keys, val_scores, datamodule.source_names, attack_types)


def scoring_scheme(scheme: ClassScheme) -> ClassScheme:
    """A model's class scheme for scoring it: attacks of unknown type (a bare `spoof/` folder) count under its
    first attack class where it has no class for them (Silent-Face's print / live / replay), so its live-vs-spoof
    score (1 - p(live)) is measured on every attack, as for any model; per-class figures then count them there."""
    if UNKNOWN_ATTACK in scheme.spoof_type_classes or not scheme.spoof_type_classes:
        return scheme
    first_attack = min(c for c in range(scheme.num_classes) if c != scheme.real_class_index)
    return replace(scheme, spoof_type_classes={**scheme.spoof_type_classes, UNKNOWN_ATTACK: first_attack})


def stress_evaluation(
    backend: Backend,
    name: str,
    datamodule: FaceDataModule,
    split: str,
    changes: list[CaptureChange],
    clean: Scores,
    threshold: float | None,
    attack_types: list[int],
) -> dict[str, dict[str, float | None]]:
    """The model's figures on the split's faces under each capture change (`configs/stress/`), read from their
    files again (faces found once: the boxes are the clean run's), against its clean scores."""
    results = {}
    for change in changes:
        dataset = stressed_split(datamodule.samples[split], datamodule.source_names, datamodule.convention, change)
        loader = DataLoader(
            dataset,
            batch_size=datamodule.eval_batch_size,
            num_workers=datamodule.num_workers,
            worker_init_fn=single_threaded_opencv,
        )
        changed = score_loader(backend, loader, f"{name} {split} under {change.name}")
        results[change.name] = stress_metrics(clean, changed, threshold, attack_types)
    return results


def model_evaluation(
    name: str,
    path: str | None,
    info: ModelInfo,
    threshold: ThresholdChoice,
    scores: Scores,
    val_scores: Scores | None,
    source_names: list[str],
    attack_types: list[int],
    data: str,
    skipped: dict[str, int],
    cfg: DictConfig,
) -> ModelEvaluation:
    """The PAD metrics of `scores` at `threshold`, pooled and per source (each at its own threshold where the
    rule chooses one on the data)."""
    source_thresholds = per_source_thresholds(threshold, scores, val_scores, source_names, cfg)
    result = pad_metrics(scores, threshold.value, attack_types)
    per_source = pad_metrics_per_source(
        scores,
        threshold.value,
        attack_types,
        source_names,
        {source: choice.value for source, choice in source_thresholds.items()},
    )
    return ModelEvaluation(
        name,
        path,
        info,
        threshold,
        scores,
        result,
        per_source,
        data,
        source_thresholds,
        {source: skipped.get(source, 0) for source in per_source},
    )


def fused_groups(fuse: Any, paths: list[str]) -> list[list[int]]:
    """`fuse=[[a.pth,b.pth],...]` -> the positions of each group's files in `ckpt_path`."""
    if not fuse:
        return []
    groups = []
    for group in fuse:
        if isinstance(group, str) or len(group) < 2:
            raise ConfigError(
                f"fuse={OmegaConf.to_yaml(fuse).strip()!r}: give groups of 2+ model files, e.g. fuse=[[a.onnx,b.onnx]]"
            )
        missing = [str(p) for p in group if str(p) not in paths]
        if missing:
            raise ConfigError(f"fuse names {missing[0]}, which ckpt_path does not list; add it to ckpt_path")
        groups.append([paths.index(str(p)) for p in group])
    return groups


def fuse_models(models: list[ScoredModel], cfg: DictConfig) -> ModelEvaluation:
    """Several models fused as Silent-Face's app fuses its pair: each scores the face on its own crop and the
    fused spoof score is the mean of theirs (1 - the mean probability of "live"). Scored on the faces every
    model scored; the threshold is chosen on the fused validation scores (no file records one for the fusion)."""
    first = models[0]
    scores = fused_scores([(m.keys[cfg.split], m.evaluation.scores) for m in models])
    val_scores = None
    if all(m.val_scores is not None for m in models):
        val_scores = fused_scores([(m.keys["val"], m.val_scores) for m in models])
    rule = "eer" if cfg.threshold.rule == "model" else cfg.threshold.rule
    reason = "a fusion records no threshold; " if cfg.threshold.rule == "model" else ""
    if rule == "fixed":
        threshold = choose_threshold("fixed", value=cfg.threshold.value)
    elif val_scores is not None and len(val_scores.score):
        threshold = choose_threshold(rule, val_scores, split="val", **target(cfg))
        threshold = replace(threshold, reason=threshold.reason or reason + "chosen on the fused validation scores")
    else:
        threshold = choose_threshold(rule, scores, split=cfg.split, **target(cfg))
        threshold = replace(threshold, reason=threshold.reason or reason + NO_VALIDATION)
    lost = len(first.evaluation.scores) - len(scores)
    if lost:
        log.warning(
            "Fusion: %d of %s's faces were not scored by every model; they are left out", lost, first.evaluation.name
        )
    names = [m.evaluation.name for m in models]
    info = replace(
        first.evaluation.info, backbone=" + ".join(m.evaluation.info.backbone for m in models), threshold=None
    )
    skipped = {
        source: max(m.evaluation.skipped.get(source, 0) for m in models) for source in first.evaluation.per_source
    }
    return model_evaluation(
        " + ".join(names),
        None,
        info,
        threshold,
        scores,
        val_scores,
        first.source_names,
        first.attack_types,
        first.evaluation.data,
        skipped,
        cfg,
    )


def fused_scores(parts: list[tuple[list[tuple[int, str]], Scores]]) -> Scores:
    """The mean spoof score per face over the models, on the faces all of them scored (in the first's order)."""
    (first_keys, first), others = parts[0], parts[1:]
    positions = [dict(zip(keys, range(len(keys)), strict=True)) for keys, _ in others]
    kept = [i for i, key in enumerate(first_keys) if all(key in p for p in positions)]
    total = first.score[kept].copy()
    for position, (_, scores) in zip(positions, others, strict=True):
        total += scores.score[[position[first_keys[i]] for i in kept]]
    fused = first.subset(np.asarray(kept, np.int64))
    fused.score = total / len(parts)
    return fused


def decision_threshold(
    backend: Backend, name: str, path: str, datamodule: FaceDataModule, cfg: DictConfig, scores: Scores
) -> tuple[ThresholdChoice, Scores | None]:
    """`threshold.rule=model` (default): the threshold the model file records (chosen on its training run's
    validation data), so a cross-dataset evaluation applies the operating point the model ships with; a file
    that records none (published weights) falls back to `eer`. `eer` / `apcer` choose it on the data's
    validation part (else, with a warning in the report, on the evaluated data); `fixed` takes `value`.
    Returns the validation scores too when they were scored."""
    rule, recorded = cfg.threshold.rule, backend.info.threshold
    if rule == "fixed":
        return choose_threshold("fixed", value=cfg.threshold.value), None
    if rule == "model" and recorded is not None:
        origin = f"recorded in {Path(path).name}: chosen by rule {recorded.get('rule')} on its training run's "
        return ThresholdChoice(
            "model", float(recorded["value"]), recorded.get("split"), origin + "validation data"
        ), None
    chosen_rule = "eer" if rule == "model" else rule
    fallback = f"{Path(path).name} records no threshold; " if rule == "model" else ""
    if cfg.split == "test" and len(datamodule.splits["val"]) == 0:
        threshold = choose_threshold(chosen_rule, scores, split=cfg.split, **target(cfg))
        log.warning("%s: %s%s", name, fallback, NO_VALIDATION)
        return replace(threshold, reason=threshold.reason or fallback + NO_VALIDATION), None
    val_scores = score_loader(backend, datamodule.val_dataloader(), f"{name} val")
    threshold = choose_threshold(chosen_rule, val_scores, split="val", **target(cfg))
    if fallback and not threshold.reason:
        threshold = replace(threshold, reason=fallback + "chosen on the data's validation part")
    return threshold, val_scores


def per_source_thresholds(
    pooled: ThresholdChoice, scores: Scores, val_scores: Scores | None, names: list[str], cfg: DictConfig
) -> dict[str, ThresholdChoice]:
    """With several sources and a threshold chosen on the data (not the model's, not fixed): each source's
    own, chosen by the same rule on its validation part, else on its evaluated samples (flagged). A model's
    operating point does not move with the data set; one chosen on pooled data would, hence this."""
    present = sources_present(scores, names)
    if len(present) < 2 or pooled.rule in ("model", "fixed"):
        return {}
    rule = "eer" if cfg.threshold.rule == "model" else cfg.threshold.rule  # a file that records no threshold
    chosen = {}
    for index, source in present:
        own_val = val_scores.subset(val_scores.source == index) if val_scores is not None else None
        if own_val is not None and len(own_val.score):
            chosen[source] = choose_threshold(rule, own_val, split="val", **target(cfg))
        else:
            own_scores = scores.subset(scores.source == index)
            threshold = choose_threshold(rule, own_scores, split=cfg.split, **target(cfg))
            chosen[source] = replace(threshold, reason=threshold.reason or f"{source}: {NO_VALIDATION}")
    return chosen


def target(cfg: DictConfig) -> dict[str, float]:
    return {"target_apcer": cfg.threshold.target_apcer}


def check_model_io(backend: Backend, path: str) -> None:
    """Before a long run: the model must take the input size and give the class count its metadata records."""
    size = backend.info.convention.input_size
    classes = backend.info.class_scheme.num_classes
    try:
        logits = backend.logits(np.zeros((1, 3, size, size), np.float32))
    except Exception as error:  # ONNX Runtime and PyTorch raise unrelated types for a wrong input shape
        first_line = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ModelInputError(
            f"{path} rejects the {size}x{size} input its recorded convention asks for ({first_line}); "
            "the file and its metadata disagree: re-export it"
        ) from error
    if logits.shape != (1, classes):
        raise ModelInputError(
            f"{path} outputs {logits.shape[1:]} logits but its class scheme "
            f"'{backend.info.class_scheme.name}' has {classes} classes; re-export it"
        )


def split_loader(datamodule: FaceDataModule, split: str) -> DataLoader:
    return datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()


def score_loader(backend: Backend, loader: DataLoader, description: str) -> Scores:
    """Spoof scores of every batch of `loader`, with a progress bar on terminals."""
    real = backend.info.class_scheme.real_class_index
    parts: dict[str, list[np.ndarray]] = {key: [] for key in Scores.FIELDS}
    logged = ProgressLog(f"Scoring {description}", len(loader.dataset), "images")
    for batch in tqdm(loader, desc=description, unit="batch", disable=None, leave=False):
        logits = backend.logits(batch["image"].numpy())
        logged.update(len(logits))
        parts["score"].append(spoof_scores(logits, real).numpy())
        for key in Scores.FIELDS[1:]:
            parts[key].append(np.asarray(batch[key]))
    logged.finish()
    if not parts["score"]:
        return Scores(np.empty(0), np.empty(0, np.int64))
    return Scores(**{key: np.concatenate(values) for key, values in parts.items()})
