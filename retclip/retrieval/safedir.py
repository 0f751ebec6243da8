"""Directory-level safety for feature databases: one writer at a time, and whole-folder publishing.

:class:`DatabaseLock` keeps a ``LOCK`` file in the database folder while a builder, ``add``,
``merge``, ``remove`` or ``repair`` writes there. It names the holder (host, pid, start time,
command). Exclusion uses ``fcntl.flock`` on that file, which the kernel drops when the holder
dies, plus the recorded pid:

- held by a live process on this host: refused, naming host and pid;
- left by a dead process on this host (pid gone): taken over, with a warning in the log;
- written on another host: its pid cannot be checked from here, so it is refused; the message
  says to delete the ``LOCK`` file once no build runs on that host.

:func:`staged_directory` builds a new database in a hidden sibling folder and renames it into
place only when complete; on any error the staging folder is removed, so a failed ``merge`` or
``remove`` leaves nothing behind. :func:`exchange_directories` swaps a finished folder with an
existing one in one ``renameat2(RENAME_EXCHANGE)`` call where the kernel has it (Linux >= 3.15).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

logger = logging.getLogger(__name__)

__all__ = ["DatabaseLock", "DatabaseLockedError", "LOCK_NAME", "staged_directory",
           "exchange_directories"]

LOCK_NAME = "LOCK"

PathLike = Union[str, "os.PathLike[str]"]

#: Locks this process holds, by lock file path: nested claims (a tool, then its builder) nest.
_HELD: Dict[str, "DatabaseLock"] = {}


class DatabaseLockedError(RuntimeError):
    """Another writer holds the database folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(lock_file: Path) -> Optional[Dict[str, Any]]:
    """The holder recorded in a lock file; None when there is no (readable) record."""
    try:
        text = lock_file.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def holder_problem(folder: PathLike) -> Optional[str]:
    """Why ``folder`` cannot be claimed now (live or foreign holder), else None. Writes nothing:
    tools call it before starting workers, so a refusal costs no model loading."""
    lock_file = Path(folder).expanduser() / LOCK_NAME
    holder = read_holder(lock_file)
    if holder is None or str(lock_file) in _HELD:
        return None
    return _refusal(lock_file, holder)


def _refusal(lock_file: Path, holder: Dict[str, Any]) -> Optional[str]:
    host, pid = holder.get("host", "?"), holder.get("pid", "?")
    who = f"host {host} pid {pid} (since {holder.get('started', '?')}: {holder.get('command', '')})"
    if host != socket.gethostname():
        return (
            f"{lock_file.parent} is locked by {who}; its pid cannot be checked from host "
            f"{socket.gethostname()}. If no build runs there any more, delete {lock_file}"
        )
    if isinstance(pid, int) and _pid_alive(pid) and pid != os.getpid():
        return f"{lock_file.parent} is being written by {who}; wait for it or stop it"
    return None


class DatabaseLock:
    """Exclusive claim of a database folder (see the module docstring); a context manager."""

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder).expanduser()
        self.lock_file = self.folder / LOCK_NAME
        self._fd: Optional[int] = None
        self._depth = 0

    def _open_locked(self) -> int:
        """An fd of the current lock file with our flock on it (retries if it was replaced)."""
        for _ in range(10):
            fd = os.open(str(self.lock_file), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = read_holder(self.lock_file) or {}
                raise DatabaseLockedError(
                    _refusal(self.lock_file, holder)
                    or f"{self.folder} is being written by host {holder.get('host', '?')} pid "
                    f"{holder.get('pid', '?')}; wait for it or stop it"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # the holder released (unlinked) it meanwhile: take the new file
        raise DatabaseLockedError(f"{self.lock_file} keeps changing; is another writer starting?")

    def acquire(self) -> "DatabaseLock":
        """Take the lock or raise DatabaseLockedError naming the holder."""
        key = str(self.lock_file)
        if key in _HELD:
            _HELD[key]._depth += 1
            return _HELD[key]
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = self._open_locked()
        try:
            holder = read_holder(self.lock_file)
            if holder is not None:
                problem = _refusal(self.lock_file, holder)
                if problem is not None:
                    raise DatabaseLockedError(problem)
                logger.warning(
                    "%s: taking over the lock left by pid %s on %s (that process is gone)",
                    self.folder, holder.get("pid"), holder.get("host"),
                )
            record = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "command": " ".join(sys.argv)[:300],
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._depth = fd, 1
        _HELD[key] = self
        return self

    def release(self) -> None:
        """Drop one claim; the last one removes the LOCK file (if it is still ours) and unlocks."""
        key = str(self.lock_file)
        owner = _HELD.get(key)
        if owner is None:
            return
        owner._depth -= 1
        if owner._depth > 0:
            return
        del _HELD[key]
        fd, owner._fd = owner._fd, None
        try:
            if os.stat(self.lock_file).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.lock_file)
        except FileNotFoundError:
            pass  # the folder was swapped away (add) or removed
        finally:
            os.close(fd)

    def __enter__(self) -> "DatabaseLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def staged_directory(path: PathLike) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``path``; rename it to ``path`` on success, remove it on
    error. ``path`` must not exist (an empty folder is allowed), so nothing is overwritten."""
    path = Path(path).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(errno.EEXIST, "output exists; choose a new folder", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.staging-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _renameat2_exchange(a: Path, b: Path) -> bool:
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def exchange_directories(new: PathLike, old: PathLike) -> None:
    """Put folder ``new`` at ``old``'s place and ``old``'s content at ``new`` (to delete).

    One atomic call where the kernel supports it; else two renames, logged, with a short window
    in which ``old`` does not exist.
    """
    new, old = Path(new), Path(old)
    if _renameat2_exchange(new, old):
        return
    logger.warning("no atomic folder exchange here; replacing %s with two renames", old)
    aside = old.with_name(f".{old.name}.old-{os.getpid()}")
    os.rename(old, aside)
    os.rename(new, old)
    os.rename(aside, new)
