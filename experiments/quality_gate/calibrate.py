"""How often the quality gate (configs/quality/default.yaml) passes real faces, clean and under capture changes.

    python experiments/quality_gate/calibrate.py --tree replay=<trees>/replay --tree nuaa=<trees>/nuaa \
        --detector <face_detection_yunet_2023mar.onnx> [--faces 300]

For each folder tree: up to `--faces` live photos of its test part (seeded choice), YuNet's largest face on each,
the gate's measures and verdict on the clean frame and on the frame under each frame change of
configs/stress/light.yaml (the same face box and landmarks). Prints, per set and change, the share of faces passed
and of each reason, and the measures' 5th / 50th / 95th percentiles; writes results.json beside this file.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
from omegaconf import OmegaConf

from fas.data.sample import Sample
from fas.data.sources.folder import FolderSource
from fas.data.stress import capture_changes
from fas.detect import YuNetDetector, choose_face
from fas.hardware import cpu_info, describe_cpu
from fas.inference.quality import REASONS, QualityGate
from fas.media import read_image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def live_photos(root: Path, count: int) -> list[Sample]:
    records = [r for r in FolderSource(str(root)).records() if isinstance(r, Sample)]
    live = [r for r in records if r.spoof_type == 0 and r.split in ("test", None) and r.frame is None]
    rng = np.random.default_rng(0)
    return [live[i] for i in sorted(rng.choice(len(live), size=min(count, len(live)), replace=False))]


def summary(checks: list) -> dict:
    reasons = Counter(reason for check in checks for reason in check.reasons)
    measures = {key: [c.measures[key] for c in checks if c.measures[key] is not None] for key in checks[0].measures}
    return {
        "faces": len(checks),
        "passed": sum(c.passed for c in checks) / len(checks),
        "reasons": {reason: reasons[reason] / len(checks) for reason in REASONS if reasons[reason]},
        "percentiles_5_50_95": {
            key: [round(float(v), 2) for v in np.percentile(values, [5, 50, 95])] for key, values in measures.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="name=folder tree")
    parser.add_argument("--detector", required=True)
    parser.add_argument("--faces", type=int, default=300)
    args = parser.parse_args()
    print(describe_cpu(cpu_info()))
    gate = hydra.utils.instantiate(OmegaConf.load(REPO / "configs/quality/default.yaml").gate)
    assert isinstance(gate, QualityGate)
    preset = OmegaConf.load(REPO / "configs/stress/light.yaml")
    changes = [c for c in capture_changes(hydra.utils.instantiate(preset.changes, _convert_="all")) if c.frame]
    detector = YuNetDetector(args.detector)
    results = {}
    for tree in args.tree:
        name, root = tree.split("=", 1)
        checks: dict[str, list] = {"clean": [], **{c.name: [] for c in changes}}
        missed = 0
        for index, sample in enumerate(live_photos(Path(root), args.faces)):
            image = read_image(sample.path)
            face = choose_face(detector.detect(image))
            if face is None:
                missed += 1
                continue
            checks["clean"].append(gate.check(image, face))
            for change in changes:
                checks[change.name].append(gate.check(change.changed_frame(image, index), face))
        results[name] = {"no_face": missed, **{change: summary(found) for change, found in checks.items()}}
        print(f"\n{name}: {len(checks['clean'])} live faces ({missed} without a face)")
        for change, figures in results[name].items():
            if change != "no_face":
                shown = ", ".join(f"{r} {100 * v:.1f}%" for r, v in figures["reasons"].items())
                print(f"  {change:>20}: passed {100 * figures['passed']:5.1f}%  {shown}")
        print(f"  clean measures (5/50/95%): {results[name]['clean']['percentiles_5_50_95']}")
    (HERE / "results.json").write_text(json.dumps({"gate": vars(gate), "sets": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
