"""Exact ONNX graph rewrites that make MiniFASNet-style graphs fast on ONNX Runtime's CPU provider.

Profiling the published MiniFASNetV2SE export with ONNX Runtime (`SessionOptions.enable_profiling`,
single thread, batch 1) shows where the time goes, and each rewrite below removes one cause:

- `PRelu` runs as a slow broadcasting element-wise kernel (43% of the graph's time) and cannot join
  ORT's blocked NCHWc layout, so every PRelu also costs a reorder out of and back into that layout.
  `prelu_to_relu` writes it with ops ORT fuses (`fas.export.layers.prelu_decomposition`):
  PRelu(y) = y + Relu((a - 1) * y) when every slope a <= 1 (the scale is a 1x1 depthwise Conv),
  else y + (1 - a) * Relu(-y).
- ORT keeps a convolution in NCHWc only when its channel counts are multiples of the block size
  (16 with AVX-512); MiniFASNet's pruned widths (13, 103, 231, 77, ...) break the layout at every
  block. `pad_channels` pads those internal widths with zero filters; the padded channels stay exactly
  zero and the following convolution gives them zero weight.
- `ReduceMean` over H and W (the SE blocks) becomes `GlobalAveragePool`, which has NCHWc and
  quantized kernels; consecutive `Gemm`s with nothing between them (embedding -> BatchNorm1d ->
  dropout -> classifier at inference) become one, which also drops a 512x128 matrix from the file.

Every rewrite is exact in real arithmetic; in float32 the outputs move by rounding only (about 1e-6
on logits). Rewrites match patterns and leave anything else untouched, so any backbone passes through.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from fas.export.layers import prelu_decomposition

NCHWC_BLOCK = 16  # ORT's NCHWc block with AVX-512 (8 with AVX2, which 16 also satisfies)
ACTIVATIONS = ("PRelu", "Relu", "LeakyRelu")


class Graph:
    """An editable view of a model's graph: initializers as arrays, producer and consumer lookups."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.constants = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self._counter = 0

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.graph.node)

    def producers(self) -> dict[str, onnx.NodeProto]:
        return {name: node for node in self.graph.node for name in node.output}

    def sole_readers(self) -> dict[str, onnx.NodeProto]:
        """The node that reads a tensor, for tensors that exactly one node reads and that are not
        graph outputs: only those can be rewritten without changing what anything else sees."""
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        outputs = {o.name for o in self.graph.output}
        return {name: nodes[0] for name, nodes in readers.items() if len(nodes) == 1 and name not in outputs}

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)

    def add_constant(self, hint: str, value: np.ndarray) -> str:
        self._counter += 1
        name = f"{hint}.rw{self._counter}"
        self.constants[name] = value
        return name

    def replace_input(self, node: onnx.NodeProto, index: int, hint: str, value: np.ndarray) -> None:
        """Point input `index` of `node` at a new constant (the old one may be shared)."""
        node.input[index] = self.add_constant(hint, value)

    def set_nodes(self, nodes: list[onnx.NodeProto]) -> None:
        del self.graph.node[:]
        self.graph.node.extend(nodes)

    def finish(self) -> onnx.ModelProto:
        """Write the constants back (dropping unused ones) and forget stale shape annotations."""
        used = {name for node in self.graph.node for name in node.input}
        del self.graph.initializer[:]
        self.graph.initializer.extend(
            numpy_helper.from_array(np.asarray(value), name) for name, value in self.constants.items() if name in used
        )
        del self.graph.value_info[:]
        return self.model


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    for attr in node.attribute:
        if attr.name == name:
            node.attribute.remove(attr)
            break
    node.attribute.append(helper.make_attribute(name, value))


