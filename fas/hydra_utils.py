"""What the Hydra apps (`train`, `evaluate`, `export`, `predict`, `prepare`) share: instantiating config
groups, checking a config before any work, the resolvers the configs use, closing loggers, and refusing
settings that moved.

Checks raise `ConfigError` with one line naming the key and the fix; the entry scripts print it without
a traceback (`fas.cli.exit_on_user_error`).
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

from fas.convention import MIN_INPUT_SIZE
from fas.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
THRESHOLD_RULES = ("model", "eer", "apcer", "fixed")  # evaluate.py's threshold.rule

# Settings that moved, and where to: an override of the old key is refused in one line naming the new one.
RENAMED_KEYS = {
    **{f"data.{key}": f"convention.{key}" for key in ("input_size", "crop_scale", "crop_mode", "color_order")},
    **{f"data.{key}": f"convention.{key}" for key in ("pixel_scale", "mean", "std")},
    "data.crop_interpolation": "convention.interpolation",
    "crop.size": "convention.input_size",
    "crop.scale": "convention.crop_scale",
    "crop.mode": "convention.crop_mode",
    "crop.interpolation": "convention.interpolation",
}


def refuse_renamed_overrides(arguments: Sequence[str]) -> None:
    """Exit with one line when a command-line override names a key that moved (before Hydra composes)."""
    for argument in arguments:
        key = argument.split("=", 1)[0].lstrip("+~")
        if "=" in argument and key in RENAMED_KEYS:
            value = argument.split("=", 1)[1]
            print(
                f"error: {key} moved to {RENAMED_KEYS[key]} (the input convention is its own config group): pass "
                f"{RENAMED_KEYS[key]}={value} to train.py or python -m fas.data.prepare; evaluate.py, export.py and "
                "fas.predict crop with each model's recorded convention",
                file=sys.stderr,
            )
            sys.exit(2)


class DropMessages(logging.Filter):
    """Drop the log records whose message starts with one of `starts`."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


NOISE_FILTER = DropMessages("💡 Tip:")
# What importing torchao (quantization=qat) logs on a CPU machine: its CUDA kernels and Triton are absent
# (nothing fas uses needs them), and its pytree registration of an Enum is deprecated in torch 2.13.
LIBRARY_NOISE = {
    "lightning.pytorch.utilities.rank_zero": NOISE_FILTER,
    "torchao": DropMessages("Failed to load "),
    "torchao.kernel.intmm": DropMessages("Warning: Detected no triton"),
    "torch.utils._pytree": DropMessages("<enum 'KernelPreference'> is an Enum subclass"),
}


