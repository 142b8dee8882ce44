"""Tracks across frames: box overlap by hand, matching, gaps, fusion (mean and EMA), the gate's retries left out."""

from __future__ import annotations

import pytest

from fas.detect import Face
from fas.errors import ConfigError
from fas.inference.predictor import FacePrediction
from fas.inference.quality import QualityCheck
from fas.inference.tracking import FaceTracker, box_iou


def face(box: tuple[int, int, int, int], score: float, retry: bool = False) -> FacePrediction:
    quality = QualityCheck({}, ("blurred",)) if retry else None
    return FacePrediction(Face(box, 1.0), {}, None, score, score <= 0.5, quality)


def test_box_overlap_by_hand() -> None:
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 0, 10, 10)) == 0.0


def test_faces_keep_their_tracks_and_fuse_their_scores() -> None:
    tracker = FaceTracker(threshold=0.5, min_frames=2)
    first = tracker.update(0, [face((0, 0, 10, 10), 0.2), face((50, 0, 10, 10), 0.9)])
    assert [(t.track, t.spoof_score, t.label) for t in first] == [(0, 0.2, None), (1, 0.9, None)]
    second = tracker.update(1, [face((51, 0, 10, 10), 0.7), face((1, 0, 10, 10), 0.4)])  # listed the other way
    assert [t.track for t in second] == [1, 0]
    assert second[1].spoof_score == pytest.approx(0.3) and second[1].label == "real"
    assert second[0].spoof_score == pytest.approx(0.8) and second[0].label == "spoof"
    retried = tracker.update(2, [face((2, 0, 10, 10), 0.99, retry=True)])  # the gate turned it back: not fused
    assert retried[0].track == 0 and retried[0].spoof_score == pytest.approx(0.3)
    later = tracker.update(20, [face((2, 0, 10, 10), 0.1)])  # 18 frames unseen > max_gap 15: a new track
    assert later[0].track == 2
    decisions = tracker.finish()
    assert [(d["track"], d["frames"], d["judged_frames"], d["label"]) for d in decisions] == [
        (0, 3, 2, "real"),
        (1, 2, 2, "spoof"),
        (2, 1, 1, "undecided"),
    ]


def test_the_moving_average_weighs_the_newest_score() -> None:
    tracker = FaceTracker(fusion="ema", ema_weight=0.25, min_frames=1)
    tracker.update(0, [face((0, 0, 10, 10), 0.2)])
    (tracked,) = tracker.update(1, [face((0, 0, 10, 10), 0.6)])
    assert tracked.spoof_score == pytest.approx(0.25 * 0.6 + 0.75 * 0.2)
    with pytest.raises(ConfigError, match=r"tracking\.fusion='median'"):
        FaceTracker(fusion="median")
