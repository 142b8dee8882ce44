"""The notebooks under `notebooks/`: each runs top to bottom within its time budget, and is committed stripped.

`python tests/test_notebooks.py` strips the outputs, execution counts and run metadata of every notebook.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

from conftest import REFERENCE, REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
# Seconds each notebook may take in all (about 1 minute each on 2 CPU cores), and whether it reads ../shared.
NOTEBOOKS = {"quickstart.ipynb": (300, False), "pretrained.ipynb": (300, True)}
KERNEL_NAME = "fas-notebook-test"
CELL_RUN_METADATA = ("execution", "collapsed", "scrolled")
TERMINAL_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def notebook_files() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def strip(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without outputs, execution counts and per-run cell metadata (in place)."""
    for cell in notebook.cells:
        for key in CELL_RUN_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    notebook.metadata.pop("widgets", None)
    return notebook


def test_every_notebook_is_tested() -> None:
    assert sorted(p.name for p in notebook_files()) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("path", notebook_files(), ids=lambda p: p.name)
def test_notebooks_are_committed_stripped(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.get("outputs") or cell.get("execution_count") is not None or set(cell.metadata) & set(CELL_RUN_METADATA)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} hold outputs or run metadata; strip them: python tests/{Path(__file__).name}"
    )


@pytest.fixture(scope="module")
def kernel_spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data folder holding a kernel spec that runs this very interpreter (the one with `fas`)."""
    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "fas tests", "language": "python"}))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs(name: str, kernel_spec_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    budget, needs_reference = NOTEBOOKS[name]
    if needs_reference and not REFERENCE.is_dir():
        pytest.skip(f"{name} needs the reference folder {REFERENCE} (CI has it beside the repo as ../shared)")
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_spec_dir))
    monkeypatch.setenv("FAS_NOTEBOOK_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("FAS_SHARED_DIR", str(REFERENCE.parent))
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    deadline = time.monotonic() + budget
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
    )
    start, failure = time.monotonic(), None
    try:
        client.execute()
    except CellTimeoutError:
        failure = f"{name} ran past its budget of {budget} s"
    except CellExecutionError as error:  # its text: the failing cell's source, outputs and traceback
        failure = f"{name} failed:\n{TERMINAL_COLOURS.sub('', str(error))}"
    if failure:
        pytest.fail(failure, pytrace=False)
    print(f"{name}: {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    for path in notebook_files():
        nbformat.write(strip(nbformat.read(path, as_version=4)), path)
        print(f"stripped {path.relative_to(REPO_ROOT)}")
