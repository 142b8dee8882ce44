"""The package's layers point down: a module imports only modules of its own layer or of a lower one.

The order is written once, here (docs/architecture.md explains it). Every `import` in `fas/`, at module
level or inside a function, is checked, so a shortcut that reaches upward fails this test.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

# Lowest first. A prefix names a package and everything in it; the longest matching prefix decides.
LAYERS = [
    ["fas.errors"],
    ["fas.cli", "fas.hardware", "fas.formats", "fas.progress"],
    ["fas.convention", "fas.media", "fas.registry", "fas.download"],
    ["fas.models"],
    ["fas.data.crop", "fas.data.sample", "fas.losses", "fas.metrics", "fas.detect"],
    ["fas.data"],
    ["fas.inference"],
    [
        "fas.module",
        "fas.plots",
        "fas.report",
        "fas.loggers",
        "fas.sweep",
        "fas.hydra_utils",
        "fas.finetune",
        "fas.averaging",
    ],
    ["fas.export"],
    ["fas.train", "fas.evaluate", "fas.predict", "fas.data.prepare.__main__"],  # the apps
]
PACKAGE = REPO_ROOT / "fas"


def layer_of(module: str) -> int:
    """The layer of a module: the one of the longest prefix that names it or a package above it."""
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py")
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_fas_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `fas` import in a file, absolute or relative, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "fas"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fas":
            found.append((node.lineno, node.module))
    return found


def test_every_module_is_in_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path != PACKAGE / "__init__.py":
            layer_of(module_name(path))


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        own = module_name(path)
        for line, imported in imported_fas_modules(path):
            if layer_of(imported) > layer_of(own):
                upward.append(f"{path.relative_to(REPO_ROOT)}:{line} ({own}) imports {imported}")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_order_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself: a data module importing the training app is found."""
    assert layer_of("fas.data.sources.folder") < layer_of("fas.train")
    assert layer_of("fas.data.crop") < layer_of("fas.data.datamodule")
    source = tmp_path / "example.py"
    source.write_text("def f():\n    from fas.train import train\n")
    assert imported_fas_modules(source) == [(2, "fas.train")]


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("fas.metrics", "fas.data.synthetic"),
        ("fas.metrics", "fas.data.sources"),
        ("fas.inference.backends", "fas.export"),
        ("fas.data.datamodule", "hydra.main"),
        ("fas.evaluate", "fas.train"),
    ],
)
def test_importing_a_module_does_not_load_a_higher_one(module: str, absent: str) -> None:
    """What a module pulls in at import time (a fresh interpreter, so nothing else is loaded)."""
    probe = f"import {module}, sys; print(any(m == '{absent}' or m.startswith('{absent}.') for m in sys.modules))"
    if absent == "hydra.main":  # the prepare CLI: its Hydra app lives in fas/data/prepare/__main__.py
        probe = f"import {module}, sys; print('fas.data.prepare.__main__' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", f"importing {module} loads {absent}"


def test_no_file_names_a_document_the_repository_lacks() -> None:
    """Code and docs point at documents in the repository (README, docs/), never at files outside it."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    missing = []
    for name in tracked.stdout.splitlines():
        path = REPO_ROOT / name
        if path.suffix not in (".py", ".md", ".yaml", ".toml", ".ipynb") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for document in re.findall(r"\b(DESIGN\.md|docs/[\w./-]+\.md)", text):
            if not (REPO_ROOT / document).is_file():
                missing.append(f"{name} names {document}")
    assert not missing, "\n".join(missing)
