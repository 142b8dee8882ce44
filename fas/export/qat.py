"""Quantization-aware training (`quantization=qat`): a trained model fine-tuned for a few epochs with fake
quantization that models exactly the INT8 files it then writes, `model_int8.onnx` (QDQ, every layer 8-bit unless
`quantization.float_stride` keeps the high-resolution ones float) and, with `formats=[onnx,tflite]`,
`model_int8.tflite`, both from the one trained model.

The scheme is the one of fas's static ONNX recipe (`fas.export.quantize`), as ONNX Runtime runs it:
per-channel symmetric int8 weights in [-127, 127] (ORT's symmetric range, scale = max|w| / 127), per-tensor
uint8 activations, int32 biases at input scale x weight scale, logits float; BatchNorm folded into the
convolutions (with its statistics frozen, before training: `prepare`); PReLU, MiniFASNet's pruned widths and
its classifier in their export form (`fas.export.layers.export_form`), so every Conv and the Gemm become
QLinearConv / QGemm in ORT's optimized graph (MobileNetV4 too: it has no PReLU and nothing to pad).
LiteRT's full-integer scheme is the same up to two fixed points, which the training therefore follows too: a
sigmoid's output has scale 1/256 (its int8 LOGISTIC kernel requires it), and the logits' range is observed
(not fake-quantized: ORT's file keeps them float) for its int8 FULLY_CONNECTED, whose output is quantized.

Fake quantization, observers and the conversion to int8 are torchao's PT2E (`prepare_qat_pt2e`,
`convert_pt2e`), the maintained home of torch.ao's quantization; what fas owns is
`OrtQdqQuantizer`, which says which tensors are quantized and how. The converted model goes straight to
ONNX (`torch.onnx.export(dynamo=True)`) and to LiteRT (`litert_form`, `fas.export.tflite.export_quantized`):
the learned scales are written as they are, nothing is recalibrated.
`experiments/qat_library_choice` records why torchao rather than NNCF or torch.ao.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import operator
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node
from torch.fx.experimental.optimization import fuse
from torch.utils.data import DataLoader, Dataset
from torchao.quantization.pt2e import (
    FusedMovingAvgObsFakeQuantize,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    disable_observer,
    move_exported_model_to_eval,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import (
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)

from fas.convention import ModelInfo
from fas.data.datasets import EpochSeededSampler
from fas.export.layers import export_form, is_high_resolution
from fas.export.onnx import onnx_graph
from fas.export.quantize import compact, store_float_weights_as_half
from fas.export.rewrite import reduce_mean_to_global_average_pool
from fas.inference.onnx_file import write_metadata

log = logging.getLogger(__name__)

MetricsSink = Callable[[dict[str, float], int], None]  # (metrics, step): where the per-step losses go

aten = torch.ops.aten
EPS = 2**-12  # smallest scale of an observer: an all-zero channel (a padded one) gets this, not zero

# One object per spec: PT2E gives a tensor one observer when its producer's output spec equals its
# consumer's input spec, so each tensor gets exactly one QuantizeLinear/DequantizeLinear pair in the file.
ACTIVATION = QuantizationSpec(
    dtype=torch.uint8,
    quant_min=0,
    quant_max=255,
    qscheme=torch.per_tensor_affine,
    observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=EPS),
)
# LiteRT's int8 LOGISTIC computes with output scale 1/256 (zero point -128 in int8, 0 in uint8); ORT takes any
SIGMOID_OUTPUT = FixedQParamsQuantizationSpec(
    dtype=torch.uint8, scale=1 / 256, zero_point=0, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine
)
# The logits' range, observed while training without rounding them: ORT's file keeps them float
# (`float_logits`), LiteRT's int8 FULLY_CONNECTED writes them quantized to it. The extremes of all the training
# batches, not a moving average of each batch's: the model never learned to live with clipped logits.
LOGITS = QuantizationSpec(
    dtype=torch.uint8,
    quant_min=0,
    quant_max=255,
    qscheme=torch.per_tensor_affine,
    observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=EPS),
)
WEIGHT = QuantizationSpec(
    dtype=torch.int8,
    quant_min=-127,
    quant_max=127,
    qscheme=torch.per_channel_symmetric,
    ch_axis=0,
    # averaging_constant=1: the range of the current weights (ORT's min/max), not a running average
    observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver, averaging_constant=1.0, eps=EPS
    ),
)

CONVOLUTIONS = {aten.conv2d.default, aten.linear.default}
BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
RELUS = {aten.relu.default, aten.relu_.default}
ELEMENTWISE = {aten.add.Tensor, aten.mul.Tensor}  # not add_: BatchNorm's num_batches_tracked += 1
QUANTIZED_UNARY = {aten.sigmoid.default, aten.adaptive_avg_pool2d.default, aten.mean.dim, *RELUS}
PASS_THROUGH = {aten.flatten.using_ints, aten.view.default, aten.reshape.default, aten.dropout.default}
QD = torch.ops.quantized_decomposed  # the quantize/dequantize ops of a converted model
PER_TENSOR = {QD.quantize_per_tensor.default, QD.dequantize_per_tensor.default}


def bias_qparams(observers: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 bias scale = input scale x weight scale per output channel, zero point 0 (ORT's bias rule)."""
    input_scale, weight_scale = (observer.calculate_qparams()[0] for observer in observers)
    scale = (input_scale * weight_scale).float()
    return scale, torch.zeros_like(scale, dtype=torch.int32)


