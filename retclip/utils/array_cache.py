"""A per-user on-disk cache of NumPy arrays (text embeddings), safe to read and to share.

The place is ``$RETCLIP_CACHE`` or, by default, ``$XDG_CACHE_HOME/retclip`` (``~/.cache/retclip``):
never the repository or the current directory. Entries are ``.npy`` files written atomically and
read with ``allow_pickle=False``, so a crafted file cannot run code; an unreadable entry is
reported with a warning and treated as a miss (the caller recomputes and overwrites it).
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from .fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["cache_root", "load_array", "save_array"]


def cache_root() -> Path:
    """``$RETCLIP_CACHE``, else ``$XDG_CACHE_HOME/retclip``, else ``~/.cache/retclip``."""
    explicit = os.environ.get("RETCLIP_CACHE", "")
    if explicit:
        return Path(os.path.expanduser(explicit))
    xdg = os.environ.get("XDG_CACHE_HOME", "") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "retclip"


def load_array(path: Path) -> Optional[np.ndarray]:
    """The array stored at ``path``; None if absent, or (with a warning) unreadable."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        logger.warning("cache entry %s is unreadable (%s); recomputing it", path, e)
        return None
    return array


def save_array(path: Path, array: np.ndarray) -> bool:
    """Store ``array`` at ``path`` atomically; False (and a warning) if it cannot be written."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as e:
        logger.warning("could not write cache entry %s (%s); set RETCLIP_CACHE", path, e)
        return False
    return True
