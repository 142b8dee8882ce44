"""The CPU graph rewrites are exact: every backbone, every PRelu form, and hand-built edge cases."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from fas.convention import ClassScheme, InputConvention, ModelInfo
from fas.export.onnx import export_onnx
from fas.export.rewrite import (
    channel_ranges,
    fuse_gemm_chains,
    optimize_for_cpu,
    pad_channels,
    prelu_to_relu,
    reduce_mean_to_global_average_pool,
)
from fas.inference.onnx_file import read_metadata
from fas.models import BACKBONES, build_backbone

SCHEME = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1})
TOLERANCE = 1e-4  # the export's promise: logits within 1e-4 of PyTorch


def randomized(model: nn.Module, seed: int = 0, max_slope: float = 0.9) -> nn.Module:
    """Non-trivial BatchNorm statistics and PReLU slopes (negative ones included), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.3, 0.3, generator=generator)
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(-0.6, max_slope, generator=generator)
    return model.eval()


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def export_and_optimize(model: nn.Module, size: int, path: Path) -> tuple[onnx.ModelProto, onnx.ModelProto, ModelInfo]:
    info = ModelInfo(InputConvention(input_size=size), SCHEME, "test")
    plain = onnx.load(str(export_onnx(model, info, path)))
    return plain, optimize_for_cpu(plain), info


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_exports_and_rewrites_exactly(name: str, tmp_path: Path) -> None:
    model = randomized(build_backbone(name, input_size=80, num_classes=2))
    plain, optimized, info = export_and_optimize(model, 80, tmp_path / "model.onnx")
    images = np.random.default_rng(1).uniform(0, 1, (3, 3, 80, 80)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    for graph in (plain, optimized):
        np.testing.assert_allclose(run(graph, {"input": images}), expected, atol=TOLERANCE, rtol=0)
    ops = op_counts(optimized)
    assert ops["PRelu"] == 0 and ops["ReduceMean"] == 0
    assert read_metadata(optimized) == info
    if name.startswith("minifasnet"):
        assert op_counts(plain)["PRelu"] == 33 and ops["Gemm"] == 1  # embedding and classifier fused
        widths = [conv_out_channels(optimized, n) for n in optimized.graph.node if n.op_type == "Conv"]
        assert all(width % 16 == 0 for width in widths), widths  # 13, 103, 231, ... padded


def conv_out_channels(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    weights = {t.name: t for t in model.graph.initializer}
    return weights[node.input[1]].dims[0]


class PReluStack(nn.Module):
    """Conv -> PReLU (per channel) -> depthwise Conv -> PReLU (one slope) -> Conv, with odd widths."""

    def __init__(self, slopes: list[float]) -> None:
        super().__init__()
        width = len(slopes)
        self.expand = nn.Conv2d(3, width, 1)
        self.act1 = nn.PReLU(width)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.act2 = nn.PReLU(1, init=0.3)
        self.project = nn.Conv2d(width, 2, 1)
        with torch.no_grad():
            self.act1.weight.copy_(torch.tensor(slopes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.act2(self.depthwise(self.act1(self.expand(x))))).mean(dim=(2, 3))


@pytest.mark.parametrize(
    ("slopes", "scale_convs"),
    [([0.25, -0.5, 1.0, 0.0, 0.7], 1), ([0.25, 1.7, -0.4, 3.0, 0.1], 2)],
    ids=["slopes-at-most-1", "slopes-above-1"],
)
def test_prelu_forms_are_exact(slopes: list[float], scale_convs: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PReluStack(slopes).eval()
    _, optimized, _ = export_and_optimize(model, 16, tmp_path / "m.onnx")
    images = np.random.default_rng(0).normal(0, 2, (4, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(run(optimized, {"input": images}), expected, atol=1e-5, rtol=0)
    ops = op_counts(optimized)
    assert ops["PRelu"] == 0 and ops["LeakyRelu"] == 1  # the single-slope PReLU
    assert ops["Conv"] == 3 + scale_convs  # expand, depthwise, project + per-channel scale(s)
    assert [conv_out_channels(optimized, n) for n in optimized.graph.node if n.op_type == "Conv"][:1] == [16]


def model_of(nodes: list[onnx.NodeProto], inputs, outputs, constants: dict[str, np.ndarray], opset: int = 18):
    graph = helper.make_graph(
        nodes,
        "test",
        inputs,
        outputs,
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def tensor(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_gemm_chain_fuses_with_either_weight_layout() -> None:
    rng = np.random.default_rng(0)
    constants = {"w1": rng.normal(size=(6, 5)), "b1": rng.normal(size=6), "w2": rng.normal(size=(3, 6))}
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Gemm", ["h", "w2t"], ["y"]),  # weight stored (in, out): transB = 0
    ]
    constants["w2t"] = constants.pop("w2").T.copy()
    model = model_of(nodes, [tensor("x", ["n", 5])], [tensor("y", ["n", 3])], constants)
    x = {"x": rng.normal(size=(4, 5)).astype(np.float32)}
    fused = fuse_gemm_chains(onnx.ModelProto.FromString(model.SerializeToString()))
    assert op_counts(fused) == Counter(Gemm=1)
    np.testing.assert_allclose(run(fused, x), run(model, x), atol=1e-5)


def test_gemm_whose_output_is_also_read_elsewhere_stays() -> None:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1),
        helper.make_node("Relu", ["h"], ["side"]),
    ]
    constants = {"w1": rng.normal(size=(4, 3)), "w2": rng.normal(size=(2, 4))}
    model = model_of(nodes, [tensor("x", [1, 3])], [tensor("y", [1, 2]), tensor("side", [1, 4])], constants)
    assert op_counts(fuse_gemm_chains(model))["Gemm"] == 2


def test_reduce_mean_becomes_global_average_pool_only_over_height_and_width() -> None:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["spatial"], axes=[3, 2], keepdims=1),
        helper.make_node("ReduceMean", ["x"], ["channels"], axes=[1], keepdims=1),
    ]
    model = model_of(
        nodes, [tensor("x", [2, 4, 5, 6])], [tensor("spatial", [2, 4, 1, 1]), tensor("channels", [2, 1, 5, 6])], {}, 13
    )
    rewritten = reduce_mean_to_global_average_pool(model)
    assert op_counts(rewritten) == Counter(GlobalAveragePool=1, ReduceMean=1)
    x = {"x": rng.normal(size=(2, 4, 5, 6)).astype(np.float32)}
    np.testing.assert_allclose(run(rewritten, x), run(model, x), atol=1e-6)


def test_padding_leaves_a_chain_whose_middle_is_read_twice() -> None:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
        helper.make_node("Relu", ["r"], ["side"]),
    ]
    constants = {"w1": rng.normal(size=(5, 3, 1, 1)), "w2": rng.normal(size=(2, 5, 1, 1))}
    model = model_of(
        nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 2, 4, 4]), tensor("side", [1, 5, 4, 4])], constants
    )
    padded = pad_channels(onnx.ModelProto.FromString(model.SerializeToString()))
    assert [t.dims[0] for t in padded.graph.initializer] == [5, 2]


