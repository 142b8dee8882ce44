from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fas.models import BACKBONES, FTHead, UnknownBackboneError, build_backbone
from fas.models.checkpoint import (
    CheckpointMismatchError,
    backbone_state_dict,
    describe_state_dict,
    load_backbone_weights,
    read_checkpoint,
)
from fas.models.minifasnet import conv6_kernel_size


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("size", [80, 128])
def test_forward_backward_every_backbone(name: str, size: int) -> None:
    model = build_backbone(name, input_size=size, num_classes=3)
    head = FTHead(model.feature_channels)
    images = torch.randn(2, 3, size, size, requires_grad=True)
    features = model.features(images)
    logits = model.classify(features)
    ft_map = head(features)
    assert logits.shape == (2, 3)
    assert ft_map.shape == (2, 1, size // 8, size // 8)
    (logits.sum() + ft_map.sum()).backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_ft_map_is_twice_the_conv6_kernel() -> None:
    for size, kernel in [(80, 5), (128, 8), (112, 7)]:
        assert conv6_kernel_size(size) == kernel
        features = build_backbone("minifasnet_v2", size, 2).features(torch.zeros(1, 3, size, size))
        assert features.shape[-1] == 2 * kernel


def test_parameter_counts_match_the_published_sizes() -> None:
    counts = {n: sum(p.numel() for p in build_backbone(n, 80, 3).parameters()) for n in BACKBONES}
    for name in ("minifasnet_v1", "minifasnet_v2", "minifasnet_v1se", "minifasnet_v2se"):
        assert 0.41e6 < counts[name] < 0.48e6, (name, counts[name])


def test_unknown_backbone_names_the_choices() -> None:
    with pytest.raises(UnknownBackboneError, match=r"Choose one of: minifasnet_v1, .*mobilenetv4"):
        build_backbone("resnet50", 80, 2)


@pytest.mark.parametrize(
    ("file", "name", "size", "classes"),
    [
        ("silentface/2.7_80x80_MiniFASNetV2.pth", "minifasnet_v2", 80, 3),
        ("silentface/4_0_0_80x80_MiniFASNetV1SE.pth", "minifasnet_v1se", 80, 3),
        ("suri-liveness/best_model.pth", "minifasnet_v2se", 128, 2),
    ],
)
def test_published_weights_load_without_missing_or_unexpected_keys(
    reference_dir: Path, file: str, name: str, size: int, classes: int
) -> None:
    path = reference_dir / file
    model = build_backbone(name, input_size=size, num_classes=classes)
    state = backbone_state_dict(read_checkpoint(path))
    assert describe_state_dict(state) == {"backbone": name, "input_size": size, "num_classes": classes}
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    load_backbone_weights(model, path, name)
    assert torch.equal(model.prob.weight, state["prob.weight"])


def test_wrong_architecture_is_one_line_with_the_fix(reference_dir: Path) -> None:
    path = reference_dir / "suri-liveness/best_model.pth"
    model = build_backbone("minifasnet_v1", input_size=80, num_classes=2)
    with pytest.raises(CheckpointMismatchError) as caught:
        load_backbone_weights(model, path, "minifasnet_v1")
    message = str(caught.value)
    assert "\n" not in message
    assert "model=minifasnet_v2se" in message and "convention.input_size=128" in message


def test_missing_checkpoint_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointMismatchError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.ckpt")


def test_prefixes_and_ft_head_keys_are_handled() -> None:
    weight = torch.ones(1)
    state = {"module.conv1.conv.weight": weight, "FTGenerator.ft.0.weight": weight, "model.prob.weight": weight}
    assert set(backbone_state_dict(state)) == {"conv1.conv.weight", "prob.weight"}
    lightning = {"state_dict": {"backbone.prob.weight": weight, "ft_head.ft.0.weight": weight}}
    assert set(backbone_state_dict(lightning)) == {"prob.weight"}