def conv_weight(graph: Graph, node: onnx.NodeProto) -> np.ndarray | None:
    """The constant 4-D weight of a Conv node, or None when it is not a Conv with constant weights."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    weight = graph.constant(node.input[1])
    return weight if weight is not None and weight.ndim == 4 else None


def is_depthwise(graph: Graph, node: onnx.NodeProto, channels: int) -> bool:
    weight = conv_weight(graph, node)
    return (
        channels > 1
        and weight is not None
        and weight.shape[:2] == (channels, 1)
        and attribute(node, "group", 1) == channels
    )


def is_dense(graph: Graph, node: onnx.NodeProto) -> bool:
    return conv_weight(graph, node) is not None and attribute(node, "group", 1) == 1


# --- Gemm chains ---------------------------------------------------------------------------------


def gemm_parts(graph: Graph, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """(W as out x in, bias) of a Gemm y = x @ W.T + b with constant operands, else None."""
    if node.op_type != "Gemm" or attribute(node, "transA", 0) or len(node.input) < 2:
        return None
    if attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0:
        return None
    weight = graph.constant(node.input[1])
    bias = graph.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1, np.float32)
    if weight is None or bias is None or weight.ndim != 2:
        return None
    weight = weight if attribute(node, "transB", 0) else weight.T
    return weight.astype(np.float64), np.broadcast_to(bias.reshape(-1), (weight.shape[0],)).astype(np.float64)


def fuse_gemm_chains(model: onnx.ModelProto) -> onnx.ModelProto:
    """Gemm -> Gemm with nothing between them becomes one Gemm: W2 (W1 x + b1) + b2."""
    graph = Graph(model)
    producers, sole_readers = graph.producers(), graph.sole_readers()
    fused: set[str] = set()
    for node in graph.nodes:
        second = gemm_parts(graph, node)
        first_node = producers.get(node.input[0])
        if second is None or first_node is None or sole_readers.get(first_node.output[0]) is not node:
            continue
        first = gemm_parts(graph, first_node)
        if first is None:
            continue
        (w1, b1), (w2, b2) = first, second
        inputs = [
            first_node.input[0],
            graph.add_constant(f"{node.input[1]}.fused", (w2 @ w1).astype(np.float32)),
            graph.add_constant(f"{node.input[1]}.fused_bias", (w2 @ b1 + b2).astype(np.float32)),
        ]
        del node.input[:]
        node.input.extend(inputs)
        set_attribute(node, "transB", 1)
        fused.add(first_node.output[0])
    graph.set_nodes([n for n in graph.nodes if not (n.op_type == "Gemm" and n.output[0] in fused)])
    return graph.finish()


# --- ReduceMean over H, W ------------------------------------------------------------------------


def reduce_mean_to_global_average_pool(model: onnx.ModelProto) -> onnx.ModelProto:
    """ReduceMean over the two spatial axes of a 4-D tensor, keeping dims, is GlobalAveragePool."""
    model = onnx.shape_inference.infer_shapes(model)
    ranks = {
        info.name: len(info.type.tensor_type.shape.dim)
        for info in [*model.graph.value_info, *model.graph.input]
        if info.type.tensor_type.HasField("shape")
    }
    graph = Graph(model)
    for node in graph.nodes:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4 or not attribute(node, "keepdims", 1):
            continue
        axes = graph.constant(node.input[1]) if len(node.input) > 1 else attribute(node, "axes")
        if axes is None or sorted(int(a) % 4 for a in np.asarray(axes).reshape(-1)) != [2, 3]:
            continue
        node.CopyFrom(helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name))
    return graph.finish()


# --- channel padding -----------------------------------------------------------------------------


def padded(values: np.ndarray, axis: int, extra: int) -> np.ndarray:
    pad = [(0, 0)] * values.ndim
    pad[axis] = (0, extra)
    return np.pad(values, pad)


def channel_chain(
    graph: Graph, start: onnx.NodeProto, sole_readers: dict[str, onnx.NodeProto]
) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """From a dense Conv of C outputs: the per-channel nodes (activations, depthwise convs) that follow
    it one after another, and the dense Conv that reads the C channels back; None if not that shape."""
    channels = conv_weight(graph, start).shape[0]
    middle: list[onnx.NodeProto] = []
    tensor = start.output[0]
    while True:
        user = sole_readers.get(tensor)
        if user is None:
            return None
        if user.op_type in ACTIVATIONS or is_depthwise(graph, user, channels):
            middle.append(user)
            tensor = user.output[0]
        elif is_dense(graph, user) and conv_weight(graph, user).shape[1] == channels:
            return middle, user
        else:
            return None


def pad_channels(model: onnx.ModelProto, multiple: int = NCHWC_BLOCK) -> onnx.ModelProto:
    """Pad the width of Conv -> [activation | depthwise Conv]* -> Conv chains up to `multiple`.

    The new channels get zero filters and zero bias, so they hold exactly 0 through every
    activation (f(0) = 0 for PRelu, Relu, LeakyRelu) and depthwise conv, and the closing Conv
    reads them with zero weights: the output is unchanged.
    """
    graph = Graph(model)
    sole_readers = graph.sole_readers()
    for start in graph.nodes:
        if not is_dense(graph, start):
            continue
        channels = conv_weight(graph, start).shape[0]
        extra = -channels % multiple
        chain = channel_chain(graph, start, sole_readers) if extra else None
        if chain is None:
            continue
        middle, end = chain
        pad_output_channels(graph, start, extra)
        for node in middle:
            if node.op_type == "Conv":
                pad_output_channels(graph, node, extra)
                set_attribute(node, "group", channels + extra)
            elif node.op_type == "PRelu":
                slope = graph.constant(node.input[1])
                if slope is not None and slope.size > 1:
                    graph.replace_input(node, 1, node.input[1], padded(slope, slope.ndim - 3, extra))
        graph.replace_input(end, 1, end.input[1], padded(conv_weight(graph, end), 1, extra))
    return graph.finish()


def pad_output_channels(graph: Graph, node: onnx.NodeProto, extra: int) -> None:
    graph.replace_input(node, 1, node.input[1], padded(conv_weight(graph, node), 0, extra))
    if len(node.input) > 2 and node.input[2]:
        graph.replace_input(node, 2, node.input[2], padded(graph.constant(node.input[2]), 0, extra))


# --- range equalization (for INT8) --------------------------------------------------------------


def channel_ranges(model: onnx.ModelProto, tensors: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """max |value| of each channel of the named NCHW tensors over `images`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in tensors)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    ranges = {name: np.zeros(0, np.float32) for name in tensors}
    for start in range(0, len(images), 32):
        outputs = session.run(tensors, {session.get_inputs()[0].name: images[start : start + 32]})
        for name, values in zip(tensors, outputs, strict=True):
            batch_range = np.abs(values).max(axis=(0, 2, 3))
            ranges[name] = np.maximum(ranges[name], batch_range) if ranges[name].size else batch_range
    return ranges


