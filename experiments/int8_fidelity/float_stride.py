"""How much INT8 fidelity does keeping the high-resolution layers in float buy (`quantization.float_stride`)?

For each training run given, re-quantizes its FP32 export with the `static` recipe at several
`float_stride` values and scores INT8 against FP32 on two sets of synthetic crops:
- held-out subjects 32-63, generated with the same renderer (`data.synthetic.test_subjects=40` adds
  them after the test split's subjects 24-31): the set the default was chosen on;
- the test split itself (subjects 24-31, 301 crops), reported after the choice, not used for it.
Also the INT8 file size and the single-thread batch-1 latency at the run's input size.

    python experiments/int8_fidelity/float_stride.py logs/default_recipe/sgd_lr0.02_seed{42,1,2}
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from fas.data.datamodule import datamodule_for
from fas.export.parity import batched_logits, latency_ms
from fas.export.pipeline import calibration_images, labelled_images
from fas.export.quantize import QuantizationRecipe, quantize
from fas.inference.backends import OnnxBackend, load_backend

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TEST_CROPS = 301  # the test split's subjects come first in the enlarged test folder
STRIDES = (0, 2, 4, 8)


def scores(int8: np.ndarray, fp32: np.ndarray, targets: np.ndarray, real: int) -> dict[str, float]:
    live_fp32, live_int8 = fp32.argmax(1) == real, int8.argmax(1) == real
    margin = lambda logits: logits[:, real] - np.delete(logits, real, axis=1).max(axis=1)  # noqa: E731
    return {
        "crops": len(targets),
        "agreement_pct": 100 * float(np.mean(live_fp32 == live_int8)),
        "accuracy_delta_points": 100 * float(np.mean(int8.argmax(1) == targets) - np.mean(fp32.argmax(1) == targets)),
        "mean_abs_margin_error": float(np.abs(margin(int8) - margin(fp32)).mean()),
    }


def study(run_dir: Path, data_dir: Path, work: Path) -> list[dict]:
    checkpoint = next((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    overrides = [
        f"ckpt_path={checkpoint}",
        f"paths.root_dir={REPO}",
        f"paths.output_dir={run_dir}",
        f"paths.data_dir={data_dir}",
        "data.synthetic.test_subjects=40",
    ]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("export", overrides=overrides)
    info = load_backend(checkpoint).info
    datamodule = datamodule_for(cfg.data, info)
    datamodule.prepare_data()
    datamodule.setup()
    crops = labelled_images(datamodule.splits["test"])
    calibration = calibration_images(datamodule, QuantizationRecipe().calibration_samples)
    fp32_path = run_dir / "export" / "model.onnx"
    fp32 = batched_logits(OnnxBackend(fp32_path), crops.images)
    real = info.class_scheme.real_class_index
    recorded = json.loads((run_dir / "export" / "report.json").read_text())
    first = 100 * float(np.mean(fp32[:TEST_CROPS].argmax(1) == crops.targets[:TEST_CROPS]))
    if recorded["test_images"] != TEST_CROPS or abs(recorded["fp32"]["accuracy"] - first) > 1e-9:
        raise SystemExit(f"{run_dir}: the first {TEST_CROPS} crops are not the run's test split")
    rows = []
    for stride in STRIDES:
        path = quantize(
            fp32_path, work / f"{run_dir.name}_s{stride}.onnx", QuantizationRecipe(float_stride=stride), calibration
        )
        int8 = batched_logits(OnnxBackend(path), crops.images)
        held, test = slice(TEST_CROPS, None), slice(0, TEST_CROPS)
        rows.append(
            {
                "run": run_dir.name,
                "float_stride": stride,
                "held_out": scores(int8[held], fp32[held], crops.targets[held], real),
                "test": scores(int8[test], fp32[test], crops.targets[test], real),
                "file_bytes": path.stat().st_size,
                "latency_ms": latency_ms(path, info.convention.input_size, runs=300),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# INT8 fidelity vs `float_stride`",
        "",
        f"`{command}` (FP32 latency of these 80x80 models: about 0.57 ms).",
        "",
        "| run | float_stride | held-out agreement | held-out accuracy change | held-out mean abs margin error "
        "| test agreement | test accuracy change | KiB | ms, 1 thread |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        h, t = r["held_out"], r["test"]
        lines.append(
            f"| {r['run']} | {r['float_stride']} | {h['agreement_pct']:.2f}% | {h['accuracy_delta_points']:+.2f} "
            f"| {h['mean_abs_margin_error']:.3f} | {t['agreement_pct']:.2f}% | {t['accuracy_delta_points']:+.2f} "
            f"| {r['file_bytes'] / 1024:.0f} | {r['latency_ms']:.3f} |"
        )
    held = rows[0]["held_out"]["crops"]
    lines += ["", f"Held-out: {held} crops of subjects 32-63; test: the {TEST_CROPS} crops of the test split."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for run_dir in args.run_dirs for row in study(run_dir.resolve(), Path(tmp) / "data", Path(tmp))]
    command = "python experiments/int8_fidelity/float_stride.py " + " ".join(str(d) for d in args.run_dirs)
    (HERE / "float_stride.json").write_text(json.dumps(rows, indent=2) + "\n")
    (HERE / "float_stride.md").write_text(markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    main()
