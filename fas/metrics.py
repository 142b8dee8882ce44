"""PAD metrics (ISO/IEC 30107-3 vocabulary) from spoof scores: one implementation for training and evaluation.

Conventions used everywhere:
- score: the spoof score `1 - softmax[real_class_index]`; higher means "more likely an attack".
- A sample is an attack (presentation attack) iff its CelebA-Spoof spoof type (label index 40) is not 0.
- At a decision threshold t a sample is classified as an attack iff `score >= t` (torchmetrics' ROC rule).
- APCER: share of attacks classified bona fide, per attack type (`apcer_per_type`); `apcer` is the worst
  type (ISO), `apcer_pooled` pools every attack. BPCER: share of bona fide samples classified attacks.
  ACER = (apcer + bpcer) / 2; HTER = (apcer_pooled + bpcer) / 2.
- The threshold is chosen on validation data (`choose_threshold`) and applied unchanged to test data;
  EER, ROC-AUC, average precision, BPCER@APCER and TPR@FPR are threshold-free properties of the data scored.
- A metric that the data cannot define (one class absent, no threshold) is None, with its reason in
  `PadResult.undefined` and an `UndefinedMetricWarning`; nothing raises on such data.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_confusion_matrix,
    binary_precision_recall_curve,
)
from torchmetrics.utilities import dim_zero_cat

from fas.data.sample import ENVIRONMENTS, ILLUMINATIONS, SPOOF_TYPES
from fas.errors import ConfigError, FasError

LIVE_TYPE = 0
APCER_TARGETS = {"bpcer_at_apcer_1pct": 0.01, "bpcer_at_apcer_5pct": 0.05}
# The CelebA-Spoof intra-test operating points (docs/architecture.md), reported as tpr_at_fpr_<fpr>.
CELEBA_FPRS = {"tpr_at_fpr_1e-2": 1e-2, "tpr_at_fpr_5e-3": 5e-3, "tpr_at_fpr_1e-3": 1e-3}
METRIC_KEYS = (
    "auroc",
    "average_precision",
    "eer",
    "threshold",
    "apcer",
    "apcer_pooled",
    "bpcer",
    "acer",
    "hter",
    *APCER_TARGETS,
    *CELEBA_FPRS,
    "accuracy",
    "accuracy_live",
    "accuracy_spoof",
)
BREAKDOWNS = {"spoof_type": SPOOF_TYPES, "illumination": ILLUMINATIONS, "environment": ENVIRONMENTS}
THRESHOLD_RULES = ("eer", "apcer", "fixed")
SOURCE_KEYS = (
    "auroc",
    "eer",
    "apcer",
    "bpcer",
    "acer",
    "hter",
    "tpr_at_fpr_1e-2",
    "tpr_at_fpr_1e-3",
)  # per data source

NO_LIVE = "no bona fide (live) samples"
NO_SPOOF = "no attack (spoof) samples"
NO_THRESHOLD = "no decision threshold"


class UndefinedMetricWarning(UserWarning):
    """A metric cannot be computed from the data given (reported as None / null)."""


class ScoreError(FasError, ValueError):
    """Spoof scores that no metric can use (non-finite or outside [0, 1])."""


def type_name(code: int, names: dict[int, str] = SPOOF_TYPES) -> str:
    return names.get(int(code), str(int(code)))


@dataclass
class Scores:
    """Spoof scores of the samples of one split with their CelebA-Spoof condition codes (0 = live) and the
    index of the data source each came from.

    Condition arrays left out default to 0 (live / unknown; the first source). Not frozen: torchmetrics
    copies compute() results.
    """

    FIELDS = ("score", "spoof_type", "illumination", "environment", "source")

    score: np.ndarray
    spoof_type: np.ndarray
    illumination: np.ndarray = field(default=None)  # type: ignore[assignment]
    environment: np.ndarray = field(default=None)  # type: ignore[assignment]
    source: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        score = self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        for name in self.FIELDS[1:]:
            value = getattr(self, name)
            codes = np.zeros(len(score), np.int64) if value is None else np.asarray(value, np.int64).reshape(-1)
            if len(codes) != len(score):
                raise ValueError(f"{name} has {len(codes)} entries for {len(score)} scores")
            setattr(self, name, codes)
        if not np.all(np.isfinite(score)) or np.any((score < 0) | (score > 1)):
            bad = score[~(np.isfinite(score) & (score >= 0) & (score <= 1))][:3]
            raise ScoreError(f"spoof scores must be finite and in [0, 1]; got e.g. {bad.tolist()} (check the model)")

    @property
    def is_spoof(self) -> np.ndarray:
        return self.spoof_type != LIVE_TYPE

    @property
    def n_live(self) -> int:
        return int(np.sum(~self.is_spoof))

    @property
    def n_spoof(self) -> int:
        return int(np.sum(self.is_spoof))

    def __len__(self) -> int:
        return len(self.score)

    def subset(self, mask: np.ndarray) -> Scores:
        return Scores(*(getattr(self, name)[mask] for name in self.FIELDS))


def spoof_scores(logits: Tensor | np.ndarray, real_class_index: int) -> Tensor:
    """`1 - softmax(logits)[:, real_class_index]`, in float64 (float32 on MPS) so confident scores keep their order."""
    logits = torch.as_tensor(logits)
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    return 1.0 - logits.to(dtype).softmax(dim=1)[:, real_class_index]


class ScoreCollector(Metric):
    """Gathers spoof scores and condition codes over an epoch (and across devices) into `Scores`."""

    full_state_update = False
    FIELDS = Scores.FIELDS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self.FIELDS:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, score: Tensor, spoof_type: Tensor, illumination: Tensor, environment: Tensor, source: Tensor | None = None
    ) -> None:
        source = torch.zeros_like(torch.as_tensor(spoof_type)) if source is None else source
        for name, value in zip(self.FIELDS, (score, spoof_type, illumination, environment, source), strict=True):
            getattr(self, name).append(torch.as_tensor(value, device=self.device).detach().reshape(-1))

    def compute(self) -> Scores:
        if not self.score:  # type: ignore[truthy-function]
            return Scores(np.empty(0), np.empty(0, np.int64))
        return Scores(*(dim_zero_cat(getattr(self, name)).cpu().numpy() for name in self.FIELDS))


@dataclass(frozen=True)
class OperatingPoints:
    """Every distinct decision threshold, strictest first, with its exact APCER (pooled) and BPCER."""

    thresholds: np.ndarray
    apcer: np.ndarray
    bpcer: np.ndarray
    missed_attacks: np.ndarray  # attacks classified bona fide at each threshold (exact counts)


def operating_points(score: np.ndarray, is_spoof: np.ndarray) -> OperatingPoints:
    """ROC as counts. The first threshold lies just above the highest score (nothing flagged).

    Needs at least one live and one spoof sample.
    """
    order = np.argsort(-score, kind="stable")
    ordered, attack = score[order], is_spoof[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    caught = np.r_[0, np.cumsum(attack)[last_of_value]]
    flagged = np.r_[0, last_of_value + 1]
    n_spoof = int(attack.sum())
    n_live = len(attack) - n_spoof
    missed = n_spoof - caught
    return OperatingPoints(
        thresholds=np.r_[np.nextafter(ordered[0], np.inf), ordered[last_of_value]],
        apcer=missed / n_spoof,
        bpcer=(flagged - caught) / n_live,
        missed_attacks=missed,
    )


def _both_classes(is_spoof: np.ndarray) -> bool:
    return bool(is_spoof.any() and (~is_spoof).any())


def roc_auc(score: np.ndarray, is_spoof: np.ndarray) -> float | None:
    """ROC-AUC with attacks as the positive class (torchmetrics); None without both classes."""
    if not _both_classes(is_spoof):
        return None
    return float(binary_auroc(torch.from_numpy(score), torch.from_numpy(is_spoof.astype(np.int64))))


def average_precision(score: np.ndarray, is_spoof: np.ndarray) -> float | None:
    """Average precision of attack detection (torchmetrics); None without both classes."""
    if not _both_classes(is_spoof):
        return None
    return float(binary_average_precision(torch.from_numpy(score), torch.from_numpy(is_spoof.astype(np.int64))))


def equal_error_rate(score: np.ndarray, is_spoof: np.ndarray) -> tuple[float, float] | None:
    """(EER, its threshold): at the threshold where APCER and BPCER are closest (the strictest one on ties),
    EER is their mean. None without both classes."""
    if not _both_classes(is_spoof):
        return None
    points = operating_points(score, is_spoof)
    best = int(np.argmin(np.abs(points.apcer - points.bpcer)))
    return float((points.apcer[best] + points.bpcer[best]) / 2), float(points.thresholds[best])


def threshold_at_apcer(score: np.ndarray, is_spoof: np.ndarray, max_apcer: float) -> tuple[float, float] | None:
    """(threshold, BPCER) of the operating point with the lowest BPCER whose APCER (pooled) is <= max_apcer."""
    if not _both_classes(is_spoof):
        return None
    points = operating_points(score, is_spoof)
    allowed = max_apcer * int(is_spoof.sum()) + 1e-9
    first = int(np.argmax(points.missed_attacks <= allowed))  # BPCER only grows after it
    return float(points.thresholds[first]), float(points.bpcer[first])


def bpcer_at_apcer(score: np.ndarray, is_spoof: np.ndarray, max_apcer: float) -> float | None:
    """BPCER at the operating point where APCER (pooled) first drops to `max_apcer` or below."""
    found = threshold_at_apcer(score, is_spoof, max_apcer)
    return None if found is None else found[1]


def tpr_at_fpr(score: np.ndarray, is_spoof: np.ndarray, fpr: float) -> float | None:
    """CelebA-Spoof's official TPR@FPR: the threshold is the live score with `int(fpr * n_live)` live scores
    above it (so a fraction `fpr` of lives pass as spoof); TPR is the fraction of spoofs strictly above it."""
    if not _both_classes(is_spoof):
        return None
    live = np.sort(score[~is_spoof])
    threshold = live[-(int(fpr * len(live)) + 1)]
    return float(np.mean(score[is_spoof] > threshold))


def roc_curve(score: np.ndarray, is_spoof: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(BPCER, 1 - APCER) for every threshold: the ROC with attacks as positives."""
    if not _both_classes(is_spoof):
        return None
    points = operating_points(score, is_spoof)
    return points.bpcer, 1.0 - points.apcer


