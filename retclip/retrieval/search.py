"""A feature database made searchable: index build/cache, labels of neighbours, batched queries.

:class:`DatabaseRetriever` loads a :class:`~retclip.retrieval.database.FeatureDatabase`, builds
the configured index over all its rows (row i of ``load_all()`` is id i) and answers
``search(queries, k)`` with scores, ids and the neighbours' database labels.

Indexes that are costly to build (HNSW, IVF-PQ) are saved beside the database as
``index/<type>.faiss`` with ``index/<type>.json`` holding a fingerprint: sha256 of the
database's content hash and the index build parameters. A missing, stale or unreadable index
file is rebuilt, and the log says so and why.

Plain NumPy/PyTorch/FAISS: no detectron2 import.
"""
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .database import FeatureDatabase, atomic_write_json
from .shards import atomic_path
from .fingerprint import EncoderFingerprint
from .index import FeatureIndex, FaissIndex, IndexConfig, build_index

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
    if not per_image:
        raise ValueError("concat_queries needs at least one (Q, D) tensor")
    return torch.cat(list(per_image)), [int(q.shape[0]) for q in per_image]


def index_fingerprint(database: FeatureDatabase, config: IndexConfig) -> str:
    """sha256 of the database content and the index build parameters."""
    key = {"database": database.content_hash(), "index": config.build_params()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _atomic_save_index(index: FaissIndex, path: Path) -> None:
    """Cached index files respect the umask, like the database they are built from."""
    with atomic_path(path) as tmp:
        index.save(str(tmp))


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
        rows = database.load_all()
        self.labels = torch.from_numpy(rows.labels.astype("int64"))
        self.image_ids = rows.image_ids
        self.index = self._load_or_build(rows.features)
        if self.config.type == "exact":
            self.labels = self.labels.to(torch.device(config.device))

    # ------------------------------------------------------------------ index cache
    def _load_or_build(self, features) -> FeatureIndex:
        index = build_index(self.config, self.database.embed_dim)
        if not (isinstance(index, FaissIndex) and index.cacheable):
            index.add(features)
            return index
        fingerprint = index_fingerprint(self.database, self.config)
        path = self.index_dir / f"{self.config.type}.faiss"
        meta_path = self.index_dir / f"{self.config.type}.json"
        reason = self._cache_problem(path, meta_path, fingerprint)
        if reason is None:
            try:
                index.load(str(path))
                logger.info("loaded %s index from %s", self.config.type, path)
                return index
            except (RuntimeError, ValueError) as e:
                reason = f"unreadable ({e})"
        start = time.perf_counter()
        index.add(features)
        logger.info(
            "rebuilt %s index for %s in %.1f s (%s)",
            self.config.type, self.database.path, time.perf_counter() - start, reason,
        )
        try:
            self.index_dir.mkdir(parents=True, exist_ok=True)
            _atomic_save_index(index, path)
            atomic_write_json(meta_path, {"fingerprint": fingerprint, **self.config.build_params()})
        except OSError as e:
            logger.warning("could not save the index to %s (%s); kept in memory only", path, e)
        return index

    @staticmethod
    def _cache_problem(path: Path, meta_path: Path, fingerprint: str) -> Optional[str]:
        if not path.is_file() or not meta_path.is_file():
            return f"index file {path} missing"
        try:
            saved = json.loads(meta_path.read_text()).get("fingerprint")
        except json.JSONDecodeError:
            return f"unreadable {meta_path}"
        if saved != fingerprint:
            return "stale: database or index parameters changed"
        return None

    # ------------------------------------------------------------------ search
    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: Tensor, k: int) -> RetrievalResult:
        """Top-k neighbours of (N, D) queries, with their database labels (-1 where missing)."""
        scores, ids = self.index.search(queries, k)
        labels = self.labels.to(ids.device)[ids.clamp_min(0)]
        labels = torch.where(ids >= 0, labels, torch.full_like(labels, -1))
        return RetrievalResult(scores, ids, labels)

    def search_batch(self, per_image: Sequence[Tensor], k: int) -> List[RetrievalResult]:
        """One search over the queries of all images in a batch, split back per image."""
        queries, sizes = concat_queries(per_image)
        return self.search(queries, k).split(sizes)
