"""`models/registry.yaml`: the one place that says what fas knows of published models, as timm keeps a
model's preprocessing in its pretrained config.

    conventions:   how each published project feeds its models (`InputConvention` fields, its input size)
                   and reads their output (a class scheme, by class count, named from configs/class_scheme/)
    models:        the files fas can fetch (`python -m fas.download`): address, sha256, licence, card, and
                   the convention each was trained with

Importing a published file (`fas.models.pretrained`), the `convention=<name>` config group and setting,
fine-tuning from `pretrained=<name>` and the downloads all read it; nothing restates it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fas.convention import ClassScheme, InputConvention
from fas.errors import ConfigError, FasError, ModelFileError

REPOSITORY = Path(__file__).resolve().parents[1]
REGISTRY_PATH = REPOSITORY / "models" / "registry.yaml"
CLASS_SCHEME_DIR = REPOSITORY / "configs" / "class_scheme"


class RegistryError(FasError, RuntimeError):
    """The registry cannot be read, or names something it does not hold."""


@dataclass(frozen=True)
class RegistryEntry:
    """A file fas can fetch: where from, its sha256, its licence and card, and (for a liveness model) the
    name of the convention it was trained with."""

    name: str
    file: str
    url: str
    sha256: str
    licence: str
    kind: str
    architecture: str
    card: str
    size_bytes: int | None = None
    convention: str | None = None


@dataclass(frozen=True)
class PublishedConvention:
    """How a published project feeds its models and reads their output."""

    name: str
    source: str
    fields: dict[str, Any]  # InputConvention fields, input_size among them (the published models' size)
    class_schemes: dict[int, ClassScheme]  # by class count

    @property
    def default_size(self) -> int:
        return int(self.fields["input_size"])

    def input_convention(self, **overrides: Any) -> InputConvention:
        """The convention, with `overrides` (e.g. another `input_size`) applied."""
        return InputConvention(**{**self.fields, **{k: v for k, v in overrides.items() if v is not None}})

    def class_scheme(self, num_classes: int, path: str | Path) -> ClassScheme:
        if num_classes not in self.class_schemes:
            known = " or ".join(str(n) for n in self.class_schemes)
            raise ModelFileError(
                f"{path}: has {num_classes} classes, but {self.source} models (convention={self.name}) have {known}"
            )
        return self.class_schemes[num_classes]


def read_yaml(path: Path = REGISTRY_PATH) -> dict[str, Any]:
    if not path.is_file():
        raise RegistryError(f"{path}: model registry not found; run from a fas checkout or pass its path")
    return yaml.safe_load(path.read_text()) or {}


def read_registry(path: str | Path = REGISTRY_PATH) -> dict[str, RegistryEntry]:
    """The fetchable files (`models:`), by name."""
    models = read_yaml(Path(path)).get("models") or {}
    return {name: RegistryEntry(name=name, **values) for name, values in models.items()}


@functools.cache
def class_scheme(name: str) -> ClassScheme:
    """A class scheme of the `class_scheme` config group (`configs/class_scheme/<name>.yaml`)."""
    path = CLASS_SCHEME_DIR / f"{name}.yaml"
    if not path.is_file():
        raise RegistryError(f"{path}: no such class scheme")
    values = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "_target_"}
    return ClassScheme(**values)


@functools.cache
def published_conventions(path: Path = REGISTRY_PATH) -> dict[str, PublishedConvention]:
    """The published conventions (`conventions:`), by name (read once per process: every model file that is
    imported or named asks for them)."""
    conventions = {}
    for name, values in (read_yaml(path).get("conventions") or {}).items():
        schemes = {int(count): class_scheme(scheme) for count, scheme in values["class_schemes"].items()}
        conventions[name] = PublishedConvention(name, values["source"], dict(values["input_convention"]), schemes)
    return conventions


def published(name: str) -> PublishedConvention:
    conventions = published_conventions()
    if name not in conventions:
        raise ConfigError(f"unknown convention '{name}'; choose one of {', '.join(conventions)}")
    return conventions[name]


def published_convention(name: str, **overrides: Any) -> InputConvention:
    """`configs/convention/<name>.yaml`: a published input convention, with overrides such as `input_size`."""
    return published(name).input_convention(**overrides)


def model_convention(name: str) -> PublishedConvention | None:
    """The published convention a registry model was trained with, or None (detectors, unknown names)."""
    entry = read_registry().get(name)
    return published(entry.convention) if entry is not None and entry.convention else None
