"""Segment embeddings -> s_ret over a test vocabulary: databases, label matching, index, scoring.

:class:`RetrievalScorer` is what a model holds (the retrieval classifier of the paper, §2.2). It
opens the primary and optional fallback databases once, checks their encoder against the
model's, and builds each database's index. Label matching to the test vocabulary
(:func:`~retclip.retrieval.label_matching.match_labels`) runs once per vocabulary and is cached,
so a model can switch vocabularies without re-indexing. Each database is searched and scored
separately (its own top-k and min-max); a test class takes its score from the one database that
covers it (label matching gives every test class at most one source), so the per-database scores
are simply added. ``available`` tells the ensemble which classes have retrieval at all.

Plain PyTorch: no detectron2 import; :meth:`RetrievalConfig.from_cfg` only reads attributes.
"""
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .fingerprint import RECIPE_FIELDS, EmbeddingRecipe, EncoderFingerprint
from .index import IndexConfig
from .label_matching import LabelMatching, match_labels
from .scoring import AGGREGATIONS, retrieval_scores
from .search import DatabaseRetriever

logger = logging.getLogger(__name__)

__all__ = ["DATABASES_ENV", "RetrievalConfig", "RetrievalOutput", "RetrievalScorer", "resolve_database_path"]

#: Relative database paths in configs are resolved under this directory.
DATABASES_ENV = "RETCLIP_DATABASES"

#: Vocabularies whose label matching is kept.
_MATCHING_CACHE = 4


def resolve_database_path(path: str, key: str = "MODEL.RETCLIP.DATABASE") -> Optional[Path]:
    """Config value -> database directory. "" is None; relative paths resolve under
    ``$RETCLIP_DATABASES`` (never under the current directory)."""
    if not path:
        return None
    expanded = Path(os.path.expandvars(path)).expanduser()
    if expanded.is_absolute():
        return expanded
    root = os.environ.get(DATABASES_ENV)
    if not root:
        raise ValueError(
            f"{key} is the relative path {path!r}; set {DATABASES_ENV} to the folder that holds "
            "your feature databases, or give an absolute path"
        )
    return Path(root).expanduser() / expanded


