"""How a model wants its input and how to read its output; recorded with every checkpoint and export.

`InputConvention` is the one description of how an image and a face box become a model's input: the
crop (rule, scale, size, resampling), the colour order and the normalisation. The training cache, the
evaluation crops, export calibration, `fas.predict` and the LiteRT files all crop through
`fas.data.crop.crop_face` with it, so a model is served exactly the pixels it learned on.

The published models each have theirs (`models/registry.yaml`; docs/architecture.md): Silent-Face feeds
BGR in 0..255 from a box scaled by 2.7 or 4.0 and shifted inside the frame (or, for its `org` models, the
whole image resized); suri-liveness feeds RGB / 255 from a box expanded 1.5x with reflect padding,
letterboxed. Our own models record the `convention` config they were trained with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fas.errors import ConfigError

ColorOrder = Literal["rgb", "bgr"]
CropMode = Literal["shift", "reflect", "pad", "none"]
CROP_MODES = ("shift", "reflect", "pad", "none")
# Resampling of the crop to the input size; None keeps each crop rule's own (see fas.data.crop).
INTERPOLATIONS = ("nearest", "linear", "cubic", "area", "lanczos")
# The fields that decide a crop's pixels (a packed cache holds crops made by them; colour order and
# normalisation are applied when a crop is read).
CROP_FIELDS = ("input_size", "crop_scale", "crop_mode", "interpolation")


@dataclass(frozen=True)
class InputConvention:
    """Image + face box -> model input: crop, resize, colour order and `(pixel * pixel_scale - mean) / std`.

    crop_mode: `shift` (Silent-Face: box scaled by crop_scale, shifted inside the frame), `reflect`
    (suri-liveness: square of max(w, h) * crop_scale, reflect-101 padded, letterboxed), `pad` (hairymax:
    the same square padded black, letterboxed black) or `none` (Silent-Face `org` models: the whole
    image resized, the box ignored). See `fas.data.crop`. `interpolation` overrides the rule's own
    resampling (None keeps it): checkpoints written before it existed read as None, which is what
    they were cropped with.
    """

    input_size: int = 80
    color_order: ColorOrder = "rgb"
    pixel_scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop_scale: float = 2.7
    crop_mode: CropMode = "shift"
    interpolation: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", _integer(self.input_size))
        object.__setattr__(self, "crop_scale", float(self.crop_scale))
        object.__setattr__(self, "pixel_scale", float(self.pixel_scale))
        if self.color_order not in ("rgb", "bgr"):
            raise ConfigError(f"color_order must be 'rgb' or 'bgr', got {self.color_order!r}")
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)} or null (the crop rule's own), "
                f"got {self.interpolation!r}"
            )
        if self.input_size < MIN_INPUT_SIZE:
            raise ConfigError(f"input_size must be at least {MIN_INPUT_SIZE} pixels, got {self.input_size}")
        if self.crop_scale <= 0 or self.pixel_scale <= 0:
            raise ConfigError(f"crop_scale and pixel_scale must be positive, got {self.crop_scale}, {self.pixel_scale}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or not all(self.std):
            raise ConfigError(f"mean and std need three values each, std non-zero; got {self.mean}, {self.std}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InputConvention:
        """The inverse of `to_dict`; fields missing from older files take their defaults (see the class)."""
        return cls(**values)

    def crop_settings(self) -> dict[str, Any]:
        """The fields that decide a crop's pixels (`CROP_FIELDS`)."""
        return {name: getattr(self, name) for name in CROP_FIELDS}

    def describe_crop(self) -> str:
        interpolation = self.interpolation or "the rule's own interpolation"
        size = self.input_size
        return f"{size}x{size} crops at scale {self.crop_scale:g} ({self.crop_mode}, {interpolation})"

    def crop_overrides(self) -> str:
        """The command-line overrides that select this crop (`convention.*`)."""
        return " ".join(f"convention.{name}={_override_value(getattr(self, name))}" for name in CROP_FIELDS)


MIN_INPUT_SIZE = 16


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ConfigError(f"input_size must be a whole number of pixels, got {value!r}")
    return int(value)


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    return f"{value:g}" if isinstance(value, float) else str(value)


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
            raise ConfigError(
                f"class scheme '{self.name}': real_class_index {self.real_class_index} is not in 0..{n - 1}"
            )
        bad = {t: c for t, c in self.spoof_type_classes.items() if not 0 <= c < n}
        if bad:
            raise ConfigError(f"class scheme '{self.name}': classes {bad} are outside 0..{n - 1}")
        if self.spoof_type_classes and self.spoof_type_classes.get(0) != self.real_class_index:
            raise ConfigError(f"class scheme '{self.name}': spoof type 0 (live) must map to the real class")

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
    """What a model file says about itself. `threshold` is the operating point chosen on its training run's
    validation data (`{"value", "rule", "split"}`), which evaluation and prediction use unless told otherwise;
    None for files that record none (published weights)."""

    convention: InputConvention
    class_scheme: ClassScheme
    backbone: str
    config: dict[str, Any] | None = None
    threshold: dict[str, Any] | None = None

    def to_properties(self) -> dict[str, str]:
        """String key-value metadata, as ONNX and TFLite files carry it (`fas.convention`, `fas.class_scheme`,
        `fas.backbone`, `fas.config`, `fas.threshold`)."""
        properties = {
            "fas.convention": json.dumps(self.convention.to_dict()),
            "fas.class_scheme": json.dumps(self.class_scheme.to_dict()),
            "fas.backbone": self.backbone,
        }
        if self.config is not None:
            properties["fas.config"] = json.dumps(self.config)
        if self.threshold is not None:
            properties["fas.threshold"] = json.dumps(self.threshold)
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
            threshold=json.loads(properties["fas.threshold"]) if "fas.threshold" in properties else None,
        )
