"""Segment embeddings -> s_ret over a test vocabulary: databases, label matching, index, scoring.

:class:`RetrievalScorer` is what a model holds: it opens the primary (and optional fallback)
database, checks their encoder against the model's, maps their classes to the test vocabulary
(:func:`~retclip.retrieval.label_matching.match_labels`), builds each database's index, and turns
(N, D) query embeddings into (N, K) retrieval scores. Each database is searched and scored
separately (its own top-k and min-max); a test class takes its score from the one database that
covers it (label matching gives every test class at most one source), so the per-database scores
are simply added. ``has_retrieval`` tells the ensemble which classes have retrieval at all.

Plain PyTorch: no detectron2 import; :meth:`RetrievalConfig.from_cfg` only reads attributes.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .database import FeatureDatabase
from .fingerprint import EncoderFingerprint
from .index import IndexConfig
from .label_matching import EmbedTexts, LabelMatching, match_labels
from .scoring import AGGREGATIONS, Votes, retrieval_scores
from .search import DatabaseRetriever, concat_queries

logger = logging.getLogger(__name__)

__all__ = ["RetrievalConfig", "RetrievalScorer"]


@dataclass
class RetrievalConfig:
    """Retrieval settings, mirroring ``MODEL.RETCLIP.*`` (see :meth:`from_cfg`).

    Attributes:
        database: primary database directory.
        fallback_database: secondary database for classes the primary lacks ("" for none).
        top_k: neighbours per query (k).
        aggregation: per-class pooling, one of :data:`~retclip.retrieval.scoring.AGGREGATIONS`.
        rank_offset: offset of rank voting.
        label_match_threshold: CLIP text cosine accepted as a label match.
        label_match_near_miss: cosines from here up to the threshold are logged as near misses.
        index: index backend settings.
    """

    database: str = ""
    fallback_database: str = ""
    top_k: int = 10
    aggregation: str = "max"
    rank_offset: float = 2.0
    label_match_threshold: float = 0.95
    label_match_near_miss: float = 0.90
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; valid: {AGGREGATIONS}")
        if self.top_k <= 0:
            raise ValueError(f"top_k must be positive, got {self.top_k}")

    @classmethod
    def from_cfg(cls, cfg: Any, device: str = "cpu") -> "RetrievalConfig":
        node = cfg.MODEL.RETCLIP
        return cls(
            database=node.DATABASE, fallback_database=node.FALLBACK_DATABASE, top_k=node.TOP_K,
            aggregation=node.AGGREGATION, rank_offset=node.RANK_VOTE_OFFSET,
            label_match_threshold=node.LABEL_MATCH_THRESHOLD,
            label_match_near_miss=node.LABEL_MATCH_NEAR_MISS,
            index=IndexConfig.from_cfg(cfg, device=device),
        )


class RetrievalScorer:
    """s_ret for one test vocabulary from one or two feature databases.

    Args:
        config: retrieval settings (``config.database`` must be set).
        encoder: the model's CLIP fingerprint; databases from another encoder are an error.
        test_vocabulary: K test classes ("name, synonym" strings or synonym lists).
        embed_texts: text -> (n, D) CLIP text embeddings for label matching; None = synonyms only.
        report_path: where to write the label-matching JSON report (None for none).
        index_dir: where to cache indexes (default: inside each database directory).
    """

    def __init__(
        self,
        config: RetrievalConfig,
        encoder: EncoderFingerprint,
        test_vocabulary: Sequence[Union[str, Sequence[str]]],
        embed_texts: Optional[EmbedTexts] = None,
        report_path: Optional[Union[str, os.PathLike]] = None,
        index_dir: Optional[Union[str, os.PathLike]] = None,
    ):
        if not config.database:
            raise ValueError("RetrievalScorer needs config.database (MODEL.RETCLIP.DATABASE)")
        self.config = config
        self.num_classes = len(test_vocabulary)
        paths = [p for p in (config.database, config.fallback_database) if p]
        databases = [FeatureDatabase.open(p, expected_fingerprint=encoder) for p in paths]
        self.matching: LabelMatching = match_labels(
            test_vocabulary, [db.vocabulary for db in databases], embed_texts,
            threshold=config.label_match_threshold, near_miss=config.label_match_near_miss,
            report_path=report_path,
        )
        self.retrievers: List[DatabaseRetriever] = []
        self.mappings: List[Tensor] = []
        for i, (db, mapping) in enumerate(zip(databases, self.matching.mappings)):
            if not (mapping >= 0).any():
                logger.warning("database %s matches no test class; not searched", db.path)
                continue
            sub_dir = None if index_dir is None else os.path.join(str(index_dir), f"db{i}")
            self.retrievers.append(DatabaseRetriever(db, config.index, index_dir=sub_dir))
            self.mappings.append(mapping)

    @property
    def has_retrieval(self) -> Tensor:
        """(K,) bool: test classes some database covers (gamma applies only to these)."""
        return self.matching.has_retrieval

    def score(
        self, queries: Tensor, return_votes: bool = False
    ) -> Union[Tensor, Tuple[Tensor, List[Votes]]]:
        """(N, D) segment embeddings -> (N, K) s_ret (with per-database votes if asked)."""
        s_ret = torch.zeros(queries.shape[0], self.num_classes, device=queries.device)
        all_votes: List[Votes] = []
        for retriever, mapping in zip(self.retrievers, self.mappings):
            found = retriever.search(queries, self.config.top_k)
            mapping = mapping.to(found.labels.device)
            classes = torch.where(found.labels >= 0, mapping[found.labels.clamp_min(0)],
                                  torch.full_like(found.labels, -1))
            out = retrieval_scores(
                found.scores, classes, self.num_classes, self.config.aggregation,
                self.config.rank_offset, neighbour_ids=found.ids, return_votes=return_votes,
            )
            if return_votes:
                out, votes = out
                all_votes.append(votes)
            s_ret = s_ret + out.to(s_ret.device)
        return (s_ret, all_votes) if return_votes else s_ret

    def score_batch(self, per_image: Sequence[Tensor]) -> List[Tensor]:
        """One search over the queries of all images, s_ret split back per image."""
        queries, sizes = concat_queries(per_image)
        return list(self.score(queries).split(sizes))
