"""The retrieval classifier of RetCLIP: segment embeddings -> per-class scores s_ret (paper §2.2).

A :class:`RetrievalHead` holds the primary database and optional fallback databases (each a
:class:`~retclip.retrieval.search.DatabaseRetriever`), matches their class names to the current
test vocabulary once per vocabulary (synonyms first, then CLIP text cosine, see
:mod:`retclip.retrieval.label_matching`), and scores a batch of segment embeddings with one index
search per database. A test class is scored by the first database that covers it; classes no
database covers get ``available = False`` (the ensemble then uses CLIP alone for them).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..retrieval import DatabaseRetriever, EncoderFingerprint, IndexConfig, LabelMatching, match_labels
from ..retrieval import retrieval_scores as score_neighbours

logger = logging.getLogger(__name__)

__all__ = ["RetrievalHead", "RetrievalOutput", "resolve_database_path", "DATABASES_ENV"]

#: Relative database paths in configs are resolved under this directory.
DATABASES_ENV = "RETCLIP_DATABASES"


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
class RetrievalOutput:
    """Retrieval scores of N segments over K test classes.

    Attributes:
        scores: (N, K) float32 s_ret in [0, 1] (``max``/``mean`` aggregation).
        available: (K,) bool, classes some database covers.
        votes: per segment, {class: [{"id", "similarity", "weight", "database"}]} when asked.
    """

    scores: torch.Tensor
    available: torch.Tensor
    votes: Optional[List[dict]] = None


class RetrievalHead:
    """Retrieval over one primary and optional fallback databases.

    Args:
        retrievers: primary database first, then fallbacks.
        top_k: k neighbours per segment.
        aggregation: "max", "mean", "sum" or "rank_vote".
        rank_vote_offset: rank voting offset (w = 1 / (offset + rank)).
        embed_texts: names -> (N, D) text embeddings for label matching by CLIP cosine.
        match_threshold, near_miss: label-matching cosine threshold and near-miss floor.
        report_dir: where label-matching JSON reports are written (None: not written).
    """

    def __init__(
        self,
        retrievers: Sequence[DatabaseRetriever],
        *,
        top_k: int,
        aggregation: str,
        rank_vote_offset: float,
        embed_texts: Optional[Callable[[List[str]], torch.Tensor]],
        match_threshold: float,
        near_miss: float,
        report_dir: Optional[str] = None,
    ) -> None:
        if not retrievers:
            raise ValueError("RetrievalHead needs at least one database")
        if top_k < 1:
            raise ValueError(f"MODEL.RETCLIP.TOP_K must be >= 1, got {top_k}")
        self.retrievers = list(retrievers)
        self.top_k = top_k
        self.aggregation = aggregation
        self.rank_vote_offset = rank_vote_offset
        self.embed_texts = embed_texts
        self.match_threshold = match_threshold
        self.near_miss = near_miss
        self.report_dir = report_dir
        self._matchings: "OrderedDict[tuple, LabelMatching]" = OrderedDict()

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[Path],
        index_config: IndexConfig,
        encoder: EncoderFingerprint,
        **kwargs,
    ) -> "RetrievalHead":
        """Open each database (checking its encoder against the model's) and index it."""
        return cls([DatabaseRetriever(p, index_config, encoder=encoder) for p in paths], **kwargs)

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
                report = os.path.join(self.report_dir, f"label_matching_{len(self._matchings)}.json")
            self._matchings[key] = match_labels(
                list(class_names),
                [r.database.vocabulary for r in self.retrievers],
                embed_texts=self.embed_texts,
                threshold=self.match_threshold,
                near_miss=self.near_miss,
                report_path=report,
            )
            while len(self._matchings) > 4:
                self._matchings.popitem(last=False)
        return self._matchings[key]

    def __call__(
        self, embeddings: torch.Tensor, class_names: Sequence[str], usable: Optional[torch.Tensor] = None,
        return_votes: bool = False,
    ) -> RetrievalOutput:
        """Score (N, D) segment embeddings against the K classes of ``class_names``.

        Args:
            usable: (N,) bool; False rows (empty masks, non-finite embeddings) get s_ret = 0.
        """
        num_classes = len(class_names)
        matching = self.matching(class_names)
        finite = torch.isfinite(embeddings).all(-1)
        usable = finite if usable is None else (usable & finite)
        queries = F.normalize(torch.where(usable[:, None], embeddings, torch.zeros_like(embeddings)).float(), dim=-1)
        scores = torch.zeros(embeddings.shape[0], num_classes, dtype=torch.float32)
        votes: Optional[List[dict]] = [dict() for _ in range(embeddings.shape[0])] if return_votes else None
        source = torch.tensor(matching.source, dtype=torch.long)
        for d, retriever in enumerate(self.retrievers):
            covered = source == d
            if not covered.any():
                continue
            k = min(self.top_k, len(retriever))
            if k < self.top_k:
                logger.warning("TOP_K %d exceeds the %d vectors of %s; using k = %d",
                               self.top_k, len(retriever), retriever.database.path, k)
            result = retriever.search(queries, k)
            mapping = matching.mappings[d].to(result.labels.device)
            classes = torch.where(result.labels >= 0, mapping[result.labels.clamp_min(0)], result.labels)
            # Only classes this database is responsible for vote; others come from elsewhere.
            responsible = torch.where(classes >= 0, covered.to(classes.device)[classes.clamp_min(0)], False)
            classes = torch.where(responsible, classes, torch.full_like(classes, -1))
            out = score_neighbours(
                result.scores.cpu(), classes.cpu(), num_classes, self.aggregation, self.rank_vote_offset,
                neighbour_ids=result.ids.cpu(), return_votes=return_votes,
            )
            part = out[0] if return_votes else out
            scores += part * covered[None, :].float()
            if votes is not None:
                for i, per_class in enumerate(out[1]):
                    for cls_id, entries in per_class.items():
                        votes[i][cls_id] = [dict(e, database=d) for e in entries]
        scores[~usable.cpu()] = 0.0
        return RetrievalOutput(scores.to(embeddings.device), matching.has_retrieval.clone(), votes)

    def split_per_image(self, sizes: Sequence[int], output: RetrievalOutput) -> List[Tuple[torch.Tensor, Optional[list]]]:
        """Per-image (Q_i, K) scores (and votes) from a batched call."""
        chunks = output.scores.split(list(sizes))
        if output.votes is None:
            return [(c, None) for c in chunks]
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        return [(c, output.votes[bounds[i] : bounds[i + 1]]) for i, c in enumerate(chunks)]
