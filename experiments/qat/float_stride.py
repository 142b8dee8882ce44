"""QAT with the high-resolution layers float (`quantization=qat quantization.float_stride=4`) against the static
recipe and every-layer QAT, per default-run checkpoint (issue 22, seventh session).

`augmented.py` found that no every-layer-8-bit file keeps all but one of the 301 test decisions: too many crops
sit at the boundary for the rounding of ~150 uint8 activations. The static recipe's answer is to keep the
high-resolution layers float (99.0-99.7% over six seeds); this measures whether QAT does better with the same
layers float, and what that costs in speed. Each checkpoint is exported three ways through `export(cfg)` (what
`python export.py` runs), then the FP32 file and the three INT8 files are timed in interleaved rounds (ONNX
Runtime, 1 thread, batch 1). Printed per checkpoint and recipe: decisions as FP32 and accuracy change (the export
report's, on the test crops: subjects held out from training, calibration and QAT), size, Conv/Gemm run int8 /
float, median ms and FP32 / file. Writes `float_stride_3seeds.json` here.

    python experiments/qat/float_stride.py <fas .ckpt> [<fas .ckpt> ...] -- [export.py overrides]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from benchmark import interleaved_latency
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from sensitivity import CONFIGS, start

from fas.export.pipeline import export
from fas.hardware import describe_cpu
from fas.inference.backends import load_backend

RECIPES = {
    "static (default, float_stride=4)": ["quantization=static"],
    "qat, every layer 8-bit": ["quantization=qat"],
    "qat, float_stride=4": ["quantization=qat", "quantization.float_stride=4"],
}
HERE = Path(__file__).resolve().parent


def export_with(checkpoint: str, recipe: list[str], overrides: list[str], output_dir: Path):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt_path={checkpoint}", *recipe, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    return export(cfg)


def main() -> None:
    checkpoints, overrides = start(sys.argv[1:])
    records = []
    for checkpoint in checkpoints:
        size = load_backend(checkpoint).info.convention.input_size
        with tempfile.TemporaryDirectory() as tmp:
            results = {
                name: export_with(checkpoint, recipe, overrides, Path(tmp) / str(i))
                for i, (name, recipe) in enumerate(RECIPES.items())
            }
            files = {"FP32": next(iter(results.values())).fp32, **{name: r.int8 for name, r in results.items()}}
            latency = interleaved_latency(files, size)
        print(f"{checkpoint} ({size} px): FP32 {latency['FP32']:.3f} ms", flush=True)
        for name, result in results.items():
            int8 = result.report["int8"]
            record = {
                "checkpoint": checkpoint,
                "recipe": name,
                "decision_agreement": int8["decision_agreement"],
                "accuracy_change_points": int8["accuracy_delta_points"],
                "file_bytes": int8["file_bytes"],
                "layers": int8["layers"],
                "ms": latency[name],
                "fp32_over_file": latency["FP32"] / latency[name],
            }
            records.append(record)
            print(
                f"  {name}: {100 * record['decision_agreement']:.2f}% as FP32, accuracy "
                f"{record['accuracy_change_points']:+.2f} points, {record['file_bytes'] / 1024:.0f} KiB, "
                f"int8 / float {int8['layers']['int8']} / {int8['layers']['float']}, {record['ms']:.3f} ms "
                f"({record['fp32_over_file']:.2f}x FP32)",
                flush=True,
            )
    (HERE / "float_stride_3seeds.json").write_text(json.dumps({"cpu": describe_cpu(), "rows": records}, indent=1))


if __name__ == "__main__":
    main()