def test_prelu_on_a_non_channel_slope_is_left_alone() -> None:
    nodes = [helper.make_node("PRelu", ["x", "slope"], ["y"])]
    constants = {"slope": np.array([0.1, 0.2, 0.3, 0.4], np.float32)}  # broadcasts along W, not C
    model = model_of(nodes, [tensor("x", [1, 2, 3, 4])], [tensor("y", [1, 2, 3, 4])], constants)
    assert op_counts(prelu_to_relu(model)) == Counter(PRelu=1)


def test_range_equalization_is_exact_and_evens_out_channel_ranges(tmp_path: Path) -> None:
    model = randomized(build_backbone("minifasnet_v2", input_size=64, num_classes=2), seed=5)
    plain, _, _ = export_and_optimize(model, 64, tmp_path / "model.onnx")
    images = np.random.default_rng(2).uniform(0, 1, (16, 3, 64, 64)).astype(np.float32)
    equalized = optimize_for_cpu(plain, calibration=images)
    with torch.no_grad():
        expected = model(torch.from_numpy(images[:4])).numpy()
    np.testing.assert_allclose(run(equalized, {"input": images[:4]}), expected, atol=TOLERANCE, rtol=0)
    expand = next(n for n in plain.graph.node if n.op_type == "Conv" and "conv_23.conv" in n.input[1]).output[0]
    before = channel_ranges(plain, [expand], images)[expand]
    after = channel_ranges(equalized, [expand], images)[expand][: before.size]  # 103 of the 112 padded
    assert before.min() < 0.5 * before.max()
    np.testing.assert_allclose(after, after.max(), rtol=1e-4)
