"""Where ONNX Runtime spends a MiniFASNet's time, FP32 file vs INT8 file, by kind of layer (issue 22).

Why an every-layer-int8 file (quantization=qat) gains less at 80 px than at 128 px: ORT's profiler times each
node of the graph it optimizes the file into, and the nodes are grouped by what they do (pointwise 1x1
convolutions, depthwise 3x3 ones, the 1x1 depthwise scale of each PReLU's exact rewrite and the Adds, the
stem, the rest). Both files are profiled in alternating rounds in one process (1 thread, batch 1).

    python experiments/qat/where_time_goes.py <export dir with model.onnx and model_int8.onnx> [--out name]

prints the CPU and the table and writes `<name>.json` / `<name>.md` here.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from fas.export.parity import interleaved_times
from fas.hardware import cpu_info, describe_cpu

HERE = Path(__file__).resolve().parent
ROUNDS, RUNS_PER_ROUND, WARMUP = 6, 100, 50
CONVOLUTIONS = {"Conv", "QLinearConv", "FusedConv"}
ADDS = {"Add", "QLinearAdd", "Sum"}
KINDS = ("pointwise conv", "depthwise kxk conv", "PReLU scale (1x1 depthwise)", "add", "stem conv", "other")


def node_kind(node: onnx.NodeProto) -> str:
    if node.op_type in ADDS:
        return "add"
    if node.op_type not in CONVOLUTIONS:
        return "other"
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    kernel, groups = list(attributes.get("kernel_shape", [])), attributes.get("group", 1)
    if groups == 1:
        return "pointwise conv" if kernel == [1, 1] else "stem conv"
    return "PReLU scale (1x1 depthwise)" if kernel == [1, 1] else "depthwise kxk conv"


def profiled_session(path: Path) -> tuple[ort.InferenceSession, dict[str, str]]:
    """A profiling session of `path` (1 thread, every optimization) and the kind of every node of the graph ORT
    optimized the file into, by node name."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"fas_profile_{path.stem}")
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    return session, {node.name: node_kind(node) for node in graph.node}


def microseconds_by_kind(profile: Path, kinds: dict[str, str], runs: int) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for event in json.loads(profile.read_text()):
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            op_type = event["args"]["op_name"]
            totals[kinds.get(name.removesuffix("_kernel_time"), "add" if op_type in ADDS else "other")] += event["dur"]
    profile.unlink()
    return {kind: totals[kind] / runs for kind in KINDS}


def profile(paths: dict[str, Path]) -> dict[str, dict[str, float]]:
    sessions = {name: profiled_session(path) for name, path in paths.items()}
    size = onnx.load(next(iter(paths.values()))).graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, size, size)).astype(np.float32)
    calls = {name: functools.partial(session.run, None, {"input": image}) for name, (session, _) in sessions.items()}
    interleaved_times(calls, ROUNDS, RUNS_PER_ROUND, WARMUP)  # the profiler records each node of each run
    runs = WARMUP + ROUNDS * RUNS_PER_ROUND
    return {
        name: microseconds_by_kind(Path(session.end_profiling()), kinds, runs)
        for name, (session, kinds) in sessions.items()
    }


def markdown(results: dict) -> str:
    fp32, int8 = results["microseconds"]["fp32"], results["microseconds"]["int8"]
    lines = [
        f"# Where the time goes: {results['files']['fp32']} vs {results['files']['int8']}",
        "",
        f"CPU: {results['cpu_isa']}; ONNX Runtime {results['onnxruntime']}, 1 thread,"
        f" batch 1, {results['runs']} profiled runs of each file in alternating rounds; load average at the start"
        f" {results['load_average_at_start'][0]:.1f}.",
        "",
        "| layers | FP32 us | INT8 us | FP32 / INT8 | share of INT8 time |",
        "|---|---|---|---|---|",
    ]
    total_fp32, total_int8 = sum(fp32.values()), sum(int8.values())
    for kind in KINDS:
        ratio = f"{fp32[kind] / int8[kind]:.2f}x" if int8[kind] else "-"
        share = 100 * int8[kind] / total_int8
        lines.append(f"| {kind} | {fp32[kind]:.0f} | {int8[kind]:.0f} | {ratio} | {share:.0f}% |")
    lines.append(f"| **all nodes** | {total_fp32:.0f} | {total_int8:.0f} | {total_fp32 / total_int8:.2f}x | 100% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path, help="a fas export folder (model.onnx, model_int8.onnx)")
    parser.add_argument("--out", default="where_time_goes", help="name of the .json/.md written here")
    args = parser.parse_args()
    paths = {"fp32": args.export_dir / "model.onnx", "int8": args.export_dir / "model_int8.onnx"}
    print("CPU:", describe_cpu(), flush=True)
    load = os.getloadavg()
    results = {
        "cpu": cpu_info(),
        "cpu_isa": describe_cpu(),
        "onnxruntime": ort.__version__,
        "load_average_at_start": load,
        "files": {name: str(path) for name, path in paths.items()},
        "runs": WARMUP + ROUNDS * RUNS_PER_ROUND,
        "microseconds": profile(paths),
    }
    (HERE / f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / f"{args.out}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
