"""Settings that cannot work, or that moved, are refused before any work, in one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fas.errors import ConfigError
from fas.hydra_utils import RENAMED_KEYS, check_config, named_convention

from conftest import REPO_ROOT, TINY_RUN, compose_config, compose_train


def one_error_line(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [
        [str(REPO_ROOT / "train.py"), "data.input_size=128"],
        [str(REPO_ROOT / "train.py"), "-m", "data.crop_interpolation=area,null"],
        ["-m", "fas.data.prepare", "crop.size=128", "root=x", "output=y"],
    ],
)
def test_a_key_that_moved_is_refused_naming_its_new_name(command: list[str], tmp_path: Path) -> None:
    line = one_error_line([sys.executable, *command], tmp_path)
    old = next(argument.split("=")[0] for argument in command if "=" in argument)
    assert line.startswith(f"error: {old} moved to {RENAMED_KEYS[old]} (the input convention is its own config group)")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1: give a positive whole number"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: give a positive whole number"),
        ("data.batch_size=0", "data.batch_size=0: give a positive whole number"),
        ("model.ft_weight=2", r"model.ft_weight=2: the loss is \(1 - w\) \* CE \+ w \* FT, so w must be in \[0, 1\)"),
        ("model.ft_weight=1", r"model.ft_weight=1: .* w must be in \[0, 1\)"),
        ("model.optimizer.lr=-0.1", "model.optimizer.lr=-0.1: the learning rate must be a positive number"),
        ("convention.input_size=8", "convention.input_size=8: give the model's input side in pixels"),
    ],
)
def test_training_settings_that_cannot_work_are_refused_before_any_work(
    override: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(compose_train([*TINY_RUN, "data.root=unused", override], tmp_path))


@pytest.mark.parametrize("override", ["threshold.value=1.5", "threshold.target_apcer=-0.1"])
def test_evaluation_thresholds_outside_0_1_are_refused(override: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"threshold\.\w+=.*: give a number between 0 and 1"):
        check_config(compose_config("evaluate", ["ckpt_path=unused", override], tmp_path))


def test_a_cli_setting_that_cannot_work_is_one_line_without_hydras_wrapper(tmp_path: Path) -> None:
    line = one_error_line([sys.executable, str(REPO_ROOT / "train.py"), "model.ft_weight=2"], tmp_path)
    assert line.startswith("error: model.ft_weight=2: the loss is (1 - w) * CE + w * FT")


def test_convention_names_files_that_record_none(tmp_path: Path) -> None:
    cfg = compose_config("evaluate", ["ckpt_path=unused", "convention=suri_liveness"], tmp_path)
    assert named_convention(cfg) == "suri_liveness"
    assert named_convention(compose_config("evaluate", ["ckpt_path=unused"], tmp_path)) is None
    with pytest.raises(ConfigError, match="names the published convention of model files that record none"):
        named_convention(compose_config("evaluate", ["ckpt_path=unused", "convention=default"], tmp_path))
