"""Single-thread batch-1 CPU latency of our MiniFASNetV2SE-128 exports vs the published suri-liveness files.

Our model is the published suri-liveness MiniFASNetV2SE (128x128, 2 classes): its weights are read
from ../shared/reference/suri-liveness/best_model.pth with `load_backbone_weights`, so all four files
hold the same network and the comparison is between export graphs and quantization recipes only.
Ours go through the code path of `python export.py`: `export_onnx` -> `optimize_for_cpu` -> static
QDQ INT8 calibrated on 128 crops of the embedded synthetic training set (suri's convention: RGB / 255,
1.5x box, reflect padding). Their files are `best_model.onnx` and `best_model_quantized.onnx`.

Timing: ONNX Runtime CPU provider, 1 intra-op thread, batch 1, all graph optimizations; the four
models are timed in interleaved rounds (so a busy neighbour slows all of them alike) and each figure
is the median over every run. ORT's profiler gives the time per operator type.

    python experiments/export_latency/benchmark.py   # writes results.json and results.md beside it

The CPU's model and vector ISA are printed and recorded with the figures (INT8 speed on x86 depends on
AVX2 vs AVX-512 VNNI vs AMX). `results_vnni_vm.*` keep the first run, on a 2-core VM with AVX-512 VNNI
whose model was not recorded; `results.*` the latest.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from fas.convention import ClassScheme, InputConvention, ModelInfo
from fas.data.datamodule import FaceDataModule
from fas.data.sources.celeba_spoof import CelebASpoofSource
from fas.export.onnx import export_onnx
from fas.export.parity import interleaved_times
from fas.export.pipeline import calibration_images, labelled_images
from fas.export.quantize import QuantizationRecipe, quantize
from fas.export.rewrite import optimize_for_cpu
from fas.hardware import cpu_info, describe_cpu
from fas.models import build_backbone
from fas.models.checkpoint import load_backbone_weights

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SURI = Path(os.environ.get("FAS_SHARED_DIR", REPO.parent / "shared")) / "reference" / "suri-liveness"
SIZE = 128
SURI_CONVENTION = InputConvention(input_size=SIZE, crop_scale=1.5, crop_mode="reflect")
SCHEME = ClassScheme("binary_all", ("live", "spoof"), 0, {0: 0, **{t: 1 for t in range(1, 11)}})
ROUNDS, RUNS_PER_ROUND, WARMUP = 10, 100, 50


def session(path: Path, profile_prefix: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def build_ours(directory: Path) -> tuple[Path, Path, np.ndarray]:
    """Our FP32 and INT8 exports of the suri-liveness weights, and the synthetic test crops."""
    backbone = build_backbone("minifasnet_v2se", input_size=SIZE, num_classes=2)
    load_backbone_weights(backbone, SURI / "best_model.pth", "minifasnet_v2se")
    info = ModelInfo(SURI_CONVENTION, SCHEME, "minifasnet_v2se", {"weights": "suri-liveness best_model.pth"})
    source = CelebASpoofSource(str(REPO / "data" / "synthetic"), synthetic={})
    datamodule = FaceDataModule({"celeba_spoof": source}, SCHEME, SURI_CONVENTION)
    datamodule.prepare_data()
    datamodule.setup()
    calibration = calibration_images(datamodule, QuantizationRecipe().calibration_samples)
    fp32 = directory / "model.onnx"
    plain = onnx.load(str(export_onnx(backbone, info, directory / "plain.onnx")))
    onnx.save(optimize_for_cpu(plain, calibration), fp32)  # as export_model: range-equalized for INT8
    int8 = quantize(fp32, directory / "model_int8.onnx", QuantizationRecipe(), calibration)
    return fp32, int8, labelled_images(datamodule.splits["test"]).images


def interleaved_latency(paths: dict[str, Path]) -> dict[str, dict[str, float]]:
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
    sessions = {name: session(path) for name, path in paths.items()}
    calls = {name: functools.partial(s.run, None, {"input": image}) for name, s in sessions.items()}
    times = interleaved_times(calls, ROUNDS, RUNS_PER_ROUND, WARMUP)
    return {
        name: {"median_ms": 1000 * float(np.median(t)), "p10_ms": 1000 * float(np.percentile(t, 10))}
        for name, t in times.items()
    }


def profile_by_op(path: Path, runs: int = 200) -> dict[str, float]:
    """Mean time per run of each operator type (after ORT's fusions), in ms."""
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        s = session(path, profile_prefix=str(Path(tmp) / "profile"))
        for _ in range(runs):
            s.run(None, {"input": image})
        events = json.loads(Path(s.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1000 / runs
    return dict(sorted(((k, round(v, 3)) for k, v in totals.items()), key=lambda kv: -kv[1]))


def agreement(paths: dict[str, Path], crops: np.ndarray) -> dict[str, float]:
    """How closely each INT8 file follows their FP32 file (the same weights) on the same crops."""
    logits = {name: session(path).run(None, {"input": crops})[0] for name, path in paths.items()}
    reference = logits["their_fp32"]
    found = {"max_abs_logit_diff_our_fp32_vs_their_fp32": float(np.abs(logits["our_fp32"] - reference).max())}
    for name in ("our_int8", "their_int8"):
        found[f"mean_abs_logit_diff_{name}_vs_their_fp32"] = float(np.abs(logits[name] - reference).mean())
        found[f"argmax_agreement_{name}_vs_their_fp32"] = float(np.mean(logits[name].argmax(1) == reference.argmax(1)))
    return found


def markdown(results: dict) -> str:
    latency, sizes, targets = results["latency"], results["file_bytes"], results["targets"]
    lines = [
        "# Export latency: MiniFASNetV2SE-128, ONNX Runtime CPU, 1 thread, batch 1",
        "",
        f"CPU: {describe_cpu(results['cpu'])}; ONNX Runtime {results['onnxruntime']}; load average at the start "
        f"{results['load_average_at_start'][0]:.2f} (interleaved rounds: load slows all four alike).",
        "",
        "| file | median ms | p10 ms | size KiB |",
        "|---|---|---|---|",
        *(
            f"| {name} | {latency[name]['median_ms']:.2f} | {latency[name]['p10_ms']:.2f} | {sizes[name] / 1024:.0f} |"
            for name in latency
        ),
        "",
        "| target | value | met |",
        "|---|---|---|",
        *(
            f"| {name} | {t['value']:.2f} (needs {t['needs']}) | {'yes' if t['met'] else 'NO'} |"
            for name, t in targets.items()
        ),
        "",
        "Same weights in all four files: " + ", ".join(f"{k} = {v:.4g}" for k, v in results["agreement"].items()),
        "(on the synthetic test split's crops).",
        "",
        "Time per operator type (ORT profiler, ms per run; profiling adds overhead):",
        "",
        *(
            f"- {name}: " + ", ".join(f"{op} {ms}" for op, ms in list(ops.items())[:6])
            for name, ops in results["profile"].items()
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    print("CPU:", describe_cpu(), flush=True)  # x86 INT8 speed depends on AVX2 vs AVX-512 VNNI vs AMX
    with tempfile.TemporaryDirectory() as tmp:
        our_fp32, our_int8, crops = build_ours(Path(tmp))
        paths = {
            "our_fp32": our_fp32,
            "our_int8": our_int8,
            "their_fp32": SURI / "best_model.onnx",
            "their_int8": SURI / "best_model_quantized.onnx",
        }
        load = os.getloadavg()
        latency = interleaved_latency(paths)
        results = {
            "cpu": cpu_info(),
            "onnxruntime": ort.__version__,
            "load_average_at_start": load,
            "latency": latency,
            "file_bytes": {name: path.stat().st_size for name, path in paths.items()},
            "agreement": agreement(paths, crops),
            "profile": {name: profile_by_op(path) for name, path in paths.items()},
        }
    ms = {name: v["median_ms"] for name, v in latency.items()}
    results["targets"] = {
        "our INT8 ms/image": {"value": ms["our_int8"], "needs": "<= 2.0", "met": ms["our_int8"] <= 2.0},
        "their INT8 / our INT8": {
            "value": ms["their_int8"] / ms["our_int8"],
            "needs": ">= 4",
            "met": ms["their_int8"] / ms["our_int8"] >= 4,
        },
        "their FP32 / our FP32": {
            "value": ms["their_fp32"] / ms["our_fp32"],
            "needs": ">= 2",
            "met": ms["their_fp32"] / ms["our_fp32"] >= 2,
        },
        "our INT8 KiB": {
            "value": results["file_bytes"]["our_int8"] / 1024,
            "needs": "<= 600 KB = 600,000 bytes",
            "met": results["file_bytes"]["our_int8"] <= 600 * 1000,
        },
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
