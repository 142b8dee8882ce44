"""The two layer rules every export format applies, written once: how a PReLU is rewritten for fast
integer kernels, and which layers count as high-resolution (kept float in INT8 files).

The ONNX export (`fas.export.rewrite`, `fas.export.quantize`) applies them to the graph, the LiteRT
export (`fas.export.tflite`) to the PyTorch module before conversion; both read them from here.
"""

from __future__ import annotations

import numpy as np


def prelu_decomposition(slope: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-channel scales (inner, outer) with PReLU(y) = y + outer * Relu(inner * y), exact in real arithmetic.

    PReLU runs as a slow element-wise kernel in both ONNX Runtime and XNNPACK (and its INT8 form falls
    out of XNNPACK's integer kernels), while a 1x1 depthwise convolution, Relu and Add are fused and
    quantized everywhere. With every slope a <= 1: inner = a - 1 and no outer scale (for y > 0 the Relu
    term vanishes, for y < 0 it adds (a - 1) y); otherwise inner = -1 and outer = 1 - a.
    """
    slope = np.asarray(slope, np.float32).reshape(-1)
    if np.all(slope <= 1):
        return slope - 1, None
    return -np.ones_like(slope), 1 - slope


def is_high_resolution(input_side: int, output_side: int, float_stride: int) -> bool:
    """True for a layer whose output map is at most `float_stride` times smaller than the input (0: never).

    8-bit rounding noise in these layers looks like the texture cues they detect, so the INT8 recipes keep
    them float (`quantization.float_stride`, `tflite.float_stride`; experiments/int8_fidelity).
    """
    return bool(float_stride and input_side and output_side and input_side / output_side <= float_stride)
