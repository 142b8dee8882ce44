"""Pretrained weights: the published MiniFASNet files with the input convention each was trained
with (`models/registry.yaml`, read by `fas.registry`), and initialising a backbone from any weights
file for fine-tuning.

- Silent-Face (Minivision): a bare state_dict (keys prefixed `module.`) whose *file name* carries the
  crop: `<scale>_<H>x<W>_<Type>.pth`, e.g. `2.7_80x80_MiniFASNetV2.pth` or `4_0_0_80x80_MiniFASNetV1SE.pth`
  (scale 4.0, shift 0, 0); scale `org` means no crop (the whole image resized). BGR float 0..255,
  3 classes with class 1 = real.
- suri-liveness (face-antispoof-onnx): a dict with `model_state_dict` (keys prefixed `model.`),
  `input_size`, `num_classes` and `architecture`; its training scripts write `{model_state_dict,
  validation_accuracy, config: {input_size, num_classes, ft_weight}}` with the classifier named
  `logits` and `FTGenerator.*` keys. RGB / 255, square crop 1.5x the box with reflect padding and
  letterbox, 2 classes with class 0 = real.
- hairymax/Face-AntiSpoofing: a DataParallel MultiFTNet state_dict (`module.model.*`,
  `module.FTGenerator.*`) named `AntiSpoofing_<bin|print-replay>_<scale>_<size>.pth`. RGB / 255, square
  crop 1.5x the box padded black, bilinear black letterbox, class 0 = live (2 or 3 classes).
- Plain state_dicts that record nothing (uniface, yakhyo ship Silent-Face's models so): the user names
  the convention, `convention=silentface_2.7` (the registry's `conventions:`).

`import_published` turns any of them into a backbone in eval mode plus the `ModelInfo` that a fas export
would carry, so evaluation, export and prediction treat them like our own checkpoints.
`load_pretrained` initialises a training backbone from any of them (or a fas checkpoint).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from fas.convention import ClassScheme, InputConvention, ModelInfo
from fas.errors import ConfigError
from fas.models import build_backbone
from fas.models.checkpoint import (
    PREFIXES,
    CheckpointMismatchError,
    backbone_state_dict,
    check_fits,
    describe_state_dict,
    load_backbone_weights,
    read_checkpoint,
)
from fas.registry import model_convention, published, published_convention, published_conventions

log = logging.getLogger(__name__)

# The published architecture names and our backbone names.
ARCHITECTURES = {
    "MiniFASNetV1": "minifasnet_v1",
    "MiniFASNetV2": "minifasnet_v2",
    "MiniFASNetV1SE": "minifasnet_v1se",
    "MiniFASNetV2SE": "minifasnet_v2se",
}

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
    """Silent-Face's convention (BGR, float 0..255) at the file's size and crop scale; the whole image for
    `org` files."""
    return published_convention(
        "silentface_2.7",
        input_size=parsed.height,
        crop_scale=parsed.scale if parsed.scale is not None else 1.0,
        crop_mode="shift" if parsed.scale is not None else "none",
    )


# hairymax/Face-AntiSpoofing's released names: AntiSpoofing_<bin|print-replay>_<crop scale>_<size>.pth
HAIRYMAX_NAME = re.compile(r"AntiSpoofing_(bin|print-replay)_(\d+(?:\.\d+)?)_(\d+)$")

KNOWN_LAYOUTS = (
    "a fas Lightning checkpoint, a Silent-Face <scale>_<H>x<W>_<Type>.pth, suri-liveness's best_model.pth or "
    "training checkpoint (model_state_dict + config), hairymax's AntiSpoofing_<bin|print-replay>_1.5_128.pth "
    "(module.model.* + module.FTGenerator.*), or plain MiniFASNet weights (uniface, yakhyo) with convention=<name>"
)


def is_suri_checkpoint(checkpoint: dict[str, Any]) -> bool:
    """suri-liveness's released file (`architecture`, `input_size`) or its training checkpoint (`config`)."""
    return "model_state_dict" in checkpoint and ("architecture" in checkpoint or "config" in checkpoint)


def file_convention(
    path: Path, checkpoint: dict[str, Any], found: dict[str, Any]
) -> tuple[InputConvention, ClassScheme, str] | None:
    """The convention, class scheme and source a published file records in its content or name, or None."""
    if is_suri_checkpoint(checkpoint):
        settings = checkpoint if "input_size" in checkpoint else checkpoint["config"]
        if not isinstance(settings, dict) or "input_size" not in settings:
            raise CheckpointMismatchError(f"{path}: a suri-liveness checkpoint without its input_size")
        suri = published("suri_liveness")
        convention = suri.input_convention(input_size=int(settings["input_size"]))
        return convention, suri.class_scheme(found["num_classes"], path), "suri-liveness"
    match = HAIRYMAX_NAME.match(path.stem)
    if match:
        hairymax = published("hairymax")
        convention = hairymax.input_convention(input_size=int(match[3]), crop_scale=float(match[2]))
        return convention, hairymax.class_scheme(found["num_classes"], path), "hairymax"
    if "_" in path.stem and path.stem.split("_")[-1] in ARCHITECTURES:
        parsed = parse_silentface_name(path)
        scheme = published("silentface_2.7").class_scheme(found["num_classes"], path)
        return silentface_convention(parsed), scheme, "silentface"
    return None


