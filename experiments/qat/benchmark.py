"""Quantization-aware training vs fas's static INT8 recipes: fidelity to FP32, latency and size (issue 22).

The model is the published suri-liveness MiniFASNetV2SE-128 (`best_model.pth`, read as `export.py` reads
it, with its own input convention); the data the embedded synthetic set (generated under data/synthetic when
absent). Each file is written by `fas.export.pipeline.export_model`, the code path of `python export.py`:

- `static`: the default recipe (calibrated QDQ, the high-resolution layers float: `float_stride=4`);
- `static_all8`: the same with every layer in 8 bits (`float_stride=0`);
- `dynamic`: `quantization=dynamic`, weights-only int8 (ConvInteger), no calibration data;
- `qat`: `quantization=qat` with its default settings (configs/quantization/qat.yaml), every layer in 8 bits.

Fidelity (decisions that agree with FP32, accuracy change, mean |logit difference|) is each export's own
report on the synthetic test split. Latency: ONNX Runtime CPU provider, 1 intra-op thread, batch 1, all graph
optimizations, the files timed in interleaved rounds (a busy neighbour slows all of them alike), medians;
suri-liveness's own INT8 file (`best_model_quantized.onnx`, dynamic) runs in the same rounds. With the mobile
extra installed, the LiteRT files too (`format=tflite`: FP32, the calibrated full-integer file and the QAT one,
made from the same trained QAT model as the ONNX file), under XNNPACK on 1 thread, in their own rounds.

    python experiments/qat/benchmark.py   # prints the CPU, the table and the ratios; writes results.json/.md

PyTorch runs on one thread: on a shared 2-core machine two threads made each QAT step 50x slower (every
one of the graph's ~300 small ops waits at a barrier for the core the neighbour holds).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from fas.data.datamodule import FaceDataModule
from fas.data.sources.celeba_spoof import CelebASpoofSource
from fas.export.parity import batched_logits, interleaved_times
from fas.export.pipeline import ExportResult, export_model, export_tflite_model, labelled_images
from fas.export.quantize import QuantizationRecipe
from fas.export.tflite import TfliteRecipe
from fas.hardware import cpu_info, describe_cpu
from fas.hydra_utils import silence_library_noise
from fas.inference.backends import load_backend

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WEIGHTS = Path(os.environ.get("FAS_SHARED_DIR", REPO.parent / "shared")) / "reference/suri-liveness/best_model.pth"
SURI_INT8 = WEIGHTS.with_name("best_model_quantized.onnx")  # suri-liveness's own INT8 file (dynamic)
DATA = REPO / "data" / "synthetic"
RECIPES = {
    "static": QuantizationRecipe(),
    "static_all8": QuantizationRecipe(float_stride=0),
    "dynamic": QuantizationRecipe(method="dynamic"),  # weights-only ConvInteger, no data
    "qat": QuantizationRecipe(method="qat", float_stride=0),  # configs/quantization/qat.yaml's values
}
ROUNDS, RUNS_PER_ROUND, WARMUP = 10, 100, 50


def lscpu() -> dict[str, str]:
    """`lscpu`'s model name and flags (the vector ISA decides x86 INT8 speed)."""
    lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {key: fields.get(key, "").strip() for key in ("Model name", "CPU(s)", "Flags")}


