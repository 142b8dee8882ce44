"""Progress of long steps for logs, not only terminals: a tqdm bar draws only on a terminal, so a run whose
output goes to a file (a cluster job, `nohup`, CI) would be silent for as long as the step lasts."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class ProgressLog:
    """Logs `<what>: <done> of <total> <unit> (<rate>/s)` at most every `every` seconds, and once at the end,
    when stderr is not a terminal (where the tqdm bar beside it already shows the progress)."""

    def __init__(self, what: str, total: int | None, unit: str, every: float = 30.0) -> None:
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.enabled = not sys.stderr.isatty()
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            self.report(now)

    def finish(self) -> None:
        if self.enabled and self.done:
            self.report(time.monotonic())

    def report(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        of = f" of {self.total:,}" if self.total else ""
        log.info("%s: %s%s %s (%.1f %s/s)", self.what, f"{self.done:,}", of, self.unit, rate, self.unit)
