"""Errors a user can fix (exit 2) and internal failures (exit 1)."""

from __future__ import annotations


class OnnxfuseError(Exception):
    """A mistake in the user's input: the message names the file, model, input or column."""


class VerificationError(Exception):
    """The fused graph does not reproduce its sources: an internal failure, never written."""


def reason(exc: BaseException, limit: int = 300) -> str:
    """A library's exception as one line for an `error:` message: whitespace folded, cut at `limit`."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__
