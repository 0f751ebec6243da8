"""The compact label array: every row's class index in one memory-mapped int32 file.

Searching needs, per neighbour id, only its class. Reading that from the shards means reading
every feature (the shards are safetensors files of features, labels and metadata), which at tens
of millions of rows is tens of GB. So a database keeps ``labels.int32.npy`` (row i = index id i,
NumPy format, opened with ``mmap_mode="r"``) and ``labels.json`` recording the database content
hash it was written for. With a cached index, opening a database reads these two files and the
index, never a shard.

The array is written when a build finishes (:func:`write_label_array`, called from the builder and
from the part joiner). A database written before the array existed, or edited since (its content
hash changed), gets it on first open: :func:`open_label_array` rebuilds it, reading only the
``labels`` tensor of each shard (safetensors ``safe_open`` reads the header and that tensor's
bytes, not the features), and says so in the log.

Plain NumPy/safetensors: no detectron2 import.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, List

import numpy as np
from safetensors import safe_open

from retclip.utils.fileio import atomic_path, atomic_write_json

if TYPE_CHECKING:  # pragma: no cover
    from .database import FeatureDatabase

logger = logging.getLogger(__name__)

__all__ = [
    "LABELS_FILE",
    "LABELS_META",
    "open_label_array",
    "read_image_ids",
    "read_shard_tensor",
    "write_label_array",
]

LABELS_FILE = "labels.int32.npy"
LABELS_META = "labels.json"


def _shard_path(db: "FeatureDatabase", name: str) -> Path:
    return db.path / "shards" / f"{name}.safetensors"


def read_shard_tensor(db: "FeatureDatabase", name: str, key: str) -> np.ndarray:
    """One tensor of one shard, read without the others (safetensors ``safe_open``)."""
    path = _shard_path(db, name)
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} listed in the manifest is missing")
    with safe_open(str(path), framework="numpy") as f:
        return f.get_tensor(key)


def write_label_array(db: "FeatureDatabase") -> Path:
    """Write ``labels.int32.npy`` + ``labels.json`` for the database's current shards.

    Memory: one shard's labels at a time (the array is filled through a memory map).
    """
    rows = len(db)
    path = db.path / LABELS_FILE
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(rows,))
        start = 0
        for entry in db.manifest["shards"]:
            labels = read_shard_tensor(db, entry["name"], "labels")
            if labels.shape[0] != int(entry["rows"]):
                raise ValueError(
                    f"shard {_shard_path(db, entry['name'])} has {labels.shape[0]} labels, the "
                    f"manifest says {entry['rows']}"
                )
            out[start : start + labels.shape[0]] = labels
            start += labels.shape[0]
        out.flush()
        del out
    atomic_write_json(db.path / LABELS_META, {"content_hash": db.content_hash(), "rows": rows})
    logger.info("%s: wrote the label array of %d rows", db.path, rows)
    return path


def _array_problem(db: "FeatureDatabase") -> str:
    path, meta_path = db.path / LABELS_FILE, db.path / LABELS_META
    if not path.is_file() or not meta_path.is_file():
        return f"{path.name} missing (database written before it existed?)"
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return f"unreadable {meta_path}"
    if meta.get("content_hash") != db.content_hash():
        return "stale: the database changed since it was written"
    return ""


def open_label_array(db: "FeatureDatabase") -> np.ndarray:
    """The (N,) int32 labels of all rows, memory-mapped read-only; row i = index id i.

    A missing or stale array is rewritten first (reading only the shards' label tensors); when
    the database directory is not writable the labels are read into memory instead.
    """
    problem = _array_problem(db)
    if problem:
        logger.info("%s: building the label array (%s)", db.path, problem)
        try:
            write_label_array(db)
        except PermissionError as e:
            logger.warning(
                "%s: cannot write the label array (%s); reading labels into memory", db.path, e
            )
            parts = [read_shard_tensor(db, n, "labels") for n in db.shard_names]
            return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
    labels = np.load(db.path / LABELS_FILE, mmap_mode="r")
    if labels.dtype != np.int32 or labels.shape != (len(db),):
        raise ValueError(
            f"{db.path / LABELS_FILE} holds {labels.dtype} {labels.shape}, expected int32 "
            f"({len(db)},); delete it and {LABELS_META} to have it rebuilt"
        )
    return labels


def read_image_ids(db: "FeatureDatabase") -> List[str]:
    """The source image id of every row (for showing neighbours), without reading features."""
    out: List[str] = []
    for name in db.shard_names:
        path = _shard_path(db, name)
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} listed in the manifest is missing")
        with safe_open(str(path), framework="numpy") as f:
            unique = json.loads((f.metadata() or {}).get("image_ids", "[]"))
            index = f.get_tensor("image_index")
        out.extend(unique[i] for i in index.tolist())
    return out