def exports(directory: Path) -> tuple[dict[str, ExportResult], dict[str, ExportResult], np.ndarray]:
    """Every recipe's ONNX export of the suri-liveness weights, the LiteRT ones when litert-torch is installed
    (`calibrated`, `qat`; the QAT model trained once for both formats), and the test crops."""
    info = load_backend(WEIGHTS).info
    source = CelebASpoofSource(str(DATA), synthetic={})
    datamodule = FaceDataModule({"celeba_spoof": source}, info.class_scheme, info.convention)
    results, tflite, trained = {}, {}, {}
    for name, recipe in RECIPES.items():
        start = time.perf_counter()
        results[name] = export_model(WEIGHTS, directory / name, recipe, datamodule, qat_models=trained)
        print(f"{name}: exported in {time.perf_counter() - start:.0f} s", flush=True)
    if importlib.util.find_spec("litert_torch") is not None:
        for name, qat in (("calibrated", None), ("qat", RECIPES["qat"])):
            start = time.perf_counter()
            tflite[name] = export_tflite_model(
                WEIGHTS, directory / f"tflite_{name}", TfliteRecipe(), datamodule, qat=qat, qat_models=trained
            )
            print(f"LiteRT {name}: exported in {time.perf_counter() - start:.0f} s", flush=True)
    return results, tflite, labelled_images(datamodule.splits["test"]).images


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_latency(paths: dict[str, Path], size: int) -> dict[str, float]:
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, size, size)).astype(np.float32)
    sessions = {name: session(path) for name, path in paths.items()}
    calls = {name: functools.partial(s.run, None, {"input": image}) for name, s in sessions.items()}
    return medians_ms(interleaved_times(calls, ROUNDS, RUNS_PER_ROUND, WARMUP))


def interleaved_litert_latency(paths: dict[str, Path]) -> dict[str, float]:
    """Median ms of each LiteRT file under XNNPACK (the interpreter's default delegate), 1 thread, batch 1."""
    from ai_edge_litert.interpreter import Interpreter

    calls = {}
    for name, path in paths.items():
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        image = np.random.default_rng(0).uniform(0, 1, detail["shape"]).astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], image)
        calls[name] = interpreter.invoke
    return medians_ms(interleaved_times(calls, ROUNDS, RUNS_PER_ROUND, WARMUP))