def bias_spec(node: Node) -> DerivedQuantizationSpec:
    source, weight = node.args[0], node.args[1]
    return DerivedQuantizationSpec(
        derived_from=[(source, node), (weight, node)],
        derive_qparams_fn=bias_qparams,
        dtype=torch.int32,
        quant_min=-(2**31),
        quant_max=2**31 - 1,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )


def annotate(node: Node, inputs: dict[Node, Any] | None = None, output: Any = None) -> None:
    node.meta["quantization_annotation"] = QuantizationAnnotation(
        input_qspec_map=inputs or {}, output_qspec=output, _annotated=True
    )


def sole_user(node: Node) -> Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def activation_spec(value: Any) -> QuantizationSpecBase:
    """The spec of the tensor `value`, the same object for its producer's output and every consumer's input (one
    observer per tensor): fixed for a sigmoid's output, learned for any other."""
    return SIGMOID_OUTPUT if isinstance(value, Node) and value.target == aten.sigmoid.default else ACTIVATION


def is_float_tensor(value: Any) -> bool:
    meta = value.meta.get("val") if isinstance(value, Node) else None
    return isinstance(meta, torch.Tensor) and meta.is_floating_point()


class OrtQdqQuantizer(Quantizer):
    """Annotates an exported (aten) graph the way ONNX Runtime fuses a QDQ graph into integer kernels.

    A convolution or linear layer quantizes its input (uint8), weight (int8 per channel) and bias (int32);
    its output is quantized after the BatchNorm and Relu that follow it (what ORT fuses into one QLinearConv),
    except the model's output (the logits: only observed, see `LOGITS`). Add, Mul, Sigmoid, average pooling and a
    lone Relu quantize their inputs and output (QLinearAdd, QLinearMul, ...); reshapes and dropout share their
    input's quantization. A sigmoid's output range is fixed (`SIGMOID_OUTPUT`).
    With `float_stride` (the static recipe's `quantization.float_stride`) the layers whose output map is at most
    that many times smaller than the `input_size` input stay float, unannotated: ORT runs them as float Convs.
    """

    def __init__(self, input_size: int = 0, float_stride: int = 0) -> None:
        super().__init__()
        self.input_size = input_size
        self.float_stride = float_stride

    def keeps_float(self, node: Node) -> bool:
        value = node.meta.get("val")
        side = value.shape[-1] if isinstance(value, torch.Tensor) and value.dim() == 4 else 0
        return is_high_resolution(self.input_size, int(side), self.float_stride)

    def annotate(self, model: GraphModule) -> GraphModule:
        outputs = {arg for node in model.graph.nodes if node.op == "output" for arg in node.args[0]}
        done: set[Node] = set()
        for node in model.graph.nodes:
            if node.op != "call_function" or node in done or self.keeps_float(node):
                continue
            if node.target in CONVOLUTIONS:
                done.update(self.annotate_layer(node, outputs))
            elif node.target in ELEMENTWISE and all(is_float_tensor(arg) for arg in node.args[:2]):
                annotate(node, {arg: activation_spec(arg) for arg in node.args[:2]}, ACTIVATION)
            elif node.target in QUANTIZED_UNARY:
                annotate(node, {node.args[0]: activation_spec(node.args[0])}, activation_spec(node))
            elif node.target in PASS_THROUGH:
                annotate(node, output=SharedQuantizationSpec(node.args[0]))
        return model

    def annotate_layer(self, node: Node, outputs: set[Node]) -> list[Node]:
        """Annotate a convolution or linear layer and the BatchNorm / Relu after it; returns those followers."""
        inputs: dict[Node, Any] = {node.args[0]: activation_spec(node.args[0]), node.args[1]: WEIGHT}
        if len(node.args) > 2 and node.args[2] is not None:
            inputs[node.args[2]] = bias_spec(node)
        annotate(node, inputs)
        chain, end = [], node
        follower = sole_user(end)
        if follower is not None and follower.target in BATCH_NORMS:
            chain.append(follower)
            end = follower
            item = sole_user(end)  # batch_norm variants that return a tuple are read through getitem
            if item is not None and item.target == operator.getitem:
                chain.append(item)
                end = item
        follower = sole_user(end)
        if follower is not None and follower.target in RELUS:
            chain.append(follower)
            end = follower
        for member in chain:
            annotate(member)
        end.meta["quantization_annotation"].output_qspec = LOGITS if end in outputs else ACTIVATION
        return chain

    def validate(self, model: GraphModule) -> None:
        """Every annotation above is one ORT fuses; there is nothing to refuse."""


