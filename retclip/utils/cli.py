"""How every tool in ``tools/`` reports a user's mistake: one line, exit code 2.

A tool raises :class:`UserError` (or lets a missing/unreadable file surface as ``OSError``) with a
message that names the file, config key or class at fault; :func:`run_tool` prints it as
``<tool>: error: <message>`` on stderr and returns 2. ``--debug`` anywhere on the command line
shows the full traceback instead. Programming errors (anything else) keep their traceback: they
are bugs to report, not mistakes to fix. This module imports nothing heavy, so ``--help`` stays
fast.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional, Sequence

__all__ = ["UserError", "run_tool", "EXIT_USER_ERROR", "pop_debug_flag", "int_at_least", "describe_error"]

#: Exit status of a tool stopped by a user mistake (argparse uses 2 for bad arguments too).
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's input: a file, key, value or class, named in the message."""


def pop_debug_flag(argv: Sequence[str]) -> "tuple[List[str], bool]":
    """Remove ``--debug`` from ``argv`` (before the config's KEY VALUE list) and say if it was there."""
    args = list(argv)
    debug = "--debug" in args
    return [a for a in args if a != "--debug"], debug


def describe_error(exc: BaseException) -> str:
    """The one-line message a tool prints for a user mistake (an OSError as "reason: file")."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or exc.__class__.__name__


def run_tool(main: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` and turn user mistakes into one line on stderr and exit code 2.

    Args:
        main: the tool's main; takes the argument list (``--debug`` removed) and returns an exit
            code or None (0).
        argv: arguments; default ``sys.argv[1:]``.
    Returns:
        The exit code to pass to ``sys.exit``.
    """
    args, debug = pop_debug_flag(sys.argv[1:] if argv is None else argv)
    if debug:
        os.environ["RETCLIP_DEBUG"] = "1"
    prog = os.path.basename(sys.argv[0]) or "retclip"
    try:
        code = main(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UserError, OSError) as exc:
        if debug:
            raise
        print(f"{prog}: error: {describe_error(exc)}", file=sys.stderr)
        print(f"{prog}: (run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(code or 0)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integer options with a lower bound (``--top-neighbours -1`` is an
    error naming the option, not a silently dropped neighbour)."""
    import argparse

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in "invalid ... value"
    return parse