def medians_ms(times: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def litert_rows(tflite: dict[str, ExportResult], latency: dict[str, float]) -> list[dict]:
    table = [{"file": "fp32", "ms": latency["fp32"], "bytes": tflite["qat"].fp32.stat().st_size}]
    return table + [int8_row(name, result, latency[name]) for name, result in tflite.items()]


def int8_row(name: str, result: ExportResult, ms: float) -> dict:
    """An INT8 file's row: latency, size, layers and its export report's fidelity figures."""
    int8 = result.report["int8"]
    return {
        "file": name,
        "ms": ms,
        "bytes": int8["file_bytes"],
        "layers": f"{int8['layers']['int8']} int8 / {int8['layers']['float']} float",
        "agreement": int8["decision_agreement"],
        "accuracy_delta_points": int8["accuracy_delta_points"],
    }


def rows(results: dict[str, ExportResult], crops: np.ndarray, latency: dict[str, float]) -> list[dict]:
    fp32, layers = results["static"].fp32, results["static"].report["fp32"]["layers"]
    fp32_logits = batched_logits(load_backend(fp32), crops)
    table = [
        {
            "file": "fp32",
            "ms": latency["fp32"],
            "bytes": fp32.stat().st_size,
            "layers": f"{layers['int8']} int8 / {layers['float']} float",
        }
    ]
    for name, result in results.items():
        logits = batched_logits(load_backend(result.int8), crops)
        table.append(
            {
                **int8_row(name, result, latency[name]),
                "mean_abs_logit_diff": float(np.abs(logits - fp32_logits).mean()),
                "qat": result.report.get("qat"),
            }
        )
    return table


def markdown(results: dict) -> str:
    lines = [
        "# QAT vs static INT8: suri-liveness MiniFASNetV2SE-128 on the synthetic test split",
        "",
        f"CPU: {results['lscpu']['Model name']} ({results['lscpu']['CPU(s)']} CPUs; {describe_cpu(results['cpu'])}); "
        f"ONNX Runtime {results['onnxruntime']}, torch {results['torch']}; load average at the start "
        f"{results['load_average_at_start'][0]:.2f}; {results['test_crops']} test crops.",
        "",
        "| file | median ms (1 thread, batch 1) | FP32 / file | size KiB | Conv/Gemm in ORT | decisions as FP32 | "
        "accuracy change (points) | mean abs logit diff vs FP32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fp32_ms = results["rows"][0]["ms"]
    for row in results["rows"]:
        fidelity = (
            f"{100 * row['agreement']:.2f}% | {row['accuracy_delta_points']:+.2f} | {row['mean_abs_logit_diff']:.3f}"
            if "agreement" in row
            else "- | - | -"
        )
        lines.append(
            f"| {row['file']} | {row['ms']:.2f} | {fp32_ms / row['ms']:.2f}x | {row['bytes'] / 1024:.0f} | "
            f"{row['layers']} | {fidelity} |"
        )
    lines.append(
        f"| suri-liveness's own INT8 (`best_model_quantized.onnx`) | {results['suri_int8_ms']:.2f} | "
        f"{fp32_ms / results['suri_int8_ms']:.2f}x | {SURI_INT8.stat().st_size / 1024:.0f} | - | - | - | - |"
    )
    qat = next(row["qat"] for row in results["rows"] if row["file"] == "qat")
    lines += [
        "",
        f"QAT: {qat['steps']} steps of {qat['batch_size']} crops in {qat['seconds']:.0f} s, distillation loss "
        f"{qat['first_loss']:.4g} at the first step, {qat['last_loss']:.4g} over the last tenth.",
        "",
    ]
    if results.get("litert_rows"):
        litert_fp32 = results["litert_rows"][0]["ms"]
        lines += [
            "LiteRT (XNNPACK, 1 thread, batch 1; `calibrated`: the default ai-edge-quantizer file, its high-resolution "
            "layers float; `qat`: the same QAT model as the ONNX file, every layer int8):",
            "",
            "| file | median ms | FP32 / file | size KiB | Conv/FC layers | decisions as FP32 | "
            "accuracy change (points) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in results["litert_rows"]:
            fidelity = (
                f"{100 * row['agreement']:.2f}% | {row['accuracy_delta_points']:+.2f}"
                if "agreement" in row
                else "- | -"
            )
            lines.append(
                f"| {row['file']} | {row['ms']:.2f} | {litert_fp32 / row['ms']:.2f}x | {row['bytes'] / 1024:.0f} | "
                f"{row.get('layers', '-')} | {fidelity} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    silence_library_noise()
    torch.set_num_threads(1)
    cpu = lscpu()
    print("CPU:", cpu["Model name"], "|", describe_cpu(), flush=True)
    print("Flags:", cpu["Flags"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results_by_recipe, tflite, crops = exports(Path(tmp))
        load = os.getloadavg()
        paths = {"fp32": results_by_recipe["static"].fp32, **{n: r.int8 for n, r in results_by_recipe.items()}}
        latency = interleaved_latency({**paths, "suri_int8": SURI_INT8}, crops.shape[-1])
        table = rows(results_by_recipe, crops, latency)
        litert_latency = (
            interleaved_litert_latency({"fp32": tflite["qat"].fp32, **{n: r.int8 for n, r in tflite.items()}})
            if tflite
            else {}
        )
        litert_table = litert_rows(tflite, litert_latency) if tflite else []
    results = {
        "lscpu": cpu,
        "cpu": cpu_info(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "load_average_at_start": load,
        "test_crops": len(crops),
        "rows": table,
        "suri_int8_ms": latency["suri_int8"],
        "ratios": {
            **{f"fp32 / {row['file']}": latency["fp32"] / row["ms"] for row in table[1:]},
            **{f"suri INT8 / {row['file']}": latency["suri_int8"] / row["ms"] for row in table[1:]},
            **{f"LiteRT fp32 / {row['file']}": litert_latency["fp32"] / row["ms"] for row in litert_table[1:]},
        },
        "litert_rows": litert_table,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "results.md").write_text(markdown(results))
    print(markdown(results))
    print("Ratios:", ", ".join(f"{k} {v:.2f}x" for k, v in results["ratios"].items()))


if __name__ == "__main__":
    main()