def import_published(
    path: str | Path, checkpoint: dict[str, Any], convention: str | None = None
) -> tuple[nn.Module, ModelInfo]:
    """A backbone (eval mode) with the published weights, and its input convention and class scheme.

    What the file records (suri-liveness's dict, a Silent-Face or hairymax file name) wins; a file that
    records nothing (a plain state_dict) takes the named `convention`, and without one is refused.
    """
    path = Path(path)
    state = backbone_state_dict(checkpoint)
    found = describe_state_dict(state)
    if not found["backbone"].startswith("minifasnet"):
        keys = ", ".join(list(checkpoint.get("model_state_dict") or checkpoint.get("state_dict") or checkpoint)[:4])
        raise CheckpointMismatchError(
            f"{path}: not a checkpoint fas knows (keys {keys}, ...); fas reads {KNOWN_LAYOUTS}"
        )
    recorded = file_convention(path, checkpoint, found)
    if recorded is None:
        if convention is None:
            raise CheckpointMismatchError(
                f"{path}: {found['backbone']} weights ({found['input_size']}x{found['input_size']}, "
                f"{found['num_classes']} classes) whose input convention the file does not record; name it with "
                f"convention=<{'|'.join(published_conventions())}> (a Silent-Face file may instead keep its "
                f"published name {SILENTFACE_PATTERN})"
            )
        named = published(convention)
        input_convention = named.input_convention(input_size=found["input_size"])
        recorded = (input_convention, named.class_scheme(found["num_classes"], path), convention)
    input_convention, scheme, source = recorded
    backbone_name = found["backbone"]
    architecture = checkpoint.get("architecture")
    if architecture is not None and ARCHITECTURES.get(str(architecture)) != backbone_name:
        raise CheckpointMismatchError(
            f"{path}: records architecture {architecture} but holds {backbone_name} weights; the file is inconsistent"
        )
    backbone = build_backbone(backbone_name, input_size=input_convention.input_size, num_classes=found["num_classes"])
    check_fits(backbone, state, backbone_name, path)
    backbone.load_state_dict(state)
    info = ModelInfo(input_convention, scheme, backbone_name, {"imported_from": path.name, "source": source})
    return backbone.eval(), info


def recorded_convention(path: str | Path, checkpoint: dict[str, Any]) -> InputConvention | None:
    """The input convention a weights file was trained with, when the file or its name says it."""
    if "hyper_parameters" in checkpoint and "convention" in checkpoint["hyper_parameters"]:
        return InputConvention.from_dict(checkpoint["hyper_parameters"]["convention"])
    found = describe_state_dict(backbone_state_dict(checkpoint))
    if not found["backbone"].startswith("minifasnet"):
        return None
    recorded = file_convention(Path(path), checkpoint, found)
    return recorded[0] if recorded else None


def load_pretrained(
    backbone: nn.Module,
    path: str | Path,
    expected_name: str,
    convention: InputConvention,
    reinit_classifier: bool = False,
) -> list[str]:
    """`train.py pretrained=<file>`: load the weights, and warn when the data feeds the model another
    input convention than the one it learnt (fine-tuning then starts from features that do not fit).
    Returns the backbone keys whose values came from the file."""
    from_file = load_backbone_weights(backbone, path, expected_name, reinit_classifier)
    checkpoint = read_checkpoint(path)
    loaded = backbone_state_dict(checkpoint)
    left_out = sorted({key.split(".")[0] for key in checkpoint_tensors(checkpoint)} - {k.split(".")[0] for k in loaded})
    log.info(
        "pretrained %s: loaded %d tensors (%s parameters) into %s%s%s",
        path,
        len(loaded),
        f"{sum(v.numel() for v in loaded.values()):,}",
        expected_name,
        ", classifier re-initialised" if reinit_classifier else "",
        f"; left out: {', '.join(left_out)}" if left_out else "",
    )
    recorded = recorded_convention(path, checkpoint)
    differences = convention_differences(recorded, convention) if recorded else []
    if differences:
        log.warning(
            "pretrained %s was trained with another input convention than the data config gives it (%s); "
            "set the data.* keys to match unless you mean to re-learn it",
            path,
            "; ".join(differences),
        )
    return from_file


def checkpoint_tensors(checkpoint: dict[str, Any]) -> list[str]:
    """The tensor keys of any checkpoint layout, wrapper prefixes stripped (what `backbone_state_dict` keeps
    and what it drops, e.g. the Fourier head)."""
    state = checkpoint.get("state_dict") or checkpoint.get("model_state_dict") or checkpoint
    keys = []
    for key in state:
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        keys.append(key)
    return keys


def convention_differences(recorded: InputConvention, used: InputConvention) -> list[str]:
    """`field: recorded -> used` for every field where two conventions differ."""
    return [
        f"{f.name}: {getattr(recorded, f.name)} -> {getattr(used, f.name)}"
        for f in fields(InputConvention)
        if getattr(recorded, f.name) != getattr(used, f.name)
    ]


def pretrained_convention(weights: str | Path | None, **overrides: Any) -> InputConvention:
    """`convention=pretrained` (what `experiment=finetune_*` uses): the input convention the weights named by
    `pretrained=` were trained with, from the registry for a registry name, else from the file itself;
    `overrides` (e.g. `input_size`) change single fields."""
    if not weights:
        raise ConfigError("convention=pretrained takes the convention of pretrained=<file or name>; set pretrained")
    named = model_convention(str(weights))
    if named is not None:
        return named.input_convention(**overrides)
    path = Path(str(weights)).expanduser()
    recorded = recorded_convention(path, read_checkpoint(path))
    if recorded is None:
        raise CheckpointMismatchError(
            f"{path}: records no input convention; choose one for it, e.g. convention=suri_liveness "
            "(or convention=default for fas's own)"
        )
    fields = {**recorded.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
    return InputConvention(**fields)
