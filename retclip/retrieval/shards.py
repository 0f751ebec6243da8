"""One shard of a feature database: its rows, its safetensors encoding, atomic file writes.

A shard holds features (N, D), labels (N,) int64, image_index (N,) int64 into the list of the
shard's image ids (JSON in the safetensors header metadata, since safetensors stores only
numeric tensors), boxes (N, 4), mask_areas (N,) and scores (N,) float32. safetensors cannot
execute code on load, unlike pickle.

Optional provenance (what a thumbnail needs; shards written before it simply lack it): the source
image path of each image id ("image_sources_json": uint8, the UTF-8 JSON list aligned with
"image_ids"; a tensor, not a second metadata key, because safetensors writes its metadata map in
no fixed order and shards must be byte-identical however the build ran) and
each row's mask as COCO RLE: "mask_rle_bytes" (uint8, the RLE count strings concatenated),
"mask_rle_offsets" (N+1,) int64 into them and "mask_rle_size" (N, 2) int64 (height, width;
0, 0 for a row without a mask).
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

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
_PROVENANCE_TENSORS = ("mask_rle_bytes", "mask_rle_offsets", "mask_rle_size")


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
        sources: optional N source image paths (None where unknown).
        mask_rles: optional N COCO RLE dicts {"size": [h, w], "counts": str} (None: no mask).
    """

    features: np.ndarray
    labels: np.ndarray
    image_ids: List[str]
    boxes: np.ndarray
    mask_areas: np.ndarray
    scores: np.ndarray
    sources: Optional[List[Optional[str]]] = None
    mask_rles: Optional[List[Optional[Dict[str, Any]]]] = None

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
    sources: Optional[Sequence[Optional[str]]] = None,
    mask_rles: Optional[Sequence[Optional[Dict[str, Any]]]] = None,
) -> bytes:
    """safetensors bytes of one shard (arrays already validated and of matching length);
    ``sources`` / ``mask_rles`` add the optional provenance (see the module doc)."""
    unique_ids = sorted(set(image_ids))
    position = {img: j for j, img in enumerate(unique_ids)}
    metadata = {"image_ids": json.dumps(unique_ids)}
    tensors = {
        "features": np.ascontiguousarray(features),
        "labels": np.ascontiguousarray(labels, dtype=np.int64),
        "image_index": np.asarray([position[i] for i in image_ids], dtype=np.int64).reshape(-1),
        "boxes": np.ascontiguousarray(boxes, dtype=np.float32),
        "mask_areas": np.ascontiguousarray(mask_areas, dtype=np.float32),
        "scores": np.ascontiguousarray(scores, dtype=np.float32),
    }
    if sources is not None:
        by_image = dict(zip(image_ids, sources))
        listed = json.dumps([by_image[i] for i in unique_ids]).encode("utf-8")
        tensors["image_sources_json"] = np.frombuffer(listed, np.uint8).copy()
    if mask_rles is not None:
        tensors.update(_encode_rles(mask_rles))
    return st_save(tensors, metadata=metadata)


def _encode_rles(mask_rles: Sequence[Optional[Dict[str, Any]]]) -> Dict[str, np.ndarray]:
    chunks = [b"" if r is None else _rle_counts(r) for r in mask_rles]
    offsets = np.zeros(len(chunks) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    sizes = np.asarray([(0, 0) if r is None else tuple(r["size"]) for r in mask_rles], np.int64)
    return {
        "mask_rle_bytes": np.frombuffer(b"".join(chunks), np.uint8).copy(),
        "mask_rle_offsets": offsets,
        "mask_rle_size": sizes.reshape(len(chunks), 2),
    }


def _rle_counts(rle: Dict[str, Any]) -> bytes:
    counts = rle["counts"]
    return counts if isinstance(counts, bytes) else str(counts).encode()


def _decode_rles(tensors: Dict[str, np.ndarray]) -> Optional[List[Optional[Dict[str, Any]]]]:
    if not all(k in tensors for k in _PROVENANCE_TENSORS):
        return None
    raw, offsets, sizes = (tensors[k] for k in _PROVENANCE_TENSORS)
    out: List[Optional[Dict[str, Any]]] = []
    for i in range(len(sizes)):
        h, w = (int(v) for v in sizes[i])
        counts = raw[offsets[i] : offsets[i + 1]].tobytes().decode()
        out.append({"size": [h, w], "counts": counts} if h > 0 and w > 0 else None)
    return out


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
        sources = None
        if "image_sources_json" in tensors:
            by_index = json.loads(tensors["image_sources_json"].tobytes().decode("utf-8"))
            sources = [by_index[i] for i in tensors["image_index"].tolist()]
        mask_rles = _decode_rles(tensors)
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
        sources=sources,
        mask_rles=mask_rles,
    )


def _concat_optional(parts: List[ShardData], name: str) -> Optional[List[Any]]:
    """Row lists of an optional field; None when no part has it, None rows where one lacks it."""
    if all(getattr(p, name) is None for p in parts):
        return None
    return [v for p in parts for v in (getattr(p, name) or [None] * len(p))]


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
        sources=_concat_optional(parts, "sources"),
        mask_rles=_concat_optional(parts, "mask_rles"),
    )
