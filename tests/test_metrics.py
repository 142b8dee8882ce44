"""PAD metrics: hand-computed cases, and random scores (with ties) against scikit-learn and plain numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torchmetrics.functional.classification import binary_eer

from fas.errors import ConfigError
from fas.metrics import (
    METRIC_KEYS,
    ScoreCollector,
    ScoreError,
    Scores,
    UndefinedMetricWarning,
    bpcer_at_apcer,
    choose_threshold,
    equal_error_rate,
    pad_metrics,
    pad_metrics_per_source,
    spoof_scores,
    tpr_at_fpr,
)

# Lives 0.1, 0.4, 0.2; attacks: photo 0.35 (illumination normal, indoor), poster 0.8 (strong, indoor),
# phone 0.9 (normal, outdoor).
HAND = Scores(
    score=[0.1, 0.4, 0.35, 0.8, 0.9, 0.2],
    spoof_type=[0, 0, 1, 2, 9, 0],
    illumination=[0, 0, 1, 2, 1, 0],
    environment=[0, 0, 1, 1, 2, 0],
)


def test_hand_computed_case() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an attack type without samples is listed in the report, not warned of
        result = pad_metrics(HAND, threshold=0.35, attack_types=[1, 2, 3, 9])
    assert result.undefined["apcer_per_type.a4"] == "no samples of this attack type"
    m = result.metrics
    assert list(m) == list(METRIC_KEYS)
    # AUC: 0.35 beats two of three lives, 0.8 and 0.9 beat all -> 8 / 9 pairs.
    assert m["auroc"] == pytest.approx(8 / 9, abs=1e-6)
    # AP: ranking 0.9 S, 0.8 S, 0.4 L, 0.35 S -> (1 + 1 + 3/4) / 3.
    assert m["average_precision"] == pytest.approx((1 + 1 + 0.75) / 3, abs=1e-6)
    # At threshold 0.4: one attack missed, one live flagged -> APCER = BPCER = 1/3.
    assert m["eer"] == pytest.approx(1 / 3)
    assert equal_error_rate(HAND.score, HAND.is_spoof) == pytest.approx((1 / 3, 0.4))
    # score >= 0.35 flags every attack and the live at 0.4.
    assert m["threshold"] == 0.35
    assert m["apcer"] == 0.0 and m["apcer_pooled"] == 0.0
    assert m["bpcer"] == pytest.approx(1 / 3)
    assert m["acer"] == pytest.approx(1 / 6) and m["hter"] == pytest.approx(1 / 6)
    # APCER 0 first reached at threshold 0.35, where one live of three is flagged.
    assert m["bpcer_at_apcer_1pct"] == pytest.approx(1 / 3) and m["bpcer_at_apcer_5pct"] == pytest.approx(1 / 3)
    # int(fpr * 3) = 0 lives above the threshold -> threshold = top live score 0.4; 2 of 3 attacks above it.
    for key in ("tpr_at_fpr_1e-2", "tpr_at_fpr_5e-3", "tpr_at_fpr_1e-3"):
        assert m[key] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["accuracy_live"] == pytest.approx(2 / 3) and m["accuracy_spoof"] == 1.0
    assert result.counts == {"live": 3, "spoof": 3}
    assert result.apcer_per_type == {"photo": 0.0, "poster": 0.0, "a4": None, "phone": 0.0}
    assert result.confusion_matrix == [[2, 1], [0, 3]]
    illumination = result.breakdowns["illumination"]
    live = {"n_live": 3, "n_spoof": 0, "apcer": None, "bpcer": pytest.approx(1 / 3), "auroc": None}
    assert illumination["live"] == live
    # normal-light attacks 0.35 and 0.9 against lives 0.1, 0.4, 0.2: 5 of 6 pairs.
    assert illumination["normal"]["n_spoof"] == 2 and illumination["normal"]["auroc"] == pytest.approx(5 / 6, abs=1e-6)
    assert set(result.breakdowns["environment"]) == {"live", "indoor", "outdoor"}
    assert result.undefined == {"apcer_per_type.a4": "no samples of this attack type"}


def test_ties_between_live_and_attack_scores() -> None:
    # Lives 0.2, 0.5, 0.5; attacks 0.5, 0.8.
    scores = Scores([0.2, 0.5, 0.5, 0.5, 0.8], [0, 0, 0, 3, 7])
    result = pad_metrics(scores, threshold=0.5, attack_types=[3, 7])
    m = result.metrics
    # 0.5 vs lives: 1 win + 2 ties (1/2 each) = 2; 0.8 wins 3 -> 5/6.
    assert m["auroc"] == pytest.approx(5 / 6, abs=1e-6)
    # Thresholds 0.8 -> (APCER 1/2, BPCER 0), 0.5 -> (0, 2/3): the 0.8 point is closer to equal.
    assert m["eer"] == pytest.approx(0.25)
    assert equal_error_rate(scores.score, scores.is_spoof)[1] == 0.8
    # Ties at the threshold count as attacks (score >= threshold).
    assert m["apcer"] == 0.0 and m["bpcer"] == pytest.approx(2 / 3)
    assert m["bpcer_at_apcer_1pct"] == pytest.approx(2 / 3)
    # Threshold = top live score 0.5; only attacks strictly above it count: 1 of 2.
    assert m["tpr_at_fpr_1e-2"] == 0.5
    assert result.apcer_per_type == {"a4": 0.0, "pc": 0.0}


def test_per_type_apcer_with_a_missing_type_and_the_worst_type() -> None:
    scores = Scores([0.1, 0.2, 0.9, 0.3, 0.7, 0.95], [0, 0, 1, 1, 7, 7])
    result = pad_metrics(scores, threshold=0.5, attack_types=[1, 7, 8])
    assert result.undefined == {"apcer_per_type.pad": "no samples of this attack type"}
    assert result.apcer_per_type == {"photo": 0.5, "pc": 0.0, "pad": None}
    assert result.metrics["apcer"] == 0.5  # the worst type present
    assert result.metrics["apcer_pooled"] == 0.25
    assert result.metrics["acer"] == pytest.approx((0.5 + 0.0) / 2)
    assert result.metrics["hter"] == pytest.approx((0.25 + 0.0) / 2)


ONLY_LIVE_DEFINED = {"threshold", "bpcer", "accuracy", "accuracy_live"}
ONLY_SPOOF_DEFINED = {"threshold", "apcer", "apcer_pooled", "accuracy", "accuracy_spoof"}


@pytest.mark.parametrize(
    ("spoof_type", "reason", "still_defined"),
    [
        ([0, 0, 0], "no attack (spoof) samples", ONLY_LIVE_DEFINED),
        ([1, 2, 9], "no bona fide (live) samples", ONLY_SPOOF_DEFINED),
    ],
)
def test_a_single_class_gives_undefined_metrics_and_a_warning(
    spoof_type: list[int], reason: str, still_defined: set[str]
) -> None:
    scores = Scores([0.2, 0.6, 0.9], spoof_type)
    with pytest.warns(UndefinedMetricWarning, match=reason.replace("(", r"\(").replace(")", r"\)")):
        result = pad_metrics(scores, threshold=0.5)
    defined = {k for k, v in result.metrics.items() if v is not None}
    assert defined == still_defined
    assert result.undefined["auroc"] == reason and result.undefined["eer"] == reason
    assert result.metrics["accuracy"] == pytest.approx(1 / 3 if spoof_type[0] == 0 else 2 / 3)


def test_no_threshold_and_no_samples() -> None:
    with pytest.warns(UndefinedMetricWarning, match="no decision threshold"):
        result = pad_metrics(HAND, threshold=None)
    assert result.metrics["auroc"] == pytest.approx(8 / 9, abs=1e-6)
    assert result.metrics["apcer"] is None and result.metrics["acer"] is None
    assert result.confusion_matrix is None and result.apcer_per_type["photo"] is None
    with pytest.warns(UndefinedMetricWarning):
        empty = pad_metrics(Scores(np.empty(0), np.empty(0, int)), threshold=0.5)
    assert all(v is None for v in empty.metrics.values() if v != 0.5)
    assert empty.counts == {"live": 0, "spoof": 0}


def random_scores(seed: int, n: int = 600) -> Scores:
    rng = np.random.default_rng(seed)
    types = rng.choice([0, 1, 2, 3, 7, 8, 9], size=n, p=[0.3, 0.15, 0.1, 0.1, 0.15, 0.1, 0.1])
    raw = rng.normal(0.35 + 0.3 * (types != 0), 0.2)
    # Two decimals: many ties, within and across classes.
    return Scores(np.clip(np.round(raw, 2), 0, 1), types, rng.integers(1, 5, n) * (types != 0))


def brute_force_rates(scores: Scores) -> tuple[np.ndarray, np.ndarray]:
    """APCER and BPCER at every candidate threshold (each distinct score, and one above all), plain numpy."""
    live, spoof = scores.score[~scores.is_spoof], scores.score[scores.is_spoof]
    thresholds = np.r_[np.inf, np.unique(scores.score)[::-1]]
    apcer = np.array([np.mean(spoof < t) for t in thresholds])
    bpcer = np.array([np.mean(live >= t) for t in thresholds])
    return apcer, bpcer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scores_against_sklearn_and_numpy(seed: int) -> None:
    scores = random_scores(seed)
    s, y = scores.score, scores.is_spoof
    result = pad_metrics(scores, threshold=0.5, attack_types=[1, 2, 3, 7, 8, 9])
    m = result.metrics
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, s), abs=1e-6)

    apcer, bpcer = brute_force_rates(scores)
    best = np.argmin(np.abs(apcer - bpcer))
    assert m["eer"] == pytest.approx((apcer[best] + bpcer[best]) / 2)
    assert m["eer"] == pytest.approx(float(binary_eer(torch.from_numpy(s), torch.from_numpy(y.astype(int)))))
    for key, target in (("bpcer_at_apcer_1pct", 0.01), ("bpcer_at_apcer_5pct", 0.05)):
        assert m[key] == pytest.approx(bpcer[apcer <= target].min())

    live, spoof = s[~y], s[y]
    for key, fpr in (("tpr_at_fpr_1e-2", 1e-2), ("tpr_at_fpr_5e-3", 5e-3), ("tpr_at_fpr_1e-3", 1e-3)):
        allowed = int(fpr * len(live))
        threshold = np.partition(live, len(live) - 1 - allowed)[len(live) - 1 - allowed]
        assert np.sum(live > threshold) <= allowed  # lets at most the FPR share of lives through
        assert m[key] == pytest.approx(np.mean(spoof > threshold))

    flagged = s >= 0.5
    assert m["bpcer"] == pytest.approx(np.mean(flagged[~y]))
    assert m["apcer_pooled"] == pytest.approx(np.mean(~flagged[y]))
    per_type = {code: np.mean(~flagged[scores.spoof_type == code]) for code in (1, 2, 3, 7, 8, 9)}
    assert list(result.apcer_per_type.values()) == pytest.approx(list(per_type.values()))
    assert m["apcer"] == pytest.approx(max(per_type.values()))
    assert m["accuracy"] == pytest.approx(np.mean(flagged == y))
    assert result.confusion_matrix == sk_confusion_matrix(y, flagged).tolist()
    for name, group in result.breakdowns["illumination"].items():
        if name == "live":
            continue
        code = {"normal": 1, "strong": 2, "back": 3, "dark": 4}[name]
        attacks = s[y & (scores.illumination == code)]
        expected = roc_auc_score(np.r_[np.zeros(len(live)), np.ones(len(attacks))], np.r_[live, attacks])
        assert group["auroc"] == pytest.approx(expected, abs=1e-6)


def test_tpr_at_fpr_official_definition_on_a_known_case() -> None:
    # 1000 lives scored 0.000, 0.001, ..., 0.999; attacks at 0.9915, 0.9955, 0.9985 and 0.5.
    live = np.arange(1000) / 1000
    s = np.r_[live, 0.9915, 0.9955, 0.9985, 0.5]
    y = np.r_[np.zeros(1000, bool), np.ones(4, bool)]
    # FPR 1e-2: 10 lives above -> threshold 0.989; 5e-3: 5 above -> 0.994; 1e-3: 1 above -> 0.998.
    assert tpr_at_fpr(s, y, 1e-2) == 3 / 4
    assert tpr_at_fpr(s, y, 5e-3) == 2 / 4
    assert tpr_at_fpr(s, y, 1e-3) == 1 / 4


def test_bpcer_at_apcer_reaches_the_target_exactly() -> None:
    # 20 attacks: APCER = 1/20 = 5% exactly once the lowest attack is the only one missed.
    s = np.r_[np.linspace(0.5, 0.99, 19), 0.05, 0.1, 0.2, 0.3]
    y = np.r_[np.ones(20, bool), np.zeros(3, bool)]
    s[19] = 0.15  # the 20th attack sits between lives 0.1 and 0.2
    assert bpcer_at_apcer(s, y, 0.05) == 0.0  # miss only the attack at 0.15
    assert bpcer_at_apcer(s, y, 0.01) == pytest.approx(2 / 3)  # catch it: lives 0.2, 0.3 flagged


def test_threshold_rules() -> None:
    val = random_scores(5)
    eer = choose_threshold("eer", val)
    assert eer.rule == "eer" and eer.split == "val"
    assert eer.value == pytest.approx(equal_error_rate(val.score, val.is_spoof)[1])
    at_apcer = choose_threshold("apcer", val, target_apcer=0.05)
    assert at_apcer.rule == "apcer<=0.05"
    assert np.mean(val.score[val.is_spoof] < at_apcer.value) <= 0.05
    # The threshold chosen on validation data is applied unchanged to test data.
    test = random_scores(6)
    applied = pad_metrics(test, at_apcer.value).metrics
    assert applied["threshold"] == at_apcer.value
    assert applied["apcer_pooled"] == pytest.approx(np.mean(test.score[test.is_spoof] < at_apcer.value))
    assert choose_threshold("fixed", value=0.7).value == 0.7
    with pytest.raises(ConfigError, match=r"threshold\.value=<spoof score>"):
        choose_threshold("fixed")
    with pytest.raises(ConfigError, match=r"threshold\.rule='median' is not one of eer, apcer, fixed"):
        choose_threshold("median", val)


def test_threshold_on_single_class_validation_is_undefined() -> None:
    with pytest.warns(UndefinedMetricWarning, match="no attack"):
        choice = choose_threshold("eer", Scores([0.1, 0.2], [0, 0]))
    assert choice.value is None and "threshold.rule=fixed" in choice.reason


def test_scores_are_checked() -> None:
    with pytest.raises(ScoreError, match=r"finite and in \[0, 1\]; got e.g. \[nan\]"):
        Scores([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="spoof_type has 1 entries for 2 scores"):
        Scores([0.1, 0.2], [0])


def test_spoof_scores_are_one_minus_real_probability_in_float64() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 30.0, 0.0]])
    scores = spoof_scores(logits, real_class_index=1)
    assert scores.dtype == torch.float64
    expected = 1 - torch.softmax(logits.double(), dim=1)[:, 1]
    torch.testing.assert_close(scores, expected)
    assert 0 < scores[1] < 1e-12  # float32 would round a confident live to exactly 0
    np.testing.assert_allclose(spoof_scores(logits.numpy(), 1).numpy(), expected.numpy())


def test_score_collector_gathers_batches() -> None:
    collector = ScoreCollector()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics: compute() before update()
        assert len(collector.compute()) == 0
    collector.update(
        torch.tensor([0.1, 0.9], dtype=torch.float64), torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([0, 1])
    )
    collector.update(torch.tensor([0.4], dtype=torch.float64), torch.tensor([7]), torch.tensor([3]), torch.tensor([2]))
    scores = collector.compute()
    np.testing.assert_array_equal(scores.score, [0.1, 0.9, 0.4])
    np.testing.assert_array_equal(scores.spoof_type, [0, 1, 7])
    np.testing.assert_array_equal(scores.illumination, [0, 2, 3])
    np.testing.assert_array_equal(scores.environment, [0, 1, 2])
    collector.reset()
    collector.update(torch.tensor([0.3]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    assert len(collector.compute()) == 1


def test_each_source_alone_at_its_own_threshold() -> None:
    """Two sources pooled: each one's metrics at the pooled threshold, or at its own where one is given."""
    scores = Scores(
        np.array([0.1, 0.3, 0.6, 0.9, 0.2, 0.4, 0.5, 0.7]),
        np.array([0, 0, 1, 1, 0, 0, 9, 9]),
        source=np.array([0, 0, 0, 0, 1, 1, 1, 1]),
    )
    pooled = pad_metrics_per_source(scores, 0.45, [1, 9], ["a", "b"])
    assert pooled["a"].metrics["hter"] == 0.0 and pooled["a"].counts == {"live": 2, "spoof": 2}
    assert pooled["b"].metrics["hter"] == 0.0 and pooled["b"].metrics["auroc"] == 1.0
    own = pad_metrics_per_source(scores, 0.45, [1, 9], ["a", "b"], {"b": 0.6})
    assert own["a"].metrics["hter"] == 0.0  # a keeps the pooled threshold
    assert own["b"].metrics["apcer_pooled"] == 0.5 and own["b"].metrics["hter"] == 0.25  # 0.5 < 0.6: one attack passes
    assert pad_metrics_per_source(scores.subset(scores.source == 0), 0.45, [1, 9], ["a", "b"]) == {}


def test_one_score_per_video_is_the_mean_of_its_frames() -> None:
    from fas.metrics import video_scores

    scores = Scores(
        np.array([0.2, 0.4, 0.9, 0.7, 0.5, 0.1]),
        np.array([0, 0, 7, 7, 0, 0]),
        source=np.array([0, 0, 0, 0, 0, 1]),
    )
    videos = video_scores(scores, ["a", "a", "b", "b", None, "a"])  # the photo is left out; source 1's "a" is its own
    np.testing.assert_allclose(videos.score, [0.3, 0.8, 0.1])
    assert videos.spoof_type.tolist() == [0, 7, 0] and videos.source.tolist() == [0, 0, 1]
    assert video_scores(scores, [None] * 6) is None
    with pytest.raises(ScoreError, match="5 video names for 6 scores"):
        video_scores(scores, [None] * 5)
