"""How a model wants its input and how to read its output; recorded with every checkpoint and export.

Two published conventions exist (DESIGN.md): Silent-Face feeds BGR in 0..255 from a box scaled by
2.7 or 4.0 and shifted inside the frame (or, for its `org` models, the whole image resized);
suri-liveness feeds RGB / 255 from a box expanded 1.5x with reflect padding, letterboxed. Our own
models record whichever the data config used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ColorOrder = Literal["rgb", "bgr"]
CropMode = Literal["shift", "reflect", "pad", "none"]
CROP_MODES = ("shift", "reflect", "pad", "none")


@dataclass(frozen=True)
class InputConvention:
    """Image + face box -> model input: crop, resize, colour order and `(pixel * pixel_scale - mean) / std`.

    crop_mode: `shift` (Silent-Face: box scaled by crop_scale, shifted inside the frame), `reflect`
    (suri-liveness: square of max(w, h) * crop_scale, reflect-101 padded, letterboxed), `pad` (hairymax:
    the same square padded black, letterboxed black) or `none` (Silent-Face `org` models: the whole
    image resized, the box ignored). See `fas.data.crop`.
    """

    input_size: int = 80
    color_order: ColorOrder = "rgb"
    pixel_scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop_scale: float = 2.7
    crop_mode: CropMode = "shift"

    def __post_init__(self) -> None:
        if self.color_order not in ("rgb", "bgr"):
            raise ValueError(f"color_order must be 'rgb' or 'bgr', got {self.color_order!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")
        if self.input_size < 16:
            raise ValueError(f"input_size must be at least 16 pixels, got {self.input_size}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InputConvention:
        return cls(**values)


@dataclass(frozen=True)
class ClassScheme:
    """Which CelebA-Spoof spoof types (label index 40) map to which output class.

    Spoof types absent from `spoof_type_classes` are excluded from the data (and counted in the log).
    """

    name: str
    class_names: tuple[str, ...]
    real_class_index: int
    spoof_type_classes: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "spoof_type_classes", {int(k): int(v) for k, v in self.spoof_type_classes.items()})
        n = len(self.class_names)
        if not 0 <= self.real_class_index < n:
            raise ValueError(
                f"class scheme '{self.name}': real_class_index {self.real_class_index} is not in 0..{n - 1}"
            )
        bad = {t: c for t, c in self.spoof_type_classes.items() if not 0 <= c < n}
        if bad:
            raise ValueError(f"class scheme '{self.name}': classes {bad} are outside 0..{n - 1}")
        if self.spoof_type_classes and self.spoof_type_classes.get(0) != self.real_class_index:
            raise ValueError(f"class scheme '{self.name}': spoof type 0 (live) must map to the real class")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_of(self, spoof_type: int) -> int | None:
        """Class index of a spoof type, or None when the scheme excludes it."""
        return self.spoof_type_classes.get(spoof_type)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClassScheme:
        return cls(**values)


@dataclass(frozen=True)
class ModelInfo:
    """What an exported model says about itself."""

    convention: InputConvention
    class_scheme: ClassScheme
    backbone: str
    config: dict[str, Any] | None = None

    def to_properties(self) -> dict[str, str]:
        """String key-value metadata, as ONNX and TFLite files carry it (`fas.convention`, `fas.class_scheme`,
        `fas.backbone`, `fas.config`)."""
        properties = {
            "fas.convention": json.dumps(self.convention.to_dict()),
            "fas.class_scheme": json.dumps(self.class_scheme.to_dict()),
            "fas.backbone": self.backbone,
        }
        if self.config is not None:
            properties["fas.config"] = json.dumps(self.config)
        return properties

    @classmethod
    def from_properties(cls, properties: dict[str, str]) -> ModelInfo:
        """The inverse of `to_properties`; KeyError / ValueError / TypeError when they are missing or malformed."""
        class_scheme = json.loads(properties["fas.class_scheme"])
        class_scheme["spoof_type_classes"] = {int(k): v for k, v in class_scheme["spoof_type_classes"].items()}
        return cls(
            convention=InputConvention.from_dict(json.loads(properties["fas.convention"])),
            class_scheme=ClassScheme.from_dict(class_scheme),
            backbone=properties.get("fas.backbone", "unknown"),
            config=json.loads(properties["fas.config"]) if "fas.config" in properties else None,
        )
