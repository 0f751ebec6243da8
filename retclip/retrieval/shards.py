"""One shard of a feature database: its rows, its safetensors encoding, atomic file writes.

A shard holds features (N, D), labels (N,) int64, image_index (N,) int64 into the list of the
shard's image ids (JSON in the safetensors header metadata, since safetensors stores only
numeric tensors), boxes (N, 4), mask_areas (N,) and scores (N,) float32. safetensors cannot
execute code on load, unlike pickle.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

try:  # Re-exported: database writers import them from here; one umask-respecting implementation.
    from ..utils.fileio import atomic_path, atomic_write_bytes, atomic_write_json
except ImportError:  # retrieval/ loaded stand-alone (test_retrieval_imports): fileio by its path
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "_retclip_fileio", Path(__file__).resolve().parents[1] / "utils" / "fileio.py"
    )
    _fileio = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_fileio)
    atomic_path = _fileio.atomic_path
    atomic_write_bytes = _fileio.atomic_write_bytes
    atomic_write_json = _fileio.atomic_write_json

__all__ = [
    "CorruptShardError",
    "atomic_path",
    "ShardData",
    "atomic_write_bytes",
    "atomic_write_json",
    "bad_rows_message",
    "concat_shards",
    "decode_shard",
    "encode_shard",
    "non_finite_rows",
]

_TENSORS = ("features", "labels", "image_index", "boxes", "mask_areas", "scores")


class CorruptShardError(ValueError):
    """A shard file is truncated, altered or unreadable."""


@dataclass
class ShardData:
    """Rows of one shard (or of a whole database when concatenated).

    Attributes:
        features: (N, D) float16/float32, rows L2-normalised.
        labels: (N,) int64 database class indices.
        image_ids: N image ids (str), one per row.
        boxes: (N, 4) float32, NaN when not recorded.
        mask_areas: (N,) float32, NaN when not recorded.
        scores: (N,) float32 detector scores, NaN when not recorded.
    """

    features: np.ndarray
    labels: np.ndarray
    image_ids: List[str]
    boxes: np.ndarray
    mask_areas: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def non_finite_rows(features: np.ndarray) -> np.ndarray:
    """Indices of (N, D) rows holding a NaN or an infinity: one rule for writing and loading."""
    if features.ndim != 2:
        return np.zeros(0, np.int64)
    return np.flatnonzero(~np.isfinite(features).all(axis=1))


def bad_rows_message(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:10])
    more = f" (and {len(rows) - 10} more)" if len(rows) > 10 else ""
    return f"rows [{shown}]{more}"


def encode_shard(
    features: np.ndarray,
    labels: np.ndarray,
    image_ids: Sequence[str],
    boxes: np.ndarray,
    mask_areas: np.ndarray,
    scores: np.ndarray,
) -> bytes:
    """safetensors bytes of one shard (arrays already validated and of matching length)."""
    unique_ids = sorted(set(image_ids))
    position = {img: j for j, img in enumerate(unique_ids)}
    tensors = {
        "features": np.ascontiguousarray(features),
        "labels": np.ascontiguousarray(labels, dtype=np.int64),
        "image_index": np.asarray([position[i] for i in image_ids], dtype=np.int64).reshape(-1),
        "boxes": np.ascontiguousarray(boxes, dtype=np.float32),
        "mask_areas": np.ascontiguousarray(mask_areas, dtype=np.float32),
        "scores": np.ascontiguousarray(scores, dtype=np.float32),
    }
    return st_save(tensors, metadata={"image_ids": json.dumps(unique_ids)})


def decode_shard(where: Path, data: bytes) -> ShardData:
    """Parse shard bytes read from ``where``; CorruptShardError names the file on any damage."""
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        unique_ids = json.loads(meta["image_ids"])
        missing = set(_TENSORS) - set(tensors)
        if missing:
            raise KeyError(f"missing tensors {sorted(missing)}")
        ids = [unique_ids[i] for i in tensors["image_index"].tolist()]
    except (SafetensorError, KeyError, IndexError, ValueError) as e:
        raise CorruptShardError(f"shard {where} is truncated or corrupt: {e}") from e
    bad = non_finite_rows(tensors["features"])
    if bad.size:
        raise CorruptShardError(
            f"shard {where} has NaN or infinite features at {bad_rows_message(bad)}; delete the "
            "shard and rerun the build (it rebuilds missing chunks)"
        )
    return ShardData(
        features=tensors["features"],
        labels=tensors["labels"],
        image_ids=ids,
        boxes=tensors["boxes"],
        mask_areas=tensors["mask_areas"],
        scores=tensors["scores"],
    )


def concat_shards(parts: List[ShardData], dim: int, dtype: Any) -> ShardData:
    """Rows of several shards in order; an empty (0, dim) ShardData when there are none."""
    if not parts:
        return ShardData(
            np.zeros((0, dim), dtype), np.zeros(0, np.int64), [], np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32), np.zeros(0, np.float32),
        )
    return ShardData(
        features=np.concatenate([p.features for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        image_ids=[i for p in parts for i in p.image_ids],
        boxes=np.concatenate([p.boxes for p in parts]),
        mask_areas=np.concatenate([p.mask_areas for p in parts]),
        scores=np.concatenate([p.scores for p in parts]),
    )
