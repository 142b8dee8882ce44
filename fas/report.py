"""The evaluation report: `metrics.json` (stable keys), `report.md`, a self-contained `report.html` and `plots/`.

Training (`fas.train`) and `evaluate.py` both write it from `ModelEvaluation`s, so a run's report and a
later evaluation of its checkpoint read the same. `metrics.json` holds rates as fractions and `null` for
undefined metrics, each explained under `undefined`; the Markdown and HTML show rates in percent.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

from fas.convention import ModelInfo
from fas.metrics import (
    APCER_TARGETS,
    BREAKDOWNS,
    CELEBA_FPRS,
    SOURCE_KEYS,
    PadResult,
    Scores,
    ThresholdChoice,
)
from fas.plots import write_plots

REPORT_FORMAT = 1
UNDEFINED = "undefined"
LABELS = {
    "auroc": "ROC-AUC",
    "average_precision": "AP",
    "eer": "EER",
    "threshold": "threshold",
    "apcer": "APCER (worst type)",
    "apcer_pooled": "APCER (pooled)",
    "bpcer": "BPCER",
    "acer": "ACER",
    "hter": "HTER",
    "bpcer_at_apcer_1pct": "BPCER@APCER=1%",
    "bpcer_at_apcer_5pct": "BPCER@APCER=5%",
    "tpr_at_fpr_1e-2": "TPR@FPR=1e-2",
    "tpr_at_fpr_5e-3": "TPR@FPR=5e-3",
    "tpr_at_fpr_1e-3": "TPR@FPR=1e-3",
    "accuracy": "accuracy",
    "accuracy_live": "live accuracy",
    "accuracy_spoof": "spoof accuracy",
}
RANKING_KEYS = ("auroc", "average_precision", "eer", *APCER_TARGETS, *CELEBA_FPRS)
DECISION_KEYS = (
    "threshold",
    "apcer",
    "apcer_pooled",
    "bpcer",
    "acer",
    "hter",
    "accuracy",
    "accuracy_live",
    "accuracy_spoof",
)
PLAIN_KEYS = {"auroc", "average_precision", "threshold"}  # shown as numbers; every other metric is a rate (%)
DEFINITIONS = (
    "Spoof score = 1 - softmax[real class]; a sample is classified as an attack when its score >= the threshold.",
    "APCER: share of attacks classified live, per attack type; 'worst type' is the ISO/IEC 30107-3 maximum, "
    "'pooled' counts every attack together. BPCER: share of live samples classified attack. "
    "ACER = (APCER worst type + BPCER) / 2. HTER = (APCER pooled + BPCER) / 2.",
    "The threshold is chosen on the validation split (its EER point, or the lowest BPCER at a target APCER) "
    "and applied unchanged to the evaluated split; ROC-AUC, AP, EER, BPCER@APCER and TPR@FPR need no threshold.",
    "TPR@FPR is CelebA-Spoof's intra-test metric: the threshold is the live score with int(FPR x lives) live "
    "scores above it; TPR is the share of attacks strictly above it.",
    "Breakdowns: APCER / BPCER of each condition at the threshold, and the ROC-AUC of the condition's attacks "
    "against every live sample (CelebA-Spoof labels live samples with condition 'live').",
    "'undefined' means the data cannot define the metric (e.g. no attack samples); the reason is listed per model.",
)


@dataclass(frozen=True)
class ModelEvaluation:
    """One model scored on one split: what the report shows for it."""

    name: str
    path: str | None
    info: ModelInfo
    threshold: ThresholdChoice
    scores: Scores
    result: PadResult
    per_source: dict[str, PadResult] = field(default_factory=dict)  # several data sources: each alone
    data: str = ""  # the data scored, e.g. "folder (/data/mine)"
    # Per source: its own threshold where the rule chose one on the data (else the model's applies), and
    # how many of its records could not be used.
    source_thresholds: dict[str, ThresholdChoice] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    # Capture change name -> its figures (`fas.metrics.stress_metrics`), when evaluate.py ran a stress preset.
    stress: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # One decision per video (the mean spoof score of its frames) at the model's threshold, for sources whose frames
    # name their video; None otherwise.
    video: PadResult | None = None

    def source_threshold(self, source: str) -> ThresholdChoice:
        return self.source_thresholds.get(source, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "backbone": self.info.backbone,
            "class_scheme": self.info.class_scheme.name,
            "convention": self.info.convention.to_dict(),
            "threshold_choice": self.threshold.to_dict(),
            **self.result.to_dict(),
            "per_source": {
                name: {
                    **result.to_dict(),
                    "threshold_choice": self.source_threshold(name).to_dict(),
                    "skipped": self.skipped.get(name, 0),
                }
                for name, result in self.per_source.items()
            },
            "stress": self.stress,
            "video": self.video.to_dict() if self.video is not None else None,
        }


@dataclass(frozen=True)
class ReportFiles:
    metrics: Path
    markdown: Path
    html: Path
    plots: dict[str, Path]


def unique_names(paths: Sequence[str | Path]) -> list[str]:
    """Short display names for model files: the file name, with parent folders added where names collide."""
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{name} #{i + 1}" for i, name in enumerate(names)]


def flat_metrics(
    evaluations: Sequence[ModelEvaluation], split: str, scopes: Sequence[str] | None = None
) -> dict[str, float | None]:
    """`<split>/<metric>` for one model, `<model>/<split>/<metric>` for several (or `<scope>/<metric>` with each
    model's `scopes`, e.g. `test` and `int8/test`): metrics.json's `metrics` and the logged scalars (what sweep
    summaries and dashboards read)."""
    flat = {}
    if scopes is None:
        scopes = [split] if len(evaluations) == 1 else [f"{e.name}/{split}" for e in evaluations]
    for e, scope in zip(evaluations, scopes, strict=True):
        flat.update({f"{scope}/{key}": value for key, value in e.result.metrics.items()})
        for source, result in e.per_source.items():
            flat.update({f"{scope}/{source}/{key}": result.metrics[key] for key in SOURCE_KEYS})
        if e.video is not None:
            flat.update({f"{scope}/video/{key}": e.video.metrics[key] for key in VIDEO_KEYS})
        for change, figures in e.stress.items():
            flat.update({f"{scope}/stress/{change}/{key}": figures[key] for key in ("auroc", "hter", "flipped")})
    return flat


def write_report(
    report_dir: str | Path,
    evaluations: Sequence[ModelEvaluation],
    split: str,
    extra_metrics: dict[str, float] | None = None,
    metric_scopes: Sequence[str] | None = None,
    **context: Any,
) -> ReportFiles:
    """Write metrics.json, report.md, report.html and plots/*.png under `report_dir`.

    metrics.json holds `metrics` (flat, see `flat_metrics`, plus `extra_metrics` such as the monitored
    validation score; `metric_scopes` names each model's keys) and `models` (everything per model). `context`
    (e.g. data root) is recorded at the top.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(
        report_dir / "plots",
        {e.name: e.scores for e in evaluations},
        {e.name: e.threshold.value for e in evaluations},
    )
    context = {"created": datetime.now().isoformat(timespec="seconds"), "split": split, **context}
    payload = {
        "format": REPORT_FORMAT,
        **context,
        "metrics": {**flat_metrics(evaluations, split, metric_scopes), **(extra_metrics or {})},
        "models": [e.to_dict() for e in evaluations],
    }
    metrics_path = report_dir / "metrics.json"
    metrics_path.write_text(json.dumps(_finite(payload), indent=2, default=str) + "\n")
    blocks = report_blocks(evaluations, context, plots)
    markdown_path = report_dir / "report.md"
    markdown_path.write_text(render_markdown(blocks, report_dir))
    html_path = report_dir / "report.html"
    html_path.write_text(render_html(blocks))
    return ReportFiles(metrics_path, markdown_path, html_path, plots)


def _finite(value: Any) -> Any:
    """NaN / inf -> None, recursively, so metrics.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def format_metric(key: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return UNDEFINED
    if key in PLAIN_KEYS:
        return f"{value:.4f}"
    return f"{100 * value:.2f}%"


# A report is a list of blocks rendered twice: ("h", level, text), ("p", text), ("table", headers, rows),
# ("image", title, path), ("list", items).
Block = tuple


def report_blocks(
    evaluations: Sequence[ModelEvaluation], context: dict[str, Any], plots: dict[str, Path]
) -> list[Block]:
    blocks: list[Block] = [("h", 1, "Face anti-spoofing evaluation")]
    blocks.append(("list", [f"{key}: {value}" for key, value in context.items()]))
    blocks.append(("h", 2, "Threshold-free metrics"))
    blocks.append(_summary_table(evaluations, RANKING_KEYS, with_counts=True))
    blocks.append(("h", 2, "At the decision threshold"))
    blocks.append(_summary_table(evaluations, DECISION_KEYS, with_counts=False))
    blocks.append(("h", 2, "APCER per attack type"))
    blocks.append(_apcer_table(evaluations))
    if any(e.per_source for e in evaluations):
        blocks.append(("h", 2, "Cross-dataset: ROC-AUC / HTER of each model on each data source"))
        blocks.append(_cross_table(evaluations))
        blocks.append(("h", 2, "Per data source"))
        blocks.append(_source_table(evaluations))
    if any(e.video is not None for e in evaluations):
        blocks.append(("h", 2, "Per video: one decision per video (the mean spoof score of its frames)"))
        blocks.append(_video_table(evaluations))
    if any(e.stress for e in evaluations):
        blocks.append(("h", 2, "Capture stress: the same faces under everyday changes"))
        blocks.append(_stress_table(evaluations))
    blocks.append(("h", 2, "Curves"))
    blocks += [("image", name, plots[name]) for name in ("roc", "det", "pr")]
    blocks.append(("h", 2, "Score distributions and confusion matrices"))
    blocks += [("image", name, plots[name]) for name in ("histogram", "confusion")]
    for evaluation in evaluations:
        blocks += _model_blocks(evaluation)
    blocks.append(("h", 2, "Definitions"))
    blocks.append(("list", list(DEFINITIONS)))
    return blocks


def _summary_table(evaluations: Sequence[ModelEvaluation], keys: Sequence[str], with_counts: bool) -> Block:
    headers = ["model", *(["live", "spoof"] if with_counts else []), *(LABELS[k] for k in keys)]
    rows = []
    for e in evaluations:
        counts = [str(e.result.counts["live"]), str(e.result.counts["spoof"])] if with_counts else []
        rows.append([e.name, *counts, *(format_metric(k, e.result.metrics[k]) for k in keys)])
    return ("table", headers, rows)


def _apcer_table(evaluations: Sequence[ModelEvaluation]) -> Block:
    types = list(dict.fromkeys(name for e in evaluations for name in e.result.apcer_per_type))
    rows = [[name, *(format_metric("apcer", e.result.apcer_per_type.get(name)) for e in evaluations)] for name in types]
    return ("table", ["attack type", *(e.name for e in evaluations)], rows)


def _cross_table(evaluations: Sequence[ModelEvaluation]) -> Block:
    """Models x data sources, one 'ROC-AUC / HTER' cell each."""
    sources = list(dict.fromkeys(source for e in evaluations for source in e.per_source))
    rows = [
        [
            e.name,
            *(
                f"{format_metric('auroc', r.metrics['auroc'])} / {format_metric('hter', r.metrics['hter'])}"
                if (r := e.per_source.get(source))
                else ""
                for source in sources
            ),
        ]
        for e in evaluations
    ]
    return ("table", ["model", *sources], rows)


def _source_table(evaluations: Sequence[ModelEvaluation]) -> Block:
    """Every model on every source: counts, its threshold, the metrics of SOURCE_KEYS and APCER per type."""
    rows = []
    for e in evaluations:
        for source, r in e.per_source.items():
            threshold = e.source_threshold(source)
            apcer = ", ".join(  # the types the source has
                f"{name} {format_metric('apcer', v)}" for name, v in r.apcer_per_type.items() if v is not None
            )
            rows.append(
                [
                    e.name,
                    source,
                    str(r.counts["live"]),
                    str(r.counts["spoof"]),
                    str(e.skipped.get(source, 0)),
                    f"{format_metric('threshold', threshold.value)} ({threshold.rule}"
                    + (f", {threshold.split})" if threshold.split else ")"),
                    *(format_metric(k, r.metrics[k]) for k in SOURCE_KEYS),
                    apcer,
                ]
            )
    headers = ["model", "source", "live", "spoof", "skipped", "threshold", *(LABELS[k] for k in SOURCE_KEYS)]
    return ("table", [*headers, "APCER per type"], rows)


VIDEO_KEYS = ("auroc", "eer", "apcer", "bpcer", "hter")


def _video_table(evaluations: Sequence[ModelEvaluation]) -> Block:
    """Every model's video-level figures beside its frame-level ones."""
    rows = []
    for e in evaluations:
        if e.video is None:
            continue
        for level, result in (("frames", e.result), ("videos", e.video)):
            counts = [str(result.counts["live"]), str(result.counts["spoof"])]
            rows.append([e.name, level, *counts, *(format_metric(k, result.metrics[k]) for k in VIDEO_KEYS)])
    return ("table", ["model", "decided on", "live", "spoof", *(LABELS[k] for k in VIDEO_KEYS)], rows)


STRESS_LABELS = {
    "auroc": "ROC-AUC",
    "auroc_change": "ROC-AUC change",
    "apcer": "APCER (worst type)",
    "bpcer": "BPCER",
    "hter": "HTER",
    "flipped": "decisions flipped",
    "mean_score_change": "mean score change",
}


def _stress_table(evaluations: Sequence[ModelEvaluation]) -> Block:
    """Every model under every capture change, at its own threshold, against its clean scores."""
    rows = []
    for e in evaluations:
        for change, figures in e.stress.items():
            rows.append([e.name, change, *(_stress_cell(key, figures.get(key)) for key in STRESS_LABELS)])
    return ("table", ["model", "change", *STRESS_LABELS.values()], rows)


def _stress_cell(key: str, value: float | None) -> str:
    """A change as a signed number, ROC-AUC as a number, a rate as a percentage."""
    if value is None:
        return UNDEFINED
    if key.endswith("_change"):
        return f"{value:+.4f}"
    return f"{value:.4f}" if key == "auroc" else f"{100 * value:.2f}%"


def _model_blocks(e: ModelEvaluation) -> list[Block]:
    convention = e.info.convention
    threshold = e.threshold
    chosen = f"rule {threshold.rule}" + (f" on the {threshold.split} split" if threshold.split else "")
    value = format_metric("threshold", threshold.value)
    blocks: list[Block] = [
        ("h", 2, f"Model {e.name}"),
        (
            "list",
            [
                f"file: {e.path or 'n/a'}",
                f"backbone: {e.info.backbone}; class scheme: {e.info.class_scheme.name} "
                f"(real class {e.info.class_scheme.real_class_index})",
                f"input: {convention.input_size}x{convention.input_size} {convention.color_order.upper()}, "
                f"pixel x {convention.pixel_scale:.6g}, mean {list(convention.mean)}, std {list(convention.std)}, "
                f"crop {convention.crop_mode} x{convention.crop_scale}",
                f"threshold: {value} ({chosen})" + (f"; {threshold.reason}" if threshold.reason else ""),
            ],
        ),
    ]
    matrix = e.result.confusion_matrix
    if matrix is not None:
        blocks.append(("h", 3, "Confusion matrix (rows: true, columns: predicted)"))
        blocks.append(
            (
                "table",
                ["", "predicted live", "predicted attack"],
                [["live", *map(str, matrix[0])], ["attack", *map(str, matrix[1])]],
            )
        )
    for attribute in BREAKDOWNS:
        if attribute not in e.result.breakdowns:
            continue  # the data does not record it (illumination and environment are CelebA-Spoof's)
        groups = e.result.breakdowns[attribute]
        blocks.append(("h", 3, f"By {attribute.replace('_', ' ')}"))
        rows = [
            [
                name,
                str(g["n_live"]),
                str(g["n_spoof"]),
                format_metric("apcer", g["apcer"]),
                format_metric("bpcer", g["bpcer"]),
                format_metric("auroc", g["auroc"]),
            ]
            for name, g in groups.items()
        ]
        blocks.append(("table", [attribute, "live", "spoof", "APCER", "BPCER", "ROC-AUC vs all live"], rows))
    if e.result.undefined:
        blocks.append(("h", 3, "Undefined metrics"))
        blocks.append(("list", [f"{key}: {reason}" for key, reason in e.result.undefined.items()]))
    return blocks


def render_markdown(blocks: Sequence[Block], report_dir: Path) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            lines += [f"{'#' * block[1]} {block[2]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "|".join("---" for _ in headers) + "|")
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
            lines.append("")
        elif kind == "image":
            lines += [f"![{block[1]}]({Path(block[2]).relative_to(report_dir).as_posix()})", ""]
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.45em; text-align: right; }
th { background: #f0f0f0; white-space: nowrap; } td:first-child, th:first-child { text-align: left; }
td.undefined { color: #999; font-style: italic; }
.figures img { max-width: 32%; vertical-align: top; } img.wide { max-width: 100%; }
.scroll { overflow-x: auto; }
"""


def render_html(blocks: Sequence[Block]) -> str:
    """One HTML file with the plots embedded as data URIs (opens anywhere, nothing beside it needed)."""
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>"]
    parts.append(f"<title>Face anti-spoofing evaluation</title><style>{STYLE}</style>")
    parts.append("</head><body>")
    for block in blocks:
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in block[2])
            parts.append(f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>")
        elif kind == "image":
            data = base64.b64encode(Path(block[2]).read_bytes()).decode("ascii")
            css = "wide" if block[1] in ("histogram", "confusion") else "curve"
            parts.append(f"<img class='{css}' alt='{esc(block[1])}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_cell(text: str) -> str:
    css = " class='undefined'" if text == UNDEFINED else ""
    return f"<td{css}>{html.escape(text)}</td>"


def summary_rows(evaluations: Sequence[ModelEvaluation]) -> tuple[list[str], list[list[Any]]]:
    """The comparison table as columns and raw rows (None for undefined), e.g. for a wandb Table."""
    keys = list(LABELS)
    return ["model", *keys], [[e.name, *(e.result.metrics[k] for k in keys)] for e in evaluations]


def source_rows(evaluations: Sequence[ModelEvaluation]) -> tuple[list[str], list[list[Any]]]:
    """The model x data source table as columns and raw rows, e.g. for a wandb Table."""
    columns = ["model", "source", "live", "spoof", "skipped", "threshold", *SOURCE_KEYS]
    rows = [
        [
            e.name,
            source,
            r.counts["live"],
            r.counts["spoof"],
            e.skipped.get(source, 0),
            e.source_threshold(source).value,
            *(r.metrics[k] for k in SOURCE_KEYS),
        ]
        for e in evaluations
        for source, r in e.per_source.items()
    ]
    return columns, rows


def log_scalars(loggers: Sequence[Logger], evaluations: Sequence[ModelEvaluation], split: str) -> None:
    """Every defined metric to every logger, named as in `flat_metrics`."""
    values = {key: value for key, value in flat_metrics(evaluations, split).items() if value is not None}
    for logger in loggers:
        logger.log_metrics(values)


def log_to_wandb(
    loggers: Sequence[Logger], evaluations: Sequence[ModelEvaluation], files: ReportFiles, prefix: str
) -> None:
    """The comparison table and the plots to every wandb logger (other loggers take scalars only)."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        columns, rows = summary_rows(evaluations)
        logger.log_table(key=f"{prefix}/summary", columns=columns, data=rows)
        if any(e.per_source for e in evaluations):
            columns, rows = source_rows(evaluations)
            logger.log_table(key=f"{prefix}/per_source", columns=columns, data=rows)
        logger.log_image(
            key=f"{prefix}/plots", images=[str(p) for p in files.plots.values()], caption=list(files.plots)
        )
