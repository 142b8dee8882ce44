"""LiteRT (TFLite) vs ONNX Runtime: our FP32 and INT8 files of the same networks, 1 thread, batch 1.

    python experiments/tflite_latency/benchmark.py        # needs the mobile extra; writes results.json/.md here

Models: MiniFASNetV2SE-128 with suri-liveness's weights (../shared/reference/suri-liveness/best_model.pth,
its convention: RGB / 255, 1.5x reflect crop) and Silent-Face's 80x80 pair (2.7x MiniFASNetV2 and 4.0x
MiniFASNetV1SE, BGR 0..255). Each goes through the code path of `python export.py format=[onnx,tflite]`:
ONNX FP32 rewritten for CPU + static QDQ INT8; LiteRT FP32 (NHWC input) + full-integer INT8 with
float I/O, both calibrated on 128 crops of the embedded synthetic training set in the model's convention.

Timing: ONNX Runtime CPU provider and the ai-edge-litert interpreter with its default XNNPACK delegate,
each with 1 thread, batch 1; all files of a model are timed in interleaved rounds (a busy neighbour slows
all of them alike) and each figure is the median over every run. The CPU and its vector ISA are printed
and recorded with the figures: x86 INT8 speed depends on AVX2 vs AVX-512 VNNI, and a phone's ARM cores
run these XNNPACK kernels differently again, so compare ratios, on the CPU you deploy to.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from fas.data.datamodule import datamodule_for
from fas.export.parity import interleaved_times
from fas.export.pipeline import export_model, export_tflite_model
from fas.export.quantize import QuantizationRecipe
from fas.export.tflite import TfliteRecipe
from fas.hardware import cpu_info, describe_cpu
from fas.inference.backends import load_backend

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
MODELS = {
    "MiniFASNetV2SE-128 (suri-liveness weights)": REFERENCE / "suri-liveness/best_model.pth",
    "MiniFASNetV2-80, crop 2.7 (Silent-Face)": REFERENCE / "silentface/2.7_80x80_MiniFASNetV2.pth",
    "MiniFASNetV1SE-80, crop 4.0 (Silent-Face)": REFERENCE / "silentface/4_0_0_80x80_MiniFASNetV1SE.pth",
}
ROUNDS, RUNS_PER_ROUND, WARMUP = 10, 100, 50
DATA = OmegaConf.create(
    {
        "_target_": "fas.data.datamodule.FaceDataModule",
        "root": str(REPO / "data" / "synthetic"),
        "class_scheme": None,
        "synthetic": {},
        "num_workers": 0,
    }
)


def export_all(weights: Path, directory: Path) -> dict[str, Path]:
    info = load_backend(weights).info
    onnx = export_model(weights, directory, QuantizationRecipe(), datamodule_for(DATA, info))
    tfl = export_tflite_model(weights, directory, TfliteRecipe(), datamodule_for(DATA, info))
    return {"ONNX FP32": onnx.fp32, "ONNX INT8": onnx.int8, "LiteRT FP32": tfl.fp32, "LiteRT INT8": tfl.int8}


def interleaved_latency(files: dict[str, Path], size: int) -> dict[str, float]:
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, size, size)).astype(np.float32)
    backends = {name: load_backend(path, threads=1) for name, path in files.items()}
    calls = {name: functools.partial(backend.logits, image) for name, backend in backends.items()}
    times = interleaved_times(calls, ROUNDS, RUNS_PER_ROUND, WARMUP)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def main() -> None:
    print("CPU:", describe_cpu(), flush=True)
    results = {"cpu": cpu_info(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (model, weights) in enumerate(MODELS.items()):
            files = export_all(weights, Path(tmp) / str(index))
            size = load_backend(weights).info.convention.input_size
            latency = interleaved_latency(files, size)
            reports = {
                kind: json.loads((Path(tmp) / str(index) / f"{name}.json").read_text())
                for kind, name in (("ONNX", "report"), ("LiteRT", "report_tflite"))
            }
            results["models"][model] = {
                name: {
                    "latency_ms": round(latency[name], 3),
                    "bytes": path.stat().st_size,
                    "file": path.name,
                    **agreement(reports[name.split()[0]], name.split()[1]),
                }
                for name, path in files.items()
            }
            print(model, json.dumps(results["models"][model]), flush=True)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results.md").write_text(markdown(results))
    print(markdown(results))


def agreement(report: dict, precision: str) -> dict[str, float]:
    """From the export's parity report (synthetic test crops): FP32 vs PyTorch, INT8 vs that format's FP32."""
    if precision == "FP32":
        return {"max_abs_logit_diff_vs_pytorch": report["fp32"]["max_abs_logit_diff_vs_pytorch"]}
    return {
        "decision_agreement_vs_fp32": report["int8"]["decision_agreement"],
        "accuracy_delta_points": report["int8"]["accuracy_delta_points"],
    }


def markdown(results: dict) -> str:
    lines = [
        "# LiteRT (TFLite) vs ONNX Runtime: 1 thread, batch 1",
        "",
        f"CPU: {describe_cpu(results['cpu'])}. Command: `python experiments/tflite_latency/benchmark.py`. ONNX "
        "Runtime CPU provider; ai-edge-litert interpreter with XNNPACK. Parity on the synthetic test crops.",
        "",
        "| model | file | ms / image | x ONNX FP32 | size (KiB) | parity |",
        "|---|---|---|---|---|---|",
    ]
    for model, files in results["models"].items():
        base = files["ONNX FP32"]["latency_ms"]
        for name, row in files.items():
            if "max_abs_logit_diff_vs_pytorch" in row:
                parity = f"max abs logit diff vs PyTorch {row['max_abs_logit_diff_vs_pytorch']:.1e}"
            else:
                parity = (
                    f"{100 * row['decision_agreement_vs_fp32']:.1f}% of decisions as FP32, "
                    f"accuracy {row['accuracy_delta_points']:+.2f} points"
                )
            lines.append(
                f"| {model} | {name} (`{row['file']}`) | {row['latency_ms']:.2f} | {base / row['latency_ms']:.2f} | "
                f"{row['bytes'] / 1024:.0f} | {parity} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
