from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fas.convention import ClassScheme, InputConvention, ModelInfo
from fas.export.onnx import export_onnx
from fas.inference.backends import TorchBackend, load_backend
from fas.inference.onnx_file import OnnxMetadataError, read_metadata
from fas.models import build_backbone

SCHEME = ClassScheme("silentface3", ("print", "live", "replay"), 1, {0: 1, 1: 0, 7: 2})


def test_export_round_trips_metadata_and_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("minifasnet_v1se", input_size=96, num_classes=3)
    for module in backbone.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    info = ModelInfo(
        InputConvention(input_size=96, color_order="bgr", pixel_scale=1.0), SCHEME, "minifasnet_v1se", {"seed": 1}
    )
    path = export_onnx(backbone, info, tmp_path / "model.onnx")
    assert read_metadata(path) == info
    onnx_backend = load_backend(path)
    batch = np.random.default_rng(0).uniform(0, 255, (3, 3, 96, 96)).astype(np.float32)
    expected = TorchBackend(backbone, info).logits(batch)
    np.testing.assert_allclose(onnx_backend.logits(batch), expected, atol=1e-3, rtol=1e-4)
    assert onnx_backend.logits(batch[:1]).shape == (1, 3)  # dynamic batch axis


def test_onnx_without_metadata_is_refused(tmp_path: Path) -> None:
    backbone = build_backbone("minifasnet_v2", input_size=80, num_classes=2)
    info = ModelInfo(InputConvention(), SCHEME, "minifasnet_v2")
    proto = onnx.load(export_onnx(backbone, info, tmp_path / "m.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    with pytest.raises(OnnxMetadataError, match=r"bare.onnx has no fas input-convention metadata"):
        read_metadata(tmp_path / "bare.onnx")