@dataclass
class RetrievalConfig:
    """Retrieval settings, mirroring ``MODEL.RETCLIP.*`` (see :meth:`from_cfg`).

    Attributes:
        database: primary database directory (absolute, or relative to ``$RETCLIP_DATABASES``).
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
        AGGREGATIONS.get(self.aggregation)  # an unknown name fails here, listing the valid ones
        if self.top_k <= 0:
            raise ValueError(f"MODEL.RETCLIP.TOP_K must be positive, got {self.top_k}")

    @classmethod
    def from_cfg(cls, cfg: Any, device: str = "cpu") -> "RetrievalConfig":
        """From a detectron2 config; the exact index runs on ``device``, FAISS ones on the CPU
        (or FAISS GPUs, see :class:`~retclip.retrieval.index.IndexConfig`)."""
        node = cfg.MODEL.RETCLIP
        index_device = device if node.INDEX.TYPE == "exact" else "cpu"
        return cls(
            database=node.DATABASE, fallback_database=node.FALLBACK_DATABASE, top_k=node.TOP_K,
            aggregation=node.AGGREGATION, rank_offset=node.RANK_VOTE_OFFSET,
            label_match_threshold=node.LABEL_MATCH_THRESHOLD,
            label_match_near_miss=node.LABEL_MATCH_NEAR_MISS,
            index=IndexConfig.from_cfg(cfg, device=index_device),
        )

    def database_paths(self) -> List[Path]:
        """The resolved primary and fallback directories that are set."""
        paths = [resolve_database_path(self.database),
                 resolve_database_path(self.fallback_database, "MODEL.RETCLIP.FALLBACK_DATABASE")]
        return [p for p in paths if p is not None]


@dataclass
class RetrievalOutput:
    """Retrieval scores of N segments over K test classes.

    Attributes:
        scores: (N, K) float32 s_ret (in [0, 1] for ``max`` / ``mean``), 0 for unusable rows.
        available: (K,) bool, classes some database covers.
        votes: per segment, {class: [{"id", "similarity", "weight", "database"}]} when asked.
    """

    scores: Tensor
    available: Tensor
    votes: Optional[List[dict]] = None


class RetrievalScorer:
    """s_ret from a primary and optional fallback databases, for any test vocabulary.

    Args:
        retrievers: primary database first, then fallbacks.
        top_k: k neighbours per segment (lowered, with a warning, for a smaller database).
        aggregation: "max", "mean", "sum" or "rank_vote".
        rank_offset: rank voting offset (w = 1 / (offset + rank)).
        embed_texts: names -> (N, D) text embeddings for label matching by CLIP cosine; None
            matches by synonyms only. Models set it to their own text encoder.
        match_threshold, near_miss: label-matching cosine threshold and near-miss floor.
        report_dir: where label-matching JSON reports are written (None: not written).
    """

    def __init__(
        self,
        retrievers: Sequence[DatabaseRetriever],
        *,
        top_k: int,
        aggregation: str = "max",
        rank_offset: float = 2.0,
        embed_texts: Optional[Callable[[List[str]], Tensor]] = None,
        match_threshold: float = 0.95,
        near_miss: float = 0.90,
        report_dir: Optional[str] = None,
    ) -> None:
        if not retrievers:
            raise ValueError("RetrievalScorer needs at least one database")
        if top_k < 1:
            raise ValueError(f"MODEL.RETCLIP.TOP_K must be >= 1, got {top_k}")
        AGGREGATIONS.get(aggregation)
        self.retrievers = list(retrievers)
        self.top_k = top_k
        self.aggregation = aggregation
        self.rank_offset = rank_offset
        self.embed_texts = embed_texts
        self.match_threshold = match_threshold
        self.near_miss = near_miss
        self.report_dir = report_dir
        self._matchings: "OrderedDict[tuple, LabelMatching]" = OrderedDict()

    @classmethod
    def from_config(
        cls, config: RetrievalConfig, encoder: Optional[EncoderFingerprint], *,
        embed_texts: Optional[Callable[[List[str]], Tensor]] = None, report_dir: Optional[str] = None,
    ) -> "RetrievalScorer":
        """Open each configured database (checking its encoder against ``encoder``, if given; models
        pass None and check the whole recipe with :meth:`check_recipe`) and index it."""
        paths = config.database_paths()
        if not paths:
            raise ValueError("no feature database configured (MODEL.RETCLIP.DATABASE is empty)")
        retrievers = [DatabaseRetriever(p, config.index, encoder=encoder) for p in paths]
        return cls(
            retrievers, top_k=config.top_k, aggregation=config.aggregation, rank_offset=config.rank_offset,
            embed_texts=embed_texts, match_threshold=config.label_match_threshold,
            near_miss=config.label_match_near_miss, report_dir=report_dir,
        )

    def check_recipe(
        self, recipe: EmbeddingRecipe, *, allow_mismatch: bool = False,
        fields: Sequence[str] = RECIPE_FIELDS,
    ) -> None:
        """Refuse any database embedded another way than ``recipe`` (see
        :meth:`FeatureDatabase.check_recipe`)."""
        for retriever in self.retrievers:
            retriever.database.check_recipe(recipe, allow_mismatch=allow_mismatch, fields=fields)

    def fingerprint(self) -> List[str]:
        """Content hashes of the databases (for caches that must not go stale)."""
        return [r.database.content_hash() for r in self.retrievers]

    def matching(self, class_names: Sequence[str]) -> LabelMatching:
        """Label matching of every database to this vocabulary (computed once per vocabulary)."""
        key = tuple(class_names)
        if key not in self._matchings:
            report = None
            if self.report_dir:
                os.makedirs(self.report_dir, exist_ok=True)
                report = os.path.join(self.report_dir, f"label_matching_{len(class_names)}_classes.json")
            self._matchings[key] = match_labels(
                list(class_names), [r.database.vocabulary for r in self.retrievers],
                embed_texts=self.embed_texts, threshold=self.match_threshold, near_miss=self.near_miss,
                report_path=report,
            )
            while len(self._matchings) > _MATCHING_CACHE:
                self._matchings.popitem(last=False)
        return self._matchings[key]

    def __call__(
        self, embeddings: Tensor, class_names: Sequence[str], usable: Optional[Tensor] = None,
        return_votes: bool = False,
    ) -> RetrievalOutput:
        """Score (N, D) segment embeddings against the K classes of ``class_names``.

        One search per database over all N queries (a model passes every query of every image
        of its batch at once).

        Args:
            usable: (N,) bool; False rows (empty masks) and non-finite embeddings get s_ret = 0.
            return_votes: also return which neighbours voted for which class.
        """
        num_classes = len(class_names)
        matching = self.matching(class_names)
        finite = torch.isfinite(embeddings).all(-1)
        usable = finite if usable is None else (usable.to(finite.device) & finite)
        queries = torch.where(usable[:, None], embeddings, torch.zeros_like(embeddings))
        queries = F.normalize(queries.float(), dim=-1)
        scores = torch.zeros(embeddings.shape[0], num_classes, dtype=torch.float32)
        votes: Optional[List[dict]] = [dict() for _ in range(embeddings.shape[0])] if return_votes else None
        source = torch.tensor(matching.source, dtype=torch.long)
        for d, (retriever, mapping) in enumerate(zip(self.retrievers, matching.mappings)):
            if not bool((source == d).any()):
                continue  # this database covers no test class
            k = min(self.top_k, len(retriever))
            if k < self.top_k:
                logger.warning("TOP_K %d exceeds the %d vectors of %s; using k = %d",
                               self.top_k, len(retriever), retriever.database.path, k)
            found = retriever.search(queries, k)
            mapping = mapping.to(found.labels.device)
            classes = torch.where(found.labels >= 0, mapping[found.labels.clamp_min(0)], found.labels)
            out = retrieval_scores(
                found.scores.cpu(), classes.cpu(), num_classes, self.aggregation, self.rank_offset,
                neighbour_ids=found.ids.cpu(), return_votes=return_votes,
            )
            scores += out[0] if return_votes else out
            if votes is not None:
                for i, per_class in enumerate(out[1]):
                    for cls_id, entries in per_class.items():
                        votes[i][cls_id] = [dict(e, database=d) for e in entries]
        unusable = ~usable.cpu()
        scores[unusable] = 0.0
        if votes is not None:  # a query scored 0 lists no neighbour (its zero vector "found" some)
            for i in torch.nonzero(unusable).flatten().tolist():
                votes[i] = {}
        return RetrievalOutput(scores.to(embeddings.device), matching.has_retrieval.clone(), votes)
