"""A feature database made searchable: index build/cache, labels of neighbours, batched queries.

:class:`DatabaseRetriever` opens a :class:`~retclip.retrieval.database.FeatureDatabase`, gets the
configured index over all its rows (row i of the database is id i) and answers
``search(queries, k)`` with scores, ids and the neighbours' database labels.

Indexes that are costly to build (HNSW, IVF-PQ) are cached beside the database as
``index/<type>.faiss`` (see :mod:`.index_build`; ``tools/build_index.py`` builds them ahead of
time, in parallel if asked). With a valid cached index, opening reads only the index (memory-mapped
when ``IndexConfig.mmap``) and the compact label array (:mod:`.labels`): no feature shard. A
missing, stale or unreadable index file is rebuilt shard by shard, and the log says so and why.

Plain NumPy/PyTorch/FAISS: no detectron2 import; torch is imported at the first search (or when
an ``exact`` index is built), so opening a database over a cached FAISS index does not load it.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

from .database import FeatureDatabase
from .fingerprint import EncoderFingerprint
from .index import FaissIndex, FeatureIndex, IndexConfig, build_index
from .index_build import build_database_index, cache_paths, cache_problem, index_fingerprint
from .index_build import save_cached_index
from .labels import open_label_array, read_image_ids

logger = logging.getLogger(__name__)

__all__ = ["DatabaseRetriever", "RetrievalResult", "index_fingerprint", "concat_queries"]


@dataclass
class RetrievalResult:
    """Neighbours of N queries.

    Attributes:
        scores: (N, k) float32 cosine similarities, descending; -inf where no neighbour.
        ids: (N, k) int64 database row ids; -1 where no neighbour.
        labels: (N, k) int64 database class indices of the neighbours; -1 where no neighbour.
    """

    scores: Tensor
    ids: Tensor
    labels: Tensor

    def split(self, sizes: Sequence[int]) -> List["RetrievalResult"]:
        """Per-image results from a search over concatenated queries (see concat_queries)."""
        parts = zip(*(t.split(list(sizes)) for t in (self.scores, self.ids, self.labels)))
        return [RetrievalResult(*p) for p in parts]


def concat_queries(per_image: Sequence[Tensor]) -> Tuple[Tensor, List[int]]:
    """Concatenate per-image (Q_i, D) queries into one (sum Q_i, D) batch; returns the sizes.

    One search over all queries of a batch amortises the index scan (and GPU launch costs).
    """
    import torch

    if not per_image:
        raise ValueError("concat_queries needs at least one (Q, D) tensor")
    return torch.cat(list(per_image)), [int(q.shape[0]) for q in per_image]


class DatabaseRetriever:
    """Search a feature database with the configured index backend.

    Args:
        database: an opened database, or its directory.
        config: index settings.
        encoder: the model's encoder fingerprint; a database from another encoder is an error.
        index_dir: where cacheable indexes are saved (default ``<database>/index``); must be
            writable, else the index is built in memory and a warning logged.

    Raises:
        ValueError: the database is empty (nothing to search), or from another encoder.
    """

    def __init__(
        self,
        database: Union[FeatureDatabase, str, os.PathLike],
        config: IndexConfig,
        encoder: Optional[EncoderFingerprint] = None,
        index_dir: Optional[Union[str, os.PathLike]] = None,
    ):
        if not isinstance(database, FeatureDatabase):
            database = FeatureDatabase.open(database)
        if encoder is not None:
            database.check_encoder(encoder)
        if len(database) == 0:
            raise ValueError(
                f"feature database {database.path} is empty: no vectors to search "
                "(was its build interrupted before the first shard?)"
            )
        self.database = database
        self.config = config
        self.index_dir = Path(index_dir) if index_dir is not None else database.path / "index"
        self._labels = open_label_array(database)
        self._image_ids: Optional[List[str]] = None
        self.index = self._load_or_build()
        if self.config.type == "exact":
            import torch

            self._labels = torch.from_numpy(np.asarray(self._labels, dtype=np.int64)).to(
                torch.device(config.device)
            )

    @property
    def image_ids(self) -> List[str]:
        """Source image id of every row, read from the shards on first use (not at open)."""
        if self._image_ids is None:
            self._image_ids = read_image_ids(self.database)
        return self._image_ids

    # ------------------------------------------------------------------ index cache
    def _load_or_build(self) -> FeatureIndex:
        index = build_index(self.config, self.database.embed_dim)
        if not (isinstance(index, FaissIndex) and index.cacheable):
            return build_database_index(self.database, self.config)
        path, _ = cache_paths(self.index_dir, self.config)
        reason = cache_problem(self.index_dir, self.database, self.config)
        if reason is None:
            try:
                index.load(str(path))
                logger.info("loaded %s index from %s", self.config.type, path)
                return index
            except (RuntimeError, ValueError) as e:
                reason = f"unreadable ({e})"
        start = time.perf_counter()
        index = build_database_index(self.database, self.config)
        logger.info(
            "rebuilt %s index for %s in %.1f s (%s)",
            self.config.type, self.database.path, time.perf_counter() - start, reason,
        )
        try:
            save_cached_index(index, self.index_dir, self.database, self.config)
        except OSError as e:
            logger.warning("could not save the index to %s (%s); kept in memory only", path, e)
        return index

    # ------------------------------------------------------------------ search
    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: Tensor, k: int) -> RetrievalResult:
        """Top-k neighbours of (N, D) queries, with their database labels (-1 where missing)."""
        import torch

        scores, ids = self.index.search(queries, k)
        if isinstance(self._labels, torch.Tensor):
            labels = self._labels.to(ids.device)[ids.clamp_min(0)]
        else:  # memory-mapped int32: gather only the neighbours' entries
            rows = ids.clamp_min(0).cpu().numpy()
            labels = torch.from_numpy(self._labels[rows].astype(np.int64)).to(ids.device)
        labels = torch.where(ids >= 0, labels, torch.full_like(labels, -1))
        return RetrievalResult(scores, ids, labels)

    def search_batch(self, per_image: Sequence[Tensor], k: int) -> List[RetrievalResult]:
        """One search over the queries of all images in a batch, split back per image."""
        queries, sizes = concat_queries(per_image)
        return self.search(queries, k).split(sizes)