def silence_library_noise() -> None:
    """Hide what libraries print on every run that asks nothing of the user: Lightning's advertisement for
    its cloud logger, the deprecation its own pytree code triggers in torch (Lightning 2.6 on torch 2.13), and
    torchao's import notes (`LIBRARY_NOISE`). Warnings that concern the user's run are left alone."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    for name, noise in LIBRARY_NOISE.items():
        logger = logging.getLogger(name)
        if noise not in logger.filters:
            logger.addFilter(noise)


def sweep_group(mode: Any, sweep_dir: str, task_name: str) -> str:
    """The wandb group of a run: `<task>_<sweep directory name>` for the jobs of a multirun or Optuna
    sweep (so a dashboard shows one sweep at a time), the task name for a single run."""
    return f"{task_name}_{Path(sweep_dir).name}" if str(mode).endswith("MULTIRUN") else task_name


def input_size_of(convention: DictConfig | None) -> int | None:
    """The input size a `convention` config gives (a published convention's or the pretrained weights' own
    when the config leaves it null): the augmentations' output size. None where the config names no convention:
    `export.py` takes it from the checkpoint (`fas.export.pipeline.training_augmentation`)."""
    if convention is None:
        return None
    return int(hydra.utils.instantiate(convention).input_size)


def register_resolvers() -> None:
    """The resolvers the configs use: `configs/logger/wandb.yaml`'s
    `group: ${sweep_group:${hydra:mode},${hydra:sweep.dir},${task_name}}` and `configs/augmentation/`'s
    `${input_size:${oc.select:convention,null}}` (None in export.py, which names no convention)."""
    OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
    OmegaConf.register_new_resolver("input_size", input_size_of, replace=True)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group such as `callbacks` or `logger`."""
    if not group:
        return []
    return [
        hydra.utils.instantiate(entry)
        for entry in group.values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


def close_loggers(loggers: Sequence[Logger]) -> None:
    """End each wandb run with its job: the jobs of a multirun share one process, and a run left open
    would swallow the next job's logs."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def named_convention(cfg: DictConfig) -> str | None:
    """The published convention `convention=<name>` names in evaluate / export (for model files that record
    none), or None when the group is not chosen."""
    convention = cfg.get("convention")
    if convention is None:
        return None
    name = convention.get("name") if isinstance(convention, DictConfig) else convention
    if not isinstance(name, str):
        raise ConfigError(
            "convention= here names the published convention of model files that record none: "
            "convention=silentface_2.7, silentface_4.0, suri_liveness or hairymax"
        )
    return name


def check_config(cfg: DictConfig) -> None:
    """Fail early, in one line, on values the user must set or that cannot work (before any library sees them)."""
    data = cfg.get("data")
    if data is not None:
        check_data(data)
    convention = cfg.get("convention")
    if isinstance(convention, DictConfig):
        check_input_size(convention.get("input_size"))
    trainer = cfg.get("trainer")
    if trainer is not None:
        check_trainer(trainer)
    model = cfg.get("model")
    if model is not None:
        check_model(model)
    finetune = cfg.get("finetune")
    if finetune is not None and finetune.get("interpolation") is not None:
        weights = finetune.interpolation
        for weight in weights if isinstance(weights, ListConfig) else [weights]:
            check_fraction("finetune.interpolation", weight)
    threshold = cfg.get("threshold")
    if threshold is not None and threshold.get("rule") not in (None, *THRESHOLD_RULES):
        raise ConfigError(f"threshold.rule={threshold.rule!r}: choose one of {', '.join(THRESHOLD_RULES)}")
    if threshold is not None and threshold.get("value") is not None:
        check_fraction("threshold.value", threshold.value)
    if threshold is not None and threshold.get("target_apcer") is not None:
        check_fraction("threshold.target_apcer", threshold.target_apcer)


def check_data(data: DictConfig) -> None:
    if OmegaConf.is_missing(data, "root"):
        raise ConfigError(
            "data.root is not set: pass data.root=/path/to/CelebA_Spoof (the folder holding Data/ and metas/), "
            "your own folder with data=folder, or use data=synthetic"
        )
    if OmegaConf.is_missing(data, "manifest"):
        raise ConfigError("data.manifest is not set: pass data.manifest=/path/to/list.csv (or .jsonl)")
    for name, source in (data.get("sources") or {}).items():
        for key in ("root", "manifest"):
            if key in source and OmegaConf.is_missing(source, key):
                raise ConfigError(f"data.sources.{name}.{key} is not set: pass data.sources.{name}.{key}=<path>")
    for key in ("batch_size", "eval_batch_size"):
        check_positive_integer(f"data.{key}", data.get(key))


def check_input_size(size: Any) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < MIN_INPUT_SIZE):
        raise ConfigError(
            f"convention.input_size={size!r}: give the model's input side in pixels, an integer of at least "
            f"{MIN_INPUT_SIZE} (e.g. convention.input_size=80 or convention.input_size=128)"
        )


def check_trainer(trainer: DictConfig) -> None:
    epochs = trainer.get("max_epochs")
    if epochs is not None:
        check_positive_integer("trainer.max_epochs", epochs)


def check_model(model: DictConfig) -> None:
    ft_weight = model.get("ft_weight")
    if ft_weight is not None and not (isinstance(ft_weight, int | float) and 0 <= ft_weight < 1):
        raise ConfigError(
            f"model.ft_weight={ft_weight!r}: the loss is (1 - w) * CE + w * FT, so w must be in [0, 1) "
            "(0 drops the Fourier head; 0.5 is the default)"
        )
    lr = (model.get("optimizer") or {}).get("lr")
    if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"model.optimizer.lr={lr!r}: the learning rate must be a positive number, e.g. 0.01")


def check_positive_integer(key: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{key}={value!r}: give a positive whole number")


def check_fraction(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{key}={value!r}: give a number between 0 and 1")