def equalize_channel_ranges(model: onnx.ModelProto, images: np.ndarray, balance: float = 0.5) -> onnx.ModelProto:
    """Cross-layer range equalization of Conv -> act -> depthwise Conv -> act -> Conv chains.

    INT8 activations get one scale per tensor, and MiniFASNet's expansion channels differ up to
    ten-fold in range, so the narrow ones keep few levels. PRelu and Relu commute with a positive
    per-channel scale, so dividing channel c of the first Conv by s_c, multiplying the depthwise
    filter by s_c / t_c and the last Conv's input column by t_c leaves the output unchanged (Nagel et
    al., 2019, "Data-free quantization", with ranges measured on `images`). s gives every channel of
    the first output the same range (its filters are quantized per channel anyway); t moves the
    depthwise output `balance` of the way there, since the last Conv's weights absorb it.
    """
    graph = Graph(model)
    sole_readers = graph.sole_readers()
    chains = []
    for start in graph.nodes:
        chain = channel_chain(graph, start, sole_readers) if is_dense(graph, start) else None
        depthwise = [n for n in chain[0] if n.op_type == "Conv"] if chain else []
        if len(depthwise) == 1:  # the activations of a chain all commute with positive scales
            chains.append((start, depthwise[0], chain[1]))
    ranges = channel_ranges(model, [t for s, d, _ in chains for t in (s.output[0], d.output[0])], images)
    for start, depthwise, end in chains:
        first, second = ranges[start.output[0]], ranges[depthwise.output[0]]
        columns = np.abs(conv_weight(graph, end)).max(axis=(0, 2, 3))
        s = relative(first)
        t = relative(np.where(columns > 0, second / np.maximum(columns, 1e-12), 0.0) ** balance)
        scale_output_channels(graph, start, 1 / s)
        scale_output_channels(graph, depthwise, 1 / t, weight_factor=s)
        graph.replace_input(end, 1, end.input[1], conv_weight(graph, end) * t[None, :, None, None])
    return graph.finish()


