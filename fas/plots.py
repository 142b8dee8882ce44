"""Report figures (PNG, matplotlib without pyplot's global state): ROC, DET, PR, confusion matrices, score histograms.

Curves overlay every model; confusion matrices and histograms get one panel per model.
Curves come from `fas.metrics`, so the plots show exactly what the numbers report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from statistics import NormalDist

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fas.metrics import Scores, confusion_matrix, det_curve, pr_curve, roc_curve

PLOTS = ("roc", "det", "pr", "confusion", "histogram")
# Later models are dashed / dotted so identical curves (a checkpoint and its export) stay visible.
LINE_STYLES = ("-", "--", ":", "-.")
DET_TICKS = (0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95)
DET_LIMITS = (5e-4, 0.99)
UNDEFINED_TEXT = "undefined: needs live and spoof samples"


def write_plots(
    plot_dir: str | Path, scores: Mapping[str, Scores], thresholds: Mapping[str, float | None]
) -> dict[str, Path]:
    """Write every plot of `PLOTS` as `<plot_dir>/<name>.png`; returns name -> path."""
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "roc": roc_figure(scores),
        "det": det_figure(scores),
        "pr": pr_figure(scores),
        "confusion": confusion_figure(scores, thresholds),
        "histogram": histogram_figure(scores, thresholds),
    }
    paths = {}
    for name, figure in figures.items():
        paths[name] = plot_dir / f"{name}.png"
        figure.savefig(paths[name], dpi=100, bbox_inches="tight")
    return paths


def _curve_figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(5.5, 5))
    axes = figure.subplots()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def _note_undefined(axes: Axes, names: list[str]) -> None:
    if names:
        axes.text(0.5, 0.5, f"{', '.join(names)}: {UNDEFINED_TEXT}", ha="center", transform=axes.transAxes, wrap=True)


def roc_figure(scores: Mapping[str, Scores]) -> Figure:
    figure, axes = _curve_figure(
        "ROC (attack = positive)", "BPCER (live flagged as attack)", "1 - APCER (attacks caught)"
    )
    undefined = []
    for index, (name, s) in enumerate(scores.items()):
        curve = roc_curve(s.score, s.is_spoof)
        if curve is None:
            undefined.append(name)
            continue
        axes.plot(*curve, label=name, drawstyle="steps-post", linestyle=_style(index))
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    _finish(axes, undefined)
    return figure


def _probit(values: np.ndarray) -> np.ndarray:
    clipped = np.clip(values, *DET_LIMITS)
    return np.array([NormalDist().inv_cdf(float(v)) for v in clipped])


def det_figure(scores: Mapping[str, Scores]) -> Figure:
    figure, axes = _curve_figure("DET (normal-deviate scales)", "APCER", "BPCER")
    undefined = []
    for index, (name, s) in enumerate(scores.items()):
        curve = det_curve(s.score, s.is_spoof)
        if curve is None:
            undefined.append(name)
            continue
        apcer, bpcer = curve
        axes.plot(_probit(apcer), _probit(bpcer), label=name, linestyle=_style(index))
    ticks = _probit(np.array(DET_TICKS))
    labels = [f"{100 * t:g}%" for t in DET_TICKS]
    limits = _probit(np.array(DET_LIMITS))
    axes.set_xticks(ticks, labels)
    axes.set_yticks(ticks, labels)
    axes.set_xlim(*limits)
    axes.set_ylim(*limits)
    axes.plot(limits, limits, color="grey", linestyle=":", linewidth=1)  # the EER line
    _finish(axes, undefined)
    return figure


def pr_figure(scores: Mapping[str, Scores]) -> Figure:
    figure, axes = _curve_figure("Precision-recall (attack = positive)", "recall (attacks caught)", "precision")
    undefined = []
    for index, (name, s) in enumerate(scores.items()):
        curve = pr_curve(s.score, s.is_spoof)
        if curve is None:
            undefined.append(name)
            continue
        axes.plot(*curve, label=name, drawstyle="steps-post", linestyle=_style(index))
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    _finish(axes, undefined)
    return figure


def _style(index: int) -> str:
    return LINE_STYLES[index % len(LINE_STYLES)]


def _finish(axes: Axes, undefined: list[str]) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best", fontsize="small")
    _note_undefined(axes, undefined)


def _panels(count: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


def confusion_figure(scores: Mapping[str, Scores], thresholds: Mapping[str, float | None]) -> Figure:
    figure, panels = _panels(len(scores), 4.2, 3.8)
    for axes, (name, s) in zip(panels, scores.items(), strict=True):
        threshold = thresholds.get(name)
        axes.set_title(f"{name}\nthreshold {threshold:.4g}" if threshold is not None else name, fontsize="medium")
        axes.set_xticks([0, 1], ["live", "attack"])
        axes.set_yticks([0, 1], ["live", "attack"])
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        if threshold is None or len(s) == 0:
            axes.text(0.5, 0.5, "undefined: no decision threshold", ha="center", va="center", transform=axes.transAxes)
            continue
        matrix = np.array(confusion_matrix(s.score, s.is_spoof, threshold), dtype=float)
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for row in range(2):
            for column in range(2):
                colour = "white" if shares[row, column] > 0.5 else "black"
                text = f"{int(matrix[row, column])}\n{100 * shares[row, column]:.1f}%"
                axes.text(column, row, text, ha="center", va="center", color=colour)
    return figure


def histogram_figure(scores: Mapping[str, Scores], thresholds: Mapping[str, float | None]) -> Figure:
    figure, panels = _panels(len(scores), 5.0, 3.6)
    bins = np.linspace(0, 1, 41)
    for axes, (name, s) in zip(panels, scores.items(), strict=True):
        axes.set_title(name, fontsize="medium")
        axes.set_xlabel("spoof score")
        axes.set_ylabel("share of the class")
        for label, mask, colour in (("live", ~s.is_spoof, "tab:green"), ("attack", s.is_spoof, "tab:red")):
            if mask.any():
                values = s.score[mask]
                weights = np.full(len(values), 1 / len(values))
                axes.hist(
                    values, bins=bins, weights=weights, alpha=0.55, color=colour, label=f"{label} ({len(values)})"
                )
        threshold = thresholds.get(name)
        if threshold is not None:
            axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
        axes.set_xlim(0, 1)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    return figure
