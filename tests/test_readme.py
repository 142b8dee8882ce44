"""Every command in README.md names something that exists, and every Hydra command line composes."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT, compose_config

README = REPO_ROOT / "README.md"
HYDRA_APPS = {"train.py": "train", "evaluate.py": "evaluate", "export.py": "export"}
HYDRA_MODULES = {"fas.predict": "predict", "fas.data.prepare": "prepare"}


def readme_commands() -> list[str]:
    """The `python ...` commands of the README's bash blocks (continuations joined, `a && b` split)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            commands += [part.strip() for part in line.split("&&") if part.strip().startswith("python ")]
    return commands


def hydra_app(argv: list[str]) -> tuple[str | None, list[str]]:
    """The config name a command line composes and its arguments; None for other commands."""
    if argv[1] == "-m" and argv[2] in HYDRA_MODULES:
        return HYDRA_MODULES[argv[2]], argv[3:]
    if argv[1] in HYDRA_APPS:
        return HYDRA_APPS[argv[1]], argv[2:]
    return None, []


def first_of_each_sweep(arguments: list[str]) -> list[str]:
    """A multirun's overrides with each swept value list (`a=x,y`) cut to its first value."""
    overrides = []
    for argument in arguments:
        if argument in ("-m", "--multirun"):
            continue
        key, _, value = argument.partition("=")
        if "," in value and not value.startswith(("[", "{")):
            value = value.split(",")[0]
        overrides.append(f"{key}={value}")
    return overrides


COMMANDS = readme_commands()


def test_the_readme_has_the_two_commands_of_a_fresh_machine() -> None:
    assert any(c.endswith("pip install torch==2.13.0") for c in COMMANDS) or "pip install torch==2.13.0" in (
        README.read_text()
    )
    assert "python train.py" in COMMANDS and "python -m pytest" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_exists_and_composes(command: str, tmp_path: Path) -> None:
    argv = shlex.split(re.sub(r"<([\w ]+)>", r"\1", command), comments=True)  # <run> -> run
    config_name, arguments = hydra_app(argv)
    if config_name is None:
        target = argv[2] if argv[1] == "-m" else argv[1]
        if argv[1] == "-m":
            assert importlib.util.find_spec(target) is not None, f"{command}: no module {target}"
        else:
            assert (REPO_ROOT / target).is_file(), f"{command}: no file {target}"
        return
    cfg = compose_config(config_name, first_of_each_sweep(arguments), tmp_path)
    OmegaConf.resolve(cfg)
