"""Parity and cost of an export: PyTorch vs the FP32 file vs the INT8 file (ONNX or LiteRT) on the same test crops.

Every model is scored through `fas.inference.backends`, the code path evaluation and prediction use.
The decision compared between INT8 and FP32 is live vs spoof (argmax == real class), the accuracy
is the argmax accuracy over the class scheme's targets, in percentage points.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from fas.export import tflite
from fas.hardware import cpu_info, describe_cpu
from fas.inference.backends import Backend, load_backend

FP32_TOLERANCE = 1e-4  # max |logit difference| allowed between PyTorch and the FP32 file
FORMATS = {".onnx": "ONNX", ".tflite": "LiteRT"}
INT8_ACCURACY_BUDGET = 0.5  # points of accuracy INT8 may change against FP32 before a warning
SCORING_BATCH = 64
# Layers by how ONNX Runtime runs them once it has fused the QDQ pairs around them (its optimized graph).
INT8_LAYERS = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"}
FLOAT_LAYERS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
LITERT_LAYERS = "Conv/FC layers in int8 / float"  # by the type of their input (`fas.export.tflite.layer_counts`)


@dataclass(frozen=True)
class LabelledImages:
    """Preprocessed crops (N, 3, S, S) float32 and their class targets (N,)."""

    images: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def batched_logits(backend: Backend, images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [backend.logits(images[i : i + SCORING_BATCH]) for i in range(0, len(images), SCORING_BATCH)]
    ).astype(np.float64)


def latency_ms(path: str | Path, input_size: int, runs: int = 100, warmup: int = 10) -> float:
    """Median wall time of one single-thread batch-1 inference of an ONNX or LiteRT file, in milliseconds."""
    backend = load_backend(path, threads=1)
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, input_size, input_size)).astype(np.float32)
    (times,) = interleaved_times({"file": lambda: backend.logits(image)}, 1, runs, warmup).values()
    return 1000 * float(np.median(times))


def interleaved_times(
    calls: dict[str, Callable[[], object]], rounds: int, runs_per_round: int, warmup: int
) -> dict[str, np.ndarray]:
    """Seconds of each run of each call, timed in interleaved rounds (a busy neighbour slows all of them
    alike, so their ratios hold), after `warmup` untimed runs of each; what the latency benchmarks compare."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(runs_per_round):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: np.asarray(values) for name, values in times.items()}


