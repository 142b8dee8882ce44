"""Report figures: every plot is written, shows one curve per model, and survives single-class data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fas.metrics import Scores
from fas.plots import PLOTS, write_plots

# matplotlib's first two colours (BGR), used for the first and second model's curves.
BLUE, ORANGE = (180, 119, 31), (14, 127, 255)


def colour_pixels(image: np.ndarray, bgr: tuple[int, int, int]) -> int:
    return int(np.sum(np.all(np.abs(image.astype(int) - bgr) <= 12, axis=2)))


def scores(seed: int, n: int = 300) -> Scores:
    rng = np.random.default_rng(seed)
    types = rng.choice([0, 1, 7], size=n)
    return Scores(np.clip(rng.normal(0.3 + 0.4 * (types != 0), 0.15), 0, 1), types)


def test_every_plot_is_written_with_a_curve_per_model(tmp_path: Path) -> None:
    paths = write_plots(tmp_path, {"a": scores(0), "b": scores(1)}, {"a": 0.5, "b": 0.4})
    assert list(paths) == list(PLOTS)
    for name, path in paths.items():
        image = cv2.imread(str(path))
        assert image is not None and min(image.shape[:2]) > 200, name
    for name in ("roc", "det", "pr"):
        image = cv2.imread(str(paths[name]))
        assert colour_pixels(image, BLUE) > 100 and colour_pixels(image, ORANGE) > 100, name
    wide = cv2.imread(str(paths["confusion"]))
    assert wide.shape[1] > 1.5 * wide.shape[0]  # one panel per model, side by side


def test_single_class_and_missing_threshold_do_not_break_plots(tmp_path: Path) -> None:
    only_live = Scores([0.1, 0.3, 0.2], [0, 0, 0])
    paths = write_plots(tmp_path, {"live only": only_live}, {"live only": None})
    roc = cv2.imread(str(paths["roc"]))
    assert colour_pixels(roc, BLUE) == 0  # no curve drawn, the panel says why instead
    assert all(cv2.imread(str(p)) is not None for p in paths.values())
