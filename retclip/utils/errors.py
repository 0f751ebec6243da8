"""Errors for files whose content cannot be used, shared by the readers of images, caches and
result files. Each is a :class:`~retclip.utils.cli.UserError` (a tool reports it in one line,
exit code 2) and a ``ValueError`` (library callers that skip bad inputs keep catching it)."""
from __future__ import annotations

from .cli import UserError

__all__ = ["BadFileError"]


class BadFileError(UserError, ValueError):
    """A torn, truncated or incomplete file; the message names the file (and line or field)."""