def relative(ranges: np.ndarray) -> np.ndarray:
    """Each channel's range over the largest, 1 for channels that never fire (e.g. padding)."""
    largest = ranges.max()
    return np.where(ranges > 0, ranges / largest, 1.0).astype(np.float32) if largest > 0 else np.ones_like(ranges)


def scale_output_channels(
    graph: Graph, node: onnx.NodeProto, factor: np.ndarray, weight_factor: np.ndarray | None = None
) -> None:
    """Multiply output channel c of a Conv by factor[c] (its filter also by weight_factor[c])."""
    weight_scale = factor if weight_factor is None else factor * weight_factor
    graph.replace_input(node, 1, node.input[1], conv_weight(graph, node) * weight_scale[:, None, None, None])
    if len(node.input) > 2 and node.input[2]:
        graph.replace_input(node, 2, node.input[2], graph.constant(node.input[2]) * factor)


# --- PRelu ---------------------------------------------------------------------------------------


def scale_channels(graph: Graph, source: str, scale: np.ndarray, output: str) -> onnx.NodeProto:
    """A 1x1 depthwise Conv: output[:, c] = scale[c] * source[:, c]."""
    weight = graph.add_constant("prelu_scale", scale.reshape(-1, 1, 1, 1))
    return helper.make_node("Conv", [source, weight], [output], group=scale.size, kernel_shape=[1, 1])


def prelu_replacement(graph: Graph, node: onnx.NodeProto, slope: np.ndarray) -> list[onnx.NodeProto]:
    """Relu, 1x1 depthwise Conv and Add in place of a PRelu (`fas.export.layers.prelu_decomposition`)."""
    source, (output,) = node.input[0], node.output
    if np.all(slope == slope.flat[0]):
        return [helper.make_node("LeakyRelu", [source], [output], alpha=float(slope.flat[0]))]
    inner, outer = prelu_decomposition(slope)
    scaled, rectified, weighted = f"{output}.scaled", f"{output}.relu", f"{output}.weighted"
    nodes = [scale_channels(graph, source, inner, scaled), helper.make_node("Relu", [scaled], [rectified])]
    if outer is not None:
        nodes.append(scale_channels(graph, rectified, outer, weighted))
    nodes.append(helper.make_node("Add", [source, weighted if outer is not None else rectified], [output]))
    return nodes


def prelu_to_relu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each PRelu with a constant per-channel slope on a 4-D tensor by Relu, Conv and Add.

    A PRelu whose slope is one number becomes LeakyRelu (which ORT fuses into the Conv before it).
    """
    graph = Graph(model)
    nodes: list[onnx.NodeProto] = []
    for node in graph.nodes:
        slope = channel_slope(graph.constant(node.input[1])) if node.op_type == "PRelu" else None
        nodes.extend([node] if slope is None else prelu_replacement(graph, node, slope))
    graph.set_nodes(nodes)
    return graph.finish()


def channel_slope(slope: np.ndarray | None) -> np.ndarray | None:
    """The slope as a (C,) vector when it is one number or one per channel of an NCHW tensor."""
    if slope is None:
        return None
    if slope.size == 1 or (slope.ndim in (3, 4) and slope.shape[-3] == slope.size):
        return slope.reshape(-1).astype(np.float32)
    return None


def optimize_for_cpu(model: onnx.ModelProto, calibration: np.ndarray | None = None) -> onnx.ModelProto:
    """Apply the rewrites above in an order where each one still sees the pattern it looks for.

    With `calibration` images (the INT8 calibration crops) channel ranges are also equalized, which
    changes nothing in FP32 and makes the INT8 model follow it more closely.
    """
    optimized = onnx.ModelProto()
    optimized.CopyFrom(model)
    optimized = pad_channels(reduce_mean_to_global_average_pool(fuse_gemm_chains(optimized)))
    if calibration is not None:
        optimized = equalize_channel_ranges(optimized, calibration)
    optimized = prelu_to_relu(optimized)
    onnx.checker.check_model(optimized, full_check=True)
    return optimized
