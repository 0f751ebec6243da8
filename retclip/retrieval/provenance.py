"""Where a database row came from: source image, box and mask, for thumbnails of neighbours.

The builder stores each row's mask as COCO RLE and each image's path in the shard (see
:mod:`retclip.retrieval.shards`); databases built before that have no provenance, and
:class:`ProvenanceReader` then answers with the image id and box only (no thumbnail).
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .database import FeatureDatabase
from .shards import ShardData

logger = logging.getLogger(__name__)

__all__ = [
    "ProvenanceReader",
    "decode_mask_rle",
    "encode_mask_rle",
    "row_provenance",
    "row_thumbnail",
]


def encode_mask_rle(mask: np.ndarray) -> Dict[str, Any]:
    """(H, W) bool mask -> COCO RLE {"size": [h, w], "counts": str} (pycocotools)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def decode_mask_rle(rle: Dict[str, Any]) -> np.ndarray:
    """COCO RLE (as :func:`encode_mask_rle` gives) -> (H, W) bool mask."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    coded = {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(coded).astype(bool)


def row_provenance(shard: ShardData, i: int, source: Optional[str] = None) -> Dict[str, Any]:
    """{"image_id", "source" (path or None), "box" (x0, y0, x1, y1) or None, "mask_rle" or None,
    "label"} of row ``i`` of a shard; ``source`` is used when the shard records no paths (a
    database built before provenance: its build records may still know the image's path)."""
    box = shard.boxes[i]
    return {
        "image_id": shard.image_ids[i],
        "source": shard.sources[i] if shard.sources is not None else source,
        "box": [float(v) for v in box] if np.all(np.isfinite(box)) else None,
        "mask_rle": shard.mask_rles[i] if shard.mask_rles is not None else None,
        "label": int(shard.labels[i]),
    }


def row_thumbnail(
    prov: Optional[Dict[str, Any]], caption: Sequence[str], size: int = 160
) -> Optional[np.ndarray]:
    """A crop of a row's source image around its box with its mask outlined and ``caption``
    underneath (the web demo's neighbours, ``inspect_database.py thumbnails``); None when the
    source is unknown or unreadable (said in the log)."""
    from retclip.utils.image_io import ImageReadError, read_image
    from retclip.visualization import draw_thumbnail

    if not prov or not prov.get("source"):
        return None
    try:
        image = read_image(prov["source"])
    except ImageReadError as e:
        logger.warning("no thumbnail for row of %s: %s", prov.get("image_id"), e)
        return None
    mask = decode_mask_rle(prov["mask_rle"]) if prov.get("mask_rle") else None
    return draw_thumbnail(image, prov.get("box"), mask, caption, size=size)


class ProvenanceReader:
    """Row id (index order: the manifest's shards, concatenated) -> provenance of that row.

    Reads only the shard that holds the row, and keeps the last few shards decoded.
    """

    def __init__(self, database: FeatureDatabase, cached_shards: int = 4) -> None:
        self.database = database
        self._starts: List[int] = []
        total = 0
        for entry in database.manifest["shards"]:
            self._starts.append(total)
            total += int(entry["rows"])
        self._total = total
        self._read = lru_cache(maxsize=cached_shards)(self._read_shard)

    def _read_shard(self, position: int) -> ShardData:
        return self.database.read_shard(self.database.shard_names[position])

    def row(self, row: int) -> Optional[Dict[str, Any]]:
        """{"image_id", "source" (path or None), "box" (x0, y0, x1, y1) or None, "mask_rle" or
        None, "label"} of a row, None when the row id is outside the database."""
        if not 0 <= row < self._total:
            return None
        position = int(np.searchsorted(self._starts, row, side="right")) - 1
        return row_provenance(self._read(position), row - self._starts[position])
