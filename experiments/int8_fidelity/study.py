"""How closely does the static INT8 export follow FP32, and what limits it?

Takes a training run's directory (its `export/model.onnx` and best checkpoint), re-quantizes the FP32
export with variants of the `static` recipe, and reports on the run's test crops the INT8 vs FP32
live/spoof decision agreement, the accuracy change and single-thread latency. Then ONNX Runtime's
QDQ debugging tools give the signal-to-quantization-noise ratio (SQNR) of every quantized tensor
and of the logits, to see where the error comes from.

    python experiments/int8_fidelity/study.py logs/default_recipe/sgd_lr0.02_seed42   # writes results.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
from hydra import compose, initialize_config_dir
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from fas.data.datamodule import datamodule_for
from fas.export.onnx import export_onnx
from fas.export.parity import batched_logits, latency_ms
from fas.export.pipeline import calibration_images, labelled_images
from fas.export.quantize import ArrayReader, correct_output_bias
from fas.export.rewrite import (
    equalize_channel_ranges,
    fuse_gemm_chains,
    pad_channels,
    reduce_mean_to_global_average_pool,
)
from fas.inference.backends import OnnxBackend, load_backend

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def quantize_variant(fp32: Path, out: Path, calibration: np.ndarray, **options) -> Path:
    """The `static` recipe of fas/export/quantize.py with float_stride 0 and some settings replaced."""
    prepared = out.with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32), str(prepared))
    settings = {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "calibrate_method": CalibrationMethod.Percentile,
        "extra_options": {"OpTypesToExcludeOutputQuantization": ["Gemm"]},
    }
    settings.update(options)
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(prepared), str(out), ArrayReader(calibration), **settings)
    model = onnx.load(str(out))
    correct_output_bias(onnx.load(str(prepared)), model, calibration)
    onnx.save(model, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    fp32_path = run_dir / "export" / "model.onnx"
    checkpoint = next((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        overrides = [f"ckpt_path={checkpoint}", f"paths.root_dir={REPO}", f"paths.output_dir={run_dir}"]
        cfg = compose("export", overrides=overrides)
    fp32 = load_backend(fp32_path)
    datamodule = datamodule_for(cfg.data, fp32.info)
    datamodule.setup()
    test = labelled_images(datamodule.splits["test"])
    reference = batched_logits(OnnxBackend(fp32_path), test.images)
    fp32_accuracy = (reference.argmax(1) == test.targets).mean()
    calibration = calibration_images(datamodule, 128)
    work = Path(tempfile.mkdtemp())

    plain = onnx.load(str(export_onnx(load_backend(checkpoint).model, fp32.info, work / "plain.onnx")))
    prelu_kept = work / "prelu_kept.onnx"  # every rewrite but PRelu -> Relu form
    rewritten = pad_channels(reduce_mean_to_global_average_pool(fuse_gemm_chains(plain)))
    onnx.save(equalize_channel_ranges(rewritten, calibration), prelu_kept)
    first_conv = next(n.name for n in onnx.load(str(fp32_path)).graph.node if n.op_type == "Conv")
    variants = {
        "every layer 8-bit (float_stride 0)": (fp32_path, calibration, {}),
        "512 calibration crops": (fp32_path, calibration_images(datamodule, 512), {}),
        "MinMax ranges": (fp32_path, calibration, {"calibrate_method": CalibrationMethod.MinMax}),
        "first Conv kept in FP32": (fp32_path, calibration, {"nodes_to_exclude": [first_conv]}),
        "PRelu kept (runs in float)": (prelu_kept, calibration, {}),
    }
    lines = [
        "# INT8 fidelity of the static recipe",
        "",
        f"`python experiments/int8_fidelity/study.py {args.run_dir}`: the default job's export, "
        f"{len(test.targets)} synthetic test crops, FP32 accuracy {100 * fp32_accuracy:.2f}%.",
        "",
        "| variant | decisions agreeing with FP32 | accuracy change (points) | max abs logit diff | ms, 1 thread |",
        "|---|---|---|---|---|",
    ]
    for name, (source, crops, options) in variants.items():
        int8 = quantize_variant(source, work / f"{len(lines)}.onnx", crops, **options)
        logits = batched_logits(OnnxBackend(int8), test.images)
        agreement = (logits.argmax(1) == reference.argmax(1)).mean()
        change = 100 * ((logits.argmax(1) == test.targets).mean() - fp32_accuracy)
        lines.append(
            f"| {name} | {100 * agreement:.2f}% | {change:+.2f} | {np.abs(logits - reference).max():.3f} "
            f"| {latency_ms(int8, fp32.info.convention.input_size, runs=300):.2f} |"
        )
        print(lines[-1], flush=True)

    default = quantize_variant(fp32_path, work / "default.onnx", calibration)
    modify_model_output_intermediate_tensors(str(fp32_path), str(work / "fp32_all.onnx"))
    modify_model_output_intermediate_tensors(str(default), str(work / "int8_all.onnx"))
    images = test.images[:64]
    errors = compute_activation_error(
        create_activation_matching(
            collect_activations(str(work / "int8_all.onnx"), ArrayReader(images)),
            collect_activations(str(work / "fp32_all.onnx"), ArrayReader(images)),
        )
    )
    own = sorted((e["qdq_err"], name) for name, e in errors.items())
    accumulated = min(e["xmodel_err"] for e in errors.values())
    lines += [
        "",
        f"SQNR (dB, 64 test crops) of each quantized tensor against its own float value: median "
        f"{np.median([v for v, _ in own]):.1f}, lowest {', '.join(f'{n} {v:.1f}' for v, n in own[:5])}. "
        f"Against the FP32 model (errors accumulated through the network): lowest {accumulated:.1f}.",
    ]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