@dataclass(frozen=True)
class QatSettings:
    """How long and how fast the QAT stage trains (`quantization.qat_*`, `configs/quantization/qat.yaml`), and
    which high-resolution layers stay float (`quantization.float_stride`; 0: none)."""

    epochs: int
    max_steps: int
    batch_size: int
    lr: float
    seed: int
    float_stride: int = 0


def prepare(backbone: nn.Module, input_size: int, float_stride: int = 0) -> GraphModule:
    """The QAT model: the backbone in export form with its BatchNorms folded, traced with a dynamic batch axis,
    annotated (the high-resolution layers float with `float_stride`, see `OrtQdqQuantizer`) and fitted with fake
    quantization.

    BatchNorm statistics stay frozen while a few epochs of QAT run (re-estimating them from a few batches of
    a fine-tuning stage would only add noise), and a BatchNorm with frozen statistics is an affine map of its
    convolution's output: folding it first gives the function PT2E's simulated fold computes, with the weights
    fake-quantized exactly as they are written, and spares its pattern matching (about 20 s of tracing).
    """
    model = fuse(export_form(backbone), inplace=True)
    example = torch.zeros(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1)
    traced = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    return prepare_qat_pt2e(traced, OrtQdqQuantizer(input_size, float_stride))


def finetune(
    prepared: GraphModule,
    teacher: nn.Module,
    crops: Dataset,
    settings: QatSettings,
    log_metrics: MetricsSink | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Distil the FP32 teacher's logits into the fake-quantized model on `crops`; returns the stage's figures.

    The target is the FP32 model's logits (mean squared error), not the labels: what the INT8 file must do is
    decide as the FP32 model does (its agreement is what the report measures), and the logits carry the
    margin of every crop, also of the ones the FP32 model gets wrong, whose labels would pull the quantized
    model away from it. So the crops need no labels, and augmented ones (`quantization.qat_augment`, the fit's
    augmentation) are new crops every epoch for the teacher to score: the stage no longer fits a few hundred
    crops it sees again and again (`experiments/qat/augmented.py`). Order and augmentation are seeded by
    `settings.seed` and the epoch (`EpochSeededSampler`), whatever the number of loader workers.
    Adam without weight decay (the weights should stay where the FP32 fit left them), the learning rate warmed
    up and decayed by `learning_rate_factor`.
    """
    torch.manual_seed(settings.seed)
    batch_size = min(settings.batch_size, len(crops))
    sampler = EpochSeededSampler(len(crops), settings.seed)
    loader = DataLoader(crops, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=workers)
    steps = min(settings.max_steps, settings.epochs * len(loader))
    optimizer = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, steps))
    losses: list[float] = []
    start = time.perf_counter()
    while len(losses) < steps:
        sampler.set_epoch(len(losses) // len(loader))
        for batch in loader:
            images = batch["image"]
            with torch.no_grad():
                target = teacher(images)
            loss = F.mse_loss(prepared(images), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            report_step(losses, steps, optimizer, start, log_metrics)
            if len(losses) == steps:
                break
    return {
        "steps": steps,
        "batch_size": batch_size,
        "seconds": round(time.perf_counter() - start, 1),
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-max(1, steps // 10) :])),
    }


def learning_rate_factor(step: int, steps: int) -> float:
    """A linear warm-up over the first tenth of the steps (the first updates meet the rounding error of every
    layer at once), then a cosine decay to 0."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def report_step(
    losses: list[float], steps: int, optimizer: torch.optim.Optimizer, start: float, log_metrics: MetricsSink | None
) -> None:
    step = len(losses)
    if log_metrics is not None:
        log_metrics({"qat/loss": losses[-1], "qat/lr": optimizer.param_groups[0]["lr"]}, step)
    if step == 1 or step == steps or step % max(1, steps // 10) == 0:
        log.info(
            "QAT step %d/%d: distillation loss %.4g (%.2f s/step)",
            step,
            steps,
            losses[-1],
            (time.perf_counter() - start) / step,
        )


@dataclass
class QatModel:
    """A model after quantization-aware training: its fake-quantized graph (weights and learned ranges, observers
    off) and the stage's figures (steps, seconds, losses) for the reports. Every INT8 file is converted from it."""

    prepared: GraphModule
    figures: dict[str, Any]


def train(
    backbone: nn.Module,
    input_size: int,
    crops: Dataset,
    settings: QatSettings,
    log_metrics: MetricsSink | None = None,
    workers: int = 0,
) -> QatModel:
    """Fine-tune `backbone` with fake quantization on `crops` and freeze its ranges."""
    prepared = prepare(backbone, input_size, settings.float_stride)
    figures = finetune(prepared, backbone.eval(), crops, settings, log_metrics, workers)
    prepared.apply(disable_observer)
    return QatModel(prepared, figures)


def convert(prepared: GraphModule, fold_quantize: bool = True) -> GraphModule:
    """A copy of the trained QAT model with its scales frozen, BatchNorm folded and, with `fold_quantize`, weights
    stored as int8 (without: float weights behind quantize/dequantize pairs)."""
    converted = convert_pt2e(copy.deepcopy(prepared), fold_quantize=fold_quantize)
    move_exported_model_to_eval(converted)
    return converted


def float_logits(converted: GraphModule) -> GraphModule:
    """`converted` with the quantize/dequantize pair on its outputs removed (in place): the logits as ORT's QGemm
    writes them in the static recipe, float."""
    (output,) = (node for node in converted.graph.nodes if node.op == "output")
    for dequantize in output.all_input_nodes:
        if dequantize.target == QD.dequantize_per_tensor.default:
            output.replace_input_with(dequantize, dequantize.args[0].args[0])
    converted.graph.eliminate_dead_code()
    converted.recompile()
    return converted


def write_int8(model: QatModel, info: ModelInfo, path: Path, recipe: dict[str, Any]) -> Path:
    """The trained model as a QDQ ONNX file with fas's metadata; SE means as GlobalAveragePool, which ORT
    quantizes (the exporter writes AdaptiveAvgPool2d as ReduceMean, which it leaves float)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
        proto = onnx_graph(float_logits(convert(model.prepared)), info.convention.input_size)
    proto = compact(reduce_mean_to_global_average_pool(proto))  # short names, no default zero points
    store_float_weights_as_half(proto)  # the layers `float_stride` keeps float, as the static recipe stores them
    write_metadata(proto, info)
    proto.metadata_props.add(key="fas.quantization", value=json.dumps(recipe))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, path)
    return path


def litert_form(model: QatModel) -> GraphModule:
    """The trained model with the same ranges and integers in LiteRT's full-integer scheme, for `litert_torch.convert`.

    Each uint8 activation becomes int8 with the same scale and zero point - 128, which stores every value as
    q - 128: the same grid, exactly. The weights stay float behind their per-channel quantize/dequantize pairs,
    the form litert-torch lowers to int8 tensors (it refuses stored int8 weights), and the int32 biases are left
    float for the converter, which quantizes them by the same rule (input scale x weight scale, zero point 0);
    both are first snapped to their grids, so that the converter's rounding finds the integers of the ONNX file.
    """
    converted = convert(model.prepared, fold_quantize=False)
    for node in converted.graph.nodes:
        if node.target == QD.quantize_per_channel.default:
            snap_to_grid(converted, node)
        if node.target in PER_TENSOR and node.args[5] == torch.uint8:
            value, scale, zero_point = node.args[:3]
            node.args = (value, scale, zero_point - 128, -128, 127, torch.int8)
        elif node.target == QD.dequantize_per_channel.default and node.args[6] == torch.int32:
            node.replace_all_uses_with(node.args[0].args[0])  # the bias before its quantize
    converted.graph.eliminate_dead_code()
    converted.recompile()
    return converted


def snap_to_grid(converted: GraphModule, quantize: Node) -> None:
    """Replace the constant a per-channel quantize reads (a weight or bias) by its dequantized value, in place."""
    value, scale, zero_point = (operator.attrgetter(arg.target)(converted) for arg in quantize.args[:3])
    settings = quantize.args[3:]
    with torch.no_grad():
        grid = QD.quantize_per_channel.default(value, scale, zero_point, *settings)
        value.copy_(QD.dequantize_per_channel.default(grid, scale, zero_point, *settings))