def det_curve(score: np.ndarray, is_spoof: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(APCER, BPCER) for every threshold (ISO/IEC 30107-3 DET axes)."""
    if not _both_classes(is_spoof):
        return None
    points = operating_points(score, is_spoof)
    return points.apcer, points.bpcer


def pr_curve(score: np.ndarray, is_spoof: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(recall, precision) of attack detection (torchmetrics)."""
    if not _both_classes(is_spoof):
        return None
    precision, recall, _ = binary_precision_recall_curve(
        torch.from_numpy(score), torch.from_numpy(is_spoof.astype(np.int64))
    )
    return recall.numpy().astype(np.float64), precision.numpy().astype(np.float64)


def confusion_matrix(score: np.ndarray, is_spoof: np.ndarray, threshold: float) -> list[list[int]]:
    """[[live kept, live flagged], [attacks missed, attacks caught]]: rows true, columns predicted (live, attack)."""
    predicted = torch.from_numpy((score >= threshold).astype(np.int64))
    matrix = binary_confusion_matrix(predicted, torch.from_numpy(is_spoof.astype(np.int64)))
    return matrix.tolist()


@dataclass(frozen=True)
class ThresholdChoice:
    """The decision threshold and how it was chosen; `value` is None (with `reason`) when it could not be."""

    rule: str
    value: float | None
    split: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(
    rule: str,
    scores: Scores | None = None,
    *,
    target_apcer: float = 0.05,
    value: float | None = None,
    split: str = "val",
) -> ThresholdChoice:
    """`eer`: the EER point of `scores`; `apcer`: the lowest-BPCER point with APCER <= target_apcer;
    `fixed`: `value` as given."""
    if rule not in THRESHOLD_RULES:
        raise ConfigError(f"threshold.rule={rule!r} is not one of {', '.join(THRESHOLD_RULES)}")
    if rule == "fixed":
        if value is None:
            raise ConfigError("threshold.rule=fixed needs threshold.value=<spoof score>, e.g. threshold.value=0.5")
        return ThresholdChoice("fixed", float(value))
    if scores is None:
        raise ValueError(f"threshold rule {rule!r} needs the scores of the {split} split")
    name = "eer" if rule == "eer" else f"apcer<={target_apcer:g}"
    missing = [reason for reason, n in ((NO_LIVE, scores.n_live), (NO_SPOOF, scores.n_spoof)) if n == 0]
    if missing:
        reason = f"the {split} split has {' and '.join(missing)}; pass threshold.rule=fixed threshold.value=<score>"
        warnings.warn(f"Cannot choose the decision threshold: {reason}", UndefinedMetricWarning, stacklevel=2)
        return ThresholdChoice(name, None, split, reason)
    if rule == "eer":
        found = equal_error_rate(scores.score, scores.is_spoof)
        chosen = found[1] if found else None
    else:
        found = threshold_at_apcer(scores.score, scores.is_spoof, target_apcer)
        chosen = found[0] if found else None
    return ThresholdChoice(name, chosen, split)


@dataclass
class PadResult:
    """Every metric of one model on one split; None marks an undefined metric, explained in `undefined`."""

    counts: dict[str, int]
    metrics: dict[str, float | None]
    apcer_per_type: dict[str, float | None]
    confusion_matrix: list[list[int]] | None
    breakdowns: dict[str, dict[str, dict[str, float | int | None]]]
    undefined: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Collector:
    """Fills a metrics dict, recording the first reason that makes a metric undefined."""

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {}
        self.undefined: dict[str, str] = {}

    def put(self, key: str, compute: Any, *reasons: str | None) -> None:
        reason = next((r for r in reasons if r), None)
        if reason is None:
            self.values[key] = float(compute())
        else:
            self.values[key] = None
            self.undefined[key] = reason


def pad_metrics(scores: Scores, threshold: float | None, attack_types: Iterable[int] = ()) -> PadResult:
    """All PAD metrics of `scores` at `threshold`; `attack_types` are the spoof types expected in the data
    (an expected type without samples gets an undefined APCER, not a silent omission)."""
    score, spoof, types = scores.score, scores.is_spoof, scores.spoof_type
    expected = {int(t) for t in attack_types} - {LIVE_TYPE}
    no_live = NO_LIVE if scores.n_live == 0 else None
    no_spoof = NO_SPOOF if scores.n_spoof == 0 else None
    no_threshold = NO_THRESHOLD if threshold is None else None
    has_threshold = threshold is not None
    flagged = score >= threshold if has_threshold else np.zeros(len(score), bool)
    per_type = _apcer_per_type(types, flagged, expected, has_threshold)
    out = _Collector()

    out.put("auroc", lambda: roc_auc(score, spoof), no_live, no_spoof)
    out.put("average_precision", lambda: average_precision(score, spoof), no_live, no_spoof)
    out.put("eer", lambda: equal_error_rate(score, spoof)[0], no_live, no_spoof)
    out.put("threshold", lambda: threshold, no_threshold)
    out.put("apcer", lambda: max(v for v in per_type.values() if v is not None), no_threshold, no_spoof)
    out.put("apcer_pooled", lambda: np.mean(~flagged[spoof]), no_threshold, no_spoof)
    out.put("bpcer", lambda: np.mean(flagged[~spoof]), no_threshold, no_live)
    out.put("acer", lambda: (out.values["apcer"] + out.values["bpcer"]) / 2, no_threshold, no_live, no_spoof)
    out.put("hter", lambda: (out.values["apcer_pooled"] + out.values["bpcer"]) / 2, no_threshold, no_live, no_spoof)
    for key, target in APCER_TARGETS.items():
        out.put(key, lambda target=target: bpcer_at_apcer(score, spoof, target), no_live, no_spoof)
    for key, fpr in CELEBA_FPRS.items():
        out.put(key, lambda fpr=fpr: tpr_at_fpr(score, spoof, fpr), no_live, no_spoof)
    out.put("accuracy", lambda: np.mean(flagged == spoof), no_threshold, "no samples" if len(score) == 0 else None)
    out.put("accuracy_live", lambda: np.mean(~flagged[~spoof]), no_threshold, no_live)
    out.put("accuracy_spoof", lambda: np.mean(flagged[spoof]), no_threshold, no_spoof)
    for code in sorted(expected):
        if not np.any(types == code):
            out.undefined[f"apcer_per_type.{type_name(code)}"] = "no samples of this attack type"
    _warn_undefined(out.undefined)

    return PadResult(
        counts={"live": scores.n_live, "spoof": scores.n_spoof},
        metrics={key: out.values[key] for key in METRIC_KEYS},
        apcer_per_type=per_type,
        confusion_matrix=confusion_matrix(score, spoof, threshold) if has_threshold and len(score) else None,
        breakdowns={
            name: _breakdown(scores, getattr(scores, name), names, flagged, has_threshold)
            for name, names in BREAKDOWNS.items()
            if name == "spoof_type" or np.any(getattr(scores, name) != 0)  # recorded only by CelebA-Spoof
        },
        undefined=out.undefined,
    )


def _apcer_per_type(
    types: np.ndarray, flagged: np.ndarray, expected: set[int], has_threshold: bool
) -> dict[str, float | None]:
    codes = sorted((expected | set(np.unique(types).tolist())) - {LIVE_TYPE})
    result: dict[str, float | None] = {}
    for code in codes:
        of_type = types == code
        result[type_name(code)] = float(np.mean(~flagged[of_type])) if has_threshold and of_type.any() else None
    return result


def _breakdown(
    scores: Scores, codes: np.ndarray, names: dict[int, str], flagged: np.ndarray, has_threshold: bool
) -> dict[str, dict[str, float | int | None]]:
    """Per condition: counts, APCER / BPCER at the threshold, and ROC-AUC of the condition's attacks against
    every live sample (live samples of CelebA-Spoof carry condition 0, "live")."""
    spoof = scores.is_spoof
    live_scores = scores.score[~spoof]
    groups: dict[str, dict[str, float | int | None]] = {}
    for code in sorted(np.unique(codes).tolist()):
        in_group = codes == code
        attacks, lives = in_group & spoof, in_group & ~spoof
        pair_scores = np.r_[live_scores, scores.score[attacks]]
        pair_labels = np.r_[np.zeros(len(live_scores), bool), np.ones(int(attacks.sum()), bool)]
        groups[type_name(code, names)] = {
            "n_live": int(lives.sum()),
            "n_spoof": int(attacks.sum()),
            "apcer": float(np.mean(~flagged[attacks])) if has_threshold and attacks.any() else None,
            "bpcer": float(np.mean(flagged[lives])) if has_threshold and lives.any() else None,
            "auroc": roc_auc(pair_scores, pair_labels),
        }
    return groups


def _warn_undefined(undefined: dict[str, str]) -> None:
    """Warn of metrics the data cannot define; attack types without samples are left to the report, which
    lists them once (most data holds only some of CelebA-Spoof's types, and that asks nothing of the user)."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in undefined.items():
        if not key.startswith("apcer_per_type."):
            by_reason.setdefault(reason, []).append(key)
    if by_reason:
        message = "; ".join(f"{', '.join(keys)} undefined ({reason})" for reason, keys in by_reason.items())
        warnings.warn(message, UndefinedMetricWarning, stacklevel=3)


def pad_metrics_per_source(
    scores: Scores,
    threshold: float | None,
    attack_types: Iterable[int],
    names: list[str],
    source_thresholds: dict[str, float | None] | None = None,
) -> dict[str, PadResult]:
    """The metrics of each data source's samples alone, at the pooled threshold or the source's own in
    `source_thresholds`; empty when the scores come from a single source (e.g. the held-out one of a
    leave-one-dataset-out run)."""
    present = sources_present(scores, names)
    if len(present) < 2:
        return {}
    attack_types = list(attack_types)
    own = source_thresholds or {}
    return {
        name: pad_metrics(scores.subset(scores.source == index), own.get(name, threshold), attack_types)
        for index, name in present
    }


def sources_present(scores: Scores, names: list[str]) -> list[tuple[int, str]]:
    """(index, name) of each data source with samples in `scores`."""
    return [(index, name) for index, name in enumerate(names) if np.any(scores.source == index)]


STRESS_KEYS = ("auroc", "auroc_change", "apcer", "bpcer", "hter", "flipped", "mean_score_change")


def stress_metrics(
    clean: Scores, changed: Scores, threshold: float | None, attack_types: Iterable[int]
) -> dict[str, float | None]:
    """A model's figures on changed copies of the faces it scored clean (the same faces, in the same order):
    ROC-AUC and its change, APCER / BPCER / HTER at `threshold`, the share of live-vs-spoof decisions the change
    flipped, and the mean change of the spoof score."""
    if len(clean) != len(changed) or not np.array_equal(clean.spoof_type, changed.spoof_type):
        raise ScoreError("stressed scores must pair with the clean ones face by face")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # the clean report already says what is undefined
        metrics = pad_metrics(changed, threshold, attack_types).metrics
        clean_auroc = roc_auc(clean.score, clean.is_spoof)
    result = {key: metrics[key] for key in ("auroc", "apcer", "bpcer", "hter")}
    both = metrics["auroc"] is not None and clean_auroc is not None
    result["auroc_change"] = metrics["auroc"] - clean_auroc if both else None
    flips = (changed.score >= threshold) != (clean.score >= threshold) if threshold is not None else None
    result["flipped"] = float(np.mean(flips)) if flips is not None and len(flips) else None
    result["mean_score_change"] = float(np.mean(changed.score - clean.score)) if len(clean) else None
    return result


def video_scores(scores: Scores, videos: Sequence[str | None]) -> Scores | None:
    """One score per video: the mean spoof score of its scored frames (the video-level decision Replay-Attack and
    OULU-NPU results are given by), with the video's attack type and source; frames of no video (photos) are left
    out. None when no frame names a video. `videos` pairs with `scores` frame by frame."""
    if len(videos) != len(scores):
        raise ScoreError(f"{len(videos)} video names for {len(scores)} scores")
    groups: dict[tuple[int, str], list[int]] = {}
    for index, video in enumerate(videos):
        if video is not None:
            groups.setdefault((int(scores.source[index]), video), []).append(index)
    if not groups:
        return None
    frames = list(groups.values())
    first = [members[0] for members in frames]
    return Scores(
        np.array([scores.score[members].mean() for members in frames]),
        scores.spoof_type[first],
        scores.illumination[first],
        scores.environment[first],
        scores.source[first],
    )
