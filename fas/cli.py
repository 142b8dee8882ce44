"""Helpers for the thin entry scripts."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fas.errors import FasError


def find_user_error(error: BaseException | None) -> FasError | None:
    """The FasError behind `error`, also when Hydra's instantiate wrapped it."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, FasError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


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
