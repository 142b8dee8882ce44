"""Does the Fourier-transform auxiliary loss help on the generated data?

Runs the default job (`python train.py`: MiniFASNetV2SE, 80 px, SGD, 25 epochs) with
`model.ft_weight` 0 (cross-entropy only) and 0.5 (the default) over three seeds, collects each
run's test metrics and writes results.md next to this script. A run whose report already exists in
`--out` is read, not repeated (the same seed gives the same metrics, `tests/test_train.py`).

    python experiments/ft_weight_ablation/run.py                      # ft_weight 0 and 0.5, seeds 42 1 2
    python experiments/ft_weight_ablation/run.py --weights 0 0.25 0.5 --seeds 42
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
METRICS = ("test/auroc", "test/eer", "test/acer", "test/tpr_at_fpr_1e-2")


def run(ft_weight: float, seed: int, out: Path) -> dict[str, float]:
    run_dir = out / f"ft{ft_weight:g}_seed{seed}"
    report = run_dir / "report" / "metrics.json"
    seconds = None
    if not report.is_file():
        command = [sys.executable, "train.py", f"model.ft_weight={ft_weight}", f"seed={seed}"]
        command += [f"hydra.run.dir={run_dir}", "+trainer.enable_progress_bar=false", "~callbacks.export"]
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        seconds = round(time.perf_counter() - start)
    metrics = json.loads(report.read_text())["metrics"]
    return {"ft_weight": ft_weight, "seed": seed, "seconds": seconds, **{k: metrics[k] for k in METRICS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "logs" / "ft_weight_ablation")
    args = parser.parse_args()
    rows = [run(weight, seed, args.out) for weight in args.weights for seed in args.seeds]
    (HERE / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "# FT-weight ablation on the generated data",
        "",
        f"`python experiments/ft_weight_ablation/run.py --weights {' '.join(f'{w:g}' for w in args.weights)} "
        f"--seeds {' '.join(map(str, args.seeds))}` on {platform.machine()}, {os.cpu_count()} cores: the default "
        "job (MiniFASNetV2SE 80 px, SGD lr 0.02, 25 epochs) on the embedded synthetic set, 301 test crops.",
        "",
        "| ft_weight | seed | test AUROC | EER | ACER | TPR@FPR=1e-2 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['ft_weight']:g} | {r['seed']} | {r['test/auroc']:.4f} | {r['test/eer']:.4f} | {r['test/acer']:.4f} "
        f"| {r['test/tpr_at_fpr_1e-2']:.4f} |"
        for r in rows
    ]
    lines += ["", "| ft_weight | mean test AUROC | min | max |", "|---|---|---|---|"]
    for weight in args.weights:
        aurocs = [r["test/auroc"] for r in rows if r["ft_weight"] == weight]
        lines.append(f"| {weight:g} | {statistics.mean(aurocs):.4f} | {min(aurocs):.4f} | {max(aurocs):.4f} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
