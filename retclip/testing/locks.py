"""A database lock held by another live process, for tests of refused concurrent writers."""
from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["lock_held_elsewhere", "dead_pid"]

# Loads safedir.py alone (standard library only), so the holder starts in a blink.
_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("safedir", sys.argv[2])
safedir = importlib.util.module_from_spec(spec)
spec.loader.exec_module(safedir)
lock = safedir.DatabaseLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@contextmanager
def lock_held_elsewhere(folder: Path) -> Iterator[subprocess.Popen]:
    """Yield a child process holding ``folder``'s DatabaseLock; it is killed on exit."""
    from retclip.retrieval import safedir

    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder), safedir.__file__], stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        if line.strip() != "locked":
            raise RuntimeError(f"lock holder did not start: {line!r}")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
