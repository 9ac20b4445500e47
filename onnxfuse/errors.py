"""Errors a user can fix (exit 2), internal failures (exit 1), and warnings about legal but suspicious input."""

from __future__ import annotations

import warnings


class OnnxfuseError(Exception):
    """A mistake in the user's input: the message names the file, model, input or column."""


class VerificationError(Exception):
    """The fused graph does not reproduce its sources: an internal failure, never written."""


class OnnxfuseWarning(UserWarning):
    """Legal but suspicious input: the CLI prints one `warning: ...` line; Python users get a warning."""


def warn(message: str) -> None:
    """Say one suspicious thing about the input, naming what and why (one line on the console)."""
    warnings.warn(" ".join(message.split()), OnnxfuseWarning, stacklevel=2)


def reason(exc: BaseException, limit: int = 300) -> str:
    """A library's exception as one line for an `error:` message: whitespace folded, cut at `limit`."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__
