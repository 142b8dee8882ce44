"""User errors reach the terminal as one line, also when a DataLoader worker process raised them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import BREAKAGES, REPO_ROOT, TINY_RUN


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_a_loader_worker_error_is_the_same_line_as_without_workers(broken_data, tmp_path: Path) -> None:
    """With the up-front image check off, the first undecodable image fails in a loader worker."""
    root, _ = broken_data
    overrides = [*TINY_RUN, f"data.root={root}", "data.check_images=false", "data.skip_bad_samples=true"]
    lines = {}
    for workers in (0, 2):
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "train.py"), *overrides, f"data.num_workers={workers}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2
        (lines[workers],) = error_lines(result)
    assert lines[0] == lines[2]
    assert lines[0].startswith(f"error: {root}/Data/train/")
    assert any(reason in lines[0] for _, _, _, reason in BREAKAGES), lines[0]
