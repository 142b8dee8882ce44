"""Decisions over video: faces followed across frames by box overlap, each track's spoof scores fused over a window.

One frame is a noisy witness (a blink, motion blur, a reflection); deployments decide on a face over time. A face
of a new frame joins the live track whose last box it overlaps most (intersection over union >= `min_iou`, the
best pairs first); a track not seen for more than `max_gap` frames ends. Each track fuses the spoof scores of its
judged frames (those the quality gate passed, all frames without a gate) over the last `window` of them, by their
`mean` or an exponential moving average (`ema`, weight `ema_weight` on the newest), and gives a verdict only once
`min_frames` judged frames are in: real when the fused score is at most the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fas.errors import ConfigError
from fas.inference.predictor import FacePrediction

FUSIONS = ("mean", "ema")


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter_w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    inter_h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = inter_w * inter_h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """One face followed across frames: its last box, the frames it was seen in, its judged frames' scores."""

    id: int
    box: tuple[float, ...]
    first_frame: int
    last_frame: int
    frames: int = 1
    scores: list[float] = field(default_factory=list)
    fused: float | None = None


@dataclass(frozen=True)
class TrackedFace:
    """A frame's face with its track: the track's fused spoof score and its verdict so far (None: too few frames)."""

    track: int
    spoof_score: float | None
    label: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"track": self.track, "track_spoof_score": self.spoof_score, "track_label": self.label}


class FaceTracker:
    """The tracks of one video or camera; `update` once per frame, `finish` at the end (see the module docstring)."""

    def __init__(
        self,
        threshold: float = 0.5,
        min_iou: float = 0.3,
        max_gap: int = 15,
        window: int = 15,
        min_frames: int = 5,
        fusion: str = "mean",
        ema_weight: float = 0.3,
    ) -> None:
        if fusion not in FUSIONS:
            raise ConfigError(f"tracking.fusion={fusion!r}: choose one of {', '.join(FUSIONS)}")
        if not 0 < ema_weight <= 1:
            raise ConfigError(f"tracking.ema_weight={ema_weight}: give a weight in (0, 1]")
        if window < 1 or min_frames < 1 or max_gap < 0:
            raise ConfigError("tracking.window and tracking.min_frames must be >= 1, tracking.max_gap >= 0")
        self.threshold = threshold
        self.min_iou = min_iou
        self.max_gap = max_gap
        self.window = window
        self.min_frames = min_frames
        self.fusion = fusion
        self.ema_weight = ema_weight
        self.live: list[Track] = []
        self.ended: list[Track] = []
        self.next_id = 0

    def update(self, frame: int, predictions: list[FacePrediction]) -> list[TrackedFace]:
        """Assign each of a frame's faces to a track (a new one when none overlaps enough); one TrackedFace each."""
        self.end_unseen(frame)
        pairs = sorted(
            (
                (box_iou(track.box, prediction.face.box), t, p)
                for t, track in enumerate(self.live)
                for p, prediction in enumerate(predictions)
            ),
            reverse=True,
        )
        chosen: dict[int, Track] = {}
        used_tracks: set[int] = set()
        for iou, t, p in pairs:
            if iou >= self.min_iou and t not in used_tracks and p not in chosen:
                chosen[p] = self.live[t]
                used_tracks.add(t)
        tracked = []
        for p, prediction in enumerate(predictions):
            track = chosen.get(p)
            if track is None:
                track = Track(self.next_id, prediction.face.box, frame, frame, frames=0)
                self.next_id += 1
                self.live.append(track)
            track.box, track.last_frame, track.frames = prediction.face.box, frame, track.frames + 1
            if prediction.status == "judged":
                self.add_score(track, prediction.spoof_score)
            tracked.append(TrackedFace(track.id, track.fused, self.label(track)))
        return tracked

    def add_score(self, track: Track, score: float) -> None:
        track.scores.append(score)
        if self.fusion == "mean":
            recent = track.scores[-self.window :]
            track.fused = sum(recent) / len(recent)
        else:
            track.fused = (
                score if track.fused is None else self.ema_weight * score + (1 - self.ema_weight) * track.fused
            )

    def label(self, track: Track) -> str | None:
        if len(track.scores) < self.min_frames or track.fused is None:
            return None
        return "real" if track.fused <= self.threshold else "spoof"

    def end_unseen(self, frame: int) -> None:
        ending = [track for track in self.live if frame - track.last_frame > self.max_gap]
        self.live = [track for track in self.live if track not in ending]
        self.ended += ending

    def finish(self) -> list[dict[str, Any]]:
        """One decision per track of the video, in the order they began: `undecided` with too few judged frames."""
        tracks = sorted(self.ended + self.live, key=lambda track: track.id)
        self.live, self.ended = [], []
        return [
            {
                "track": track.id,
                "first_frame": track.first_frame,
                "last_frame": track.last_frame,
                "frames": track.frames,
                "judged_frames": len(track.scores),
                "spoof_score": track.fused,
                "label": self.label(track) or "undecided",
            }
            for track in tracks
        ]
