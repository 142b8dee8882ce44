"""Run reports: `report/metrics.json` in the run directory."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(report_dir: str | Path, metrics: Mapping[str, Any], **context: Any) -> Path:
    """Write `{"metrics": {...}, **context}` as `report_dir/metrics.json`; NaN/inf become null."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "metrics.json"
    payload = {"metrics": {k: _plain(v) for k, v in sorted(metrics.items())}, **context}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
