"""What long work says while it runs: stage lines and row counts, to whatever reporter the caller installed.

Rules: the pipeline installs the caller's reporter for one merge (`reporting`); stages
call `stage(text)` and `rows(count, total)`; without a reporter (tests, the Python
API by default) nothing is said. The command line's reporter writes to stderr on a
TTY only, and `--quiet` installs none.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol


class Reporter(Protocol):
    def stage(self, text: str) -> None:
        """A stage begins (e.g. `scoring 3 sources on 40,000 rows`)."""

    def rows(self, count: int, total: int) -> None:
        """`count` more of the stage's `total` rows are through."""


_current: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("onnxfuse_progress", default=None)


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    token = _current.set(reporter)
    try:
        yield
    finally:
        _current.reset(token)


def stage(text: str) -> None:
    reporter = _current.get()
    if reporter is not None:
        reporter.stage(text)


def rows(count: int, total: int) -> None:
    reporter = _current.get()
    if reporter is not None:
        reporter.rows(count, total)
