"""Helpers for the thin entry scripts."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fas.errors import FasError

# How torch's DataLoader re-raises an error of a worker process: the worker's traceback as text.
WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.DOTALL)


def find_user_error(error: BaseException | None) -> FasError | None:
    """The FasError behind `error`, also when Hydra's instantiate wrapped it or a loader worker raised it."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, FasError) and not WORKER_ERROR.match(str(error)):
            return error
        worker_error = from_loader_worker(error)
        if worker_error is not None:
            return worker_error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def from_loader_worker(error: BaseException) -> FasError | None:
    """A FasError a DataLoader worker raised, rebuilt from the traceback text the main process receives.

    Its last line reads `<module>.<class>: <message>`; the message is what the user would have seen
    without workers.
    """
    text = str(error)
    if not WORKER_ERROR.match(text):
        return None
    qualified, _, message = text.rstrip().splitlines()[-1].partition(": ")
    module_name, _, class_name = qualified.rpartition(".")
    if not module_name.startswith("fas."):
        return None
    error_type = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(error_type, type) and issubclass(error_type, FasError)):
        return None
    return FasError(message)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print a user error (problem and fix) as one line and exit with status 2, without a traceback."""
    try:
        yield
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