def runtime_layers(path: str | Path) -> dict[str, int]:
    """How many Conv / Gemm / MatMul layers of an ONNX file ONNX Runtime runs in 8 bits and how many in float:
    counted in the graph it optimizes the file into (QDQ pairs fused into QLinearConv, QGemm, ...)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no CPU-specific layout
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops = Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    return {
        "int8": sum(ops[op] for op in INT8_LAYERS),
        "float": sum(ops[op] for op in FLOAT_LAYERS),
    }


def accuracy_points(logits: np.ndarray, targets: np.ndarray) -> float:
    return 100 * float(np.mean(logits.argmax(axis=1) == targets))


def parity(
    torch_backend: Backend, fp32_path: Path, int8_path: Path | None, data: LabelledImages, real_class_index: int
) -> dict[str, Any]:
    """The numbers of the report (see module docstring); `int8` is absent when no INT8 file was made."""
    torch_logits = batched_logits(torch_backend, data.images)
    fp32_backend = load_backend(fp32_path)
    fp32_logits = batched_logits(fp32_backend, data.images)
    if getattr(fp32_backend, "outputs_probabilities", False):  # a file ending in softmax reads as log p
        torch_logits = torch_logits - np.log(np.exp(torch_logits).sum(axis=1, keepdims=True))
    size = data.images.shape[-1]
    report: dict[str, Any] = {
        "format": FORMATS[Path(fp32_path).suffix],
        "cpu": cpu_info(),
        "test_images": len(data),
        "pytorch": {"accuracy": accuracy_points(torch_logits, data.targets)},
        "fp32": {
            "file": Path(fp32_path).name,
            "file_bytes": fp32_path.stat().st_size,
            "max_abs_logit_diff_vs_pytorch": float(np.abs(fp32_logits - torch_logits).max()),
            "tolerance": FP32_TOLERANCE,
            "accuracy": accuracy_points(fp32_logits, data.targets),
            "latency_ms": latency_ms(fp32_path, size),
        },
    }
    if int8_path is not None:
        int8_logits = batched_logits(load_backend(int8_path), data.images)
        fp32_live = fp32_logits.argmax(axis=1) == real_class_index
        int8_live = int8_logits.argmax(axis=1) == real_class_index
        accuracy = accuracy_points(int8_logits, data.targets)
        report["int8"] = {
            "file": Path(int8_path).name,
            "file_bytes": int8_path.stat().st_size,
            "max_abs_logit_diff_vs_fp32": float(np.abs(int8_logits - fp32_logits).max()),
            "decision_agreement": float(np.mean(fp32_live == int8_live)),
            "accuracy": accuracy,
            "accuracy_delta_points": accuracy - report["fp32"]["accuracy"],
            "latency_ms": latency_ms(int8_path, size),
        }
    layers = runtime_layers if Path(fp32_path).suffix == ".onnx" else tflite.layer_counts
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        if path is not None:
            report[name]["layers"] = layers(path)
    return report


def write_report(report: dict[str, Any], directory: Path, name: str = "report") -> tuple[Path, Path]:
    """`<name>.json` (everything) and `<name>.md` (a table for people) in `directory`."""
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def layer_counts(file_report: dict[str, Any]) -> str:
    layers = file_report.get("layers")
    return f"{layers['int8']} / {layers['float']}" if layers else "-"


def markdown(report: dict[str, Any]) -> str:
    fp32, int8 = report["fp32"], report.get("int8")
    kind = report.get("format", "ONNX")
    rows = [
        f"| | PyTorch | FP32 {kind} | INT8 {kind} |",
        "|---|---|---|---|",
        f"| file | {report['source']} | {fp32['file']}, {fp32['file_bytes'] / 1024:.0f} KiB | "
        + (f"{int8['file']}, {int8['file_bytes'] / 1024:.0f} KiB |" if int8 else "not made |"),
        f"| accuracy (%) | {report['pytorch']['accuracy']:.2f} | {fp32['accuracy']:.2f} | "
        + (f"{int8['accuracy']:.2f} ({int8['accuracy_delta_points']:+.2f} vs FP32) |" if int8 else "- |"),
        f"| max abs logit difference | - | {fp32['max_abs_logit_diff_vs_pytorch']:.2e} vs PyTorch | "
        + (f"{int8['max_abs_logit_diff_vs_fp32']:.3f} vs FP32 |" if int8 else "- |"),
        "| live/spoof decision agreement with FP32 | - | - | "
        + (f"{100 * int8['decision_agreement']:.2f}% |" if int8 else "- |"),
        f"| latency, 1 thread, batch 1 (ms) | - | {fp32['latency_ms']:.2f} | "
        + (f"{int8['latency_ms']:.2f} |" if int8 else "- |"),
    ]
    if "layers" in fp32:
        layers = "Conv/Gemm layers run in int8 / float by ONNX Runtime" if kind == "ONNX" else LITERT_LAYERS
        rows.append(f"| {layers} | - | {layer_counts(fp32)} | " + (f"{layer_counts(int8)} |" if int8 else "- |"))
    settings = f"Quantization: {report['quantization']}."
    qat = report.get("qat")
    if qat:
        settings += (
            f" Quantization-aware training: {qat['steps']} steps of {qat['batch_size']} training crops in "
            f"{qat['seconds']:.0f} s, distillation loss {qat['first_loss']:.4g} at the first step, "
            f"{qat['last_loss']:.4g} over the last tenth."
        )
    if "optimize" in report:
        settings += f" Graph rewrites for CPU: {'on' if report['optimize'] else 'off'}."
    cpu = report.get("cpu")
    measured = f" Latency measured on {describe_cpu(cpu)}." if cpu else ""
    threshold = report.get("threshold")
    operating = (
        f"the model's operating threshold, {threshold['value']:.4f} (chosen on its training run's validation "
        "data and recorded in every file), is what its test metrics and evaluate.py apply"
        if threshold
        else "the model records no operating threshold"
    )
    decisions = (
        "Accuracy and decision agreement here are argmax decisions (the most probable class), which compare the "
        f"files with each other; {operating}."
    )
    whole = report.get("test_split_images", report["test_images"])
    sampled = f" (a seeded sample of its {whole})" if whole != report["test_images"] else ""
    return (
        f"# {kind} export of {report['backbone']} ({report['input_size']}x{report['input_size']})\n\n"
        f"Test split: {report['test_images']} crops{sampled}. {settings}{measured}\n\n"
        + "\n".join(rows)
        + "\n\n"
        + decisions
        + "\n"
    )
