"""Pretrained weights: the published MiniFASNet files with the input convention each was trained
with (DESIGN.md), and initialising a backbone from any weights file for fine-tuning.

- Silent-Face (Minivision): a bare state_dict (keys prefixed `module.`) whose *file name* carries the
  crop: `<scale>_<H>x<W>_<Type>.pth`, e.g. `2.7_80x80_MiniFASNetV2.pth` or `4_0_0_80x80_MiniFASNetV1SE.pth`
  (scale 4.0, shift 0, 0); scale `org` means no crop (the whole image resized). BGR float 0..255,
  3 classes with class 1 = real.
- suri-liveness (face-antispoof-onnx): a dict with `model_state_dict` (keys prefixed `model.`),
  `input_size`, `num_classes` and `architecture`. RGB / 255, square crop 1.5x the box with reflect
  padding and letterbox, 2 classes with class 0 = real.

`import_published` turns either into a backbone in eval mode plus the `ModelInfo` that a fas export
would carry, so evaluation, export and prediction treat them like our own checkpoints.
`load_pretrained` initialises a training backbone from any of them (or a fas checkpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from fas.convention import ClassScheme, InputConvention, ModelInfo
from fas.models import build_backbone
from fas.models.checkpoint import (
    CheckpointMismatchError,
    backbone_state_dict,
    check_fits,
    describe_state_dict,
    load_backbone_weights,
    read_checkpoint,
)

log = logging.getLogger(__name__)

# The published architecture names and our backbone names.
ARCHITECTURES = {
    "MiniFASNetV1": "minifasnet_v1",
    "MiniFASNetV2": "minifasnet_v2",
    "MiniFASNetV1SE": "minifasnet_v1se",
    "MiniFASNetV2SE": "minifasnet_v2se",
}

# Same as configs/class_scheme/silentface3.yaml and binary.yaml (a test keeps them equal): the schemes
# the two projects trained with, so evaluating an imported model on CelebA-Spoof maps labels the same way.
SILENTFACE_SCHEME = ClassScheme(
    name="silentface3",
    class_names=("print", "live", "replay"),
    real_class_index=1,
    spoof_type_classes={0: 1, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 2, 8: 2, 9: 2},
)
SURI_SCHEME = ClassScheme(
    name="binary",
    class_names=("live", "spoof"),
    real_class_index=0,
    spoof_type_classes={0: 0, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1, 9: 1},
)
SURI_CROP_SCALE = 1.5

SILENTFACE_PATTERN = "<scale>_<H>x<W>_<Type>.pth (e.g. 2.7_80x80_MiniFASNetV2.pth)"


@dataclass(frozen=True)
class SilentFaceName:
    """What a Silent-Face file name says: crop scale (None = `org`, no crop), input size, architecture."""

    scale: float | None
    height: int
    width: int
    architecture: str


def parse_silentface_name(path: str | Path) -> SilentFaceName:
    """Parse `<scale>[_<shift x>_<shift y>]_<H>x<W>_<Type>.pth` as Silent-Face's `parse_model_name` does."""

    def refused(problem: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(
            f"{Path(path).name}: a Silent-Face weights file, but {problem}; Silent-Face files must keep their "
            f"published name {SILENTFACE_PATTERN}"
        )

    parts = Path(path).stem.split("_")
    if len(parts) < 3:
        raise refused("its name does not say the crop")
    *head, size, architecture = parts
    height, _, width = size.partition("x")
    try:
        scale = None if head[0] == "org" else float(head[0])
        shifts = [] if scale is None else [float(v) for v in head[1:3]]
        height_px, width_px = int(height), int(width)
    except ValueError:
        raise refused("its name does not say the crop") from None
    if any(shifts):
        raise refused(f"shifted crops ({'_'.join(head)}) are not supported")
    if architecture not in ARCHITECTURES:
        raise refused(f"architecture {architecture} is not one of {', '.join(ARCHITECTURES)}")
    if height_px != width_px:
        raise refused(f"non-square input {height_px}x{width_px} is not supported")
    return SilentFaceName(scale, height_px, width_px, architecture)


def silentface_convention(parsed: SilentFaceName) -> InputConvention:
    """BGR, float 0..255, no mean/std; shifted box crop, or the whole image for `org` files."""
    return InputConvention(
        input_size=parsed.height,
        color_order="bgr",
        pixel_scale=1.0,
        crop_scale=parsed.scale if parsed.scale is not None else 1.0,
        crop_mode="shift" if parsed.scale is not None else "none",
    )


def suri_convention(input_size: int) -> InputConvention:
    """RGB / 255, square of 1.5 x max(w, h) with reflect-101 padding, letterboxed to input_size."""
    return InputConvention(
        input_size=input_size,
        color_order="rgb",
        pixel_scale=1.0 / 255.0,
        crop_scale=SURI_CROP_SCALE,
        crop_mode="reflect",
    )


def is_suri_checkpoint(checkpoint: dict[str, Any]) -> bool:
    return "model_state_dict" in checkpoint and "architecture" in checkpoint


def import_published(path: str | Path, checkpoint: dict[str, Any]) -> tuple[nn.Module, ModelInfo]:
    """A backbone (eval mode) with the published weights, and its input convention and class scheme."""
    path = Path(path)
    state = backbone_state_dict(checkpoint)
    found = describe_state_dict(state)
    if is_suri_checkpoint(checkpoint):
        architecture = str(checkpoint["architecture"])
        input_size, num_classes = int(checkpoint["input_size"]), int(checkpoint["num_classes"])
        if num_classes != SURI_SCHEME.num_classes:
            raise CheckpointMismatchError(
                f"{path}: a suri-liveness file with {num_classes} classes; only its published 2-class "
                "(0 = real, 1 = spoof) models are known"
            )
        convention, scheme, source = suri_convention(input_size), SURI_SCHEME, "suri-liveness"
    elif found["backbone"].startswith("minifasnet"):
        parsed = parse_silentface_name(path)
        architecture, input_size, num_classes = parsed.architecture, parsed.height, found["num_classes"]
        if num_classes != SILENTFACE_SCHEME.num_classes:
            raise CheckpointMismatchError(
                f"{path}: a Silent-Face file with {num_classes} classes; only its 3-class models (1 = real) are known"
            )
        convention, scheme, source = silentface_convention(parsed), SILENTFACE_SCHEME, "silentface"
    else:
        raise CheckpointMismatchError(
            f"{path}: not a checkpoint fas knows; expected a fas Lightning checkpoint (.ckpt), a Silent-Face "
            f"{SILENTFACE_PATTERN} or a suri-liveness best_model.pth"
        )
    if architecture not in ARCHITECTURES:
        raise CheckpointMismatchError(f"{path}: architecture {architecture} is not one of {', '.join(ARCHITECTURES)}")
    backbone_name = ARCHITECTURES[architecture]
    backbone = build_backbone(backbone_name, input_size=input_size, num_classes=num_classes)
    check_fits(backbone, state, backbone_name, path)
    backbone.load_state_dict(state)
    info = ModelInfo(convention, scheme, backbone_name, {"imported_from": path.name, "source": source})
    return backbone.eval(), info


def recorded_convention(path: str | Path, checkpoint: dict[str, Any]) -> InputConvention | None:
    """The input convention a weights file was trained with, when the file or its name says it."""
    if "hyper_parameters" in checkpoint and "convention" in checkpoint["hyper_parameters"]:
        return InputConvention.from_dict(checkpoint["hyper_parameters"]["convention"])
    if is_suri_checkpoint(checkpoint):
        return suri_convention(int(checkpoint["input_size"]))
    try:
        return silentface_convention(parse_silentface_name(path))
    except CheckpointMismatchError:
        return None


def load_pretrained(
    backbone: nn.Module,
    path: str | Path,
    expected_name: str,
    convention: InputConvention,
    reinit_classifier: bool = False,
) -> None:
    """`train.py pretrained=<file>`: load the weights, and warn when the data feeds the model another
    input convention than the one it learnt (fine-tuning then starts from features that do not fit)."""
    load_backbone_weights(backbone, path, expected_name, reinit_classifier)
    recorded = recorded_convention(path, read_checkpoint(path))
    differences = convention_differences(recorded, convention) if recorded else []
    if differences:
        log.warning(
            "pretrained %s was trained with another input convention than the data config gives it (%s); "
            "set the data.* keys to match unless you mean to re-learn it",
            path,
            "; ".join(differences),
        )


def convention_differences(recorded: InputConvention, used: InputConvention) -> list[str]:
    """`field: recorded -> used` for every field where two conventions differ."""
    return [
        f"{f.name}: {getattr(recorded, f.name)} -> {getattr(used, f.name)}"
        for f in fields(InputConvention)
        if getattr(recorded, f.name) != getattr(used, f.name)
    ]
