"""Why a segment got its label: its scores and the database neighbours that voted for it.

For every panoptic segment: the query that made it (the query of the segment's class whose mask
overlaps it most), the final score (the ensemble probability post-processing ranked it by), the
three classifier scores behind it (s_iv, s_clip: softmax probabilities of the in-vocabulary and
CLIP classifiers; s_ret: the retrieval score), and, when that query had a usable retrieval query
and a non-zero s_ret for the class, its top neighbours: database row, database class, the test
class it was mapped to and how (synonym or CLIP text match), similarity, weight, and where the
row came from (image, box, mask) when the database records it. Works for FC-CLIP models too
(without s_ret and neighbours).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .reranking import QueryOutputs
from .retrieval.provenance import ProvenanceReader, row_thumbnail

logger = logging.getLogger(__name__)

__all__ = ["SegmentExplainer"]


def _best_query(mask: torch.Tensor, query_masks: torch.Tensor, labels: torch.Tensor, category: int) -> int:
    """The query of this class whose mask overlaps the segment most (IoU)."""
    inter = (query_masks & mask).flatten(1).sum(1).float()
    union = (query_masks | mask).flatten(1).sum(1).float().clamp_min(1)
    iou = torch.where(labels == category, inter / union, inter / union - 2.0)
    return int(iou.argmax())


class SegmentExplainer:
    """Explanations of a model's panoptic segments.

    Args:
        model: the FC-CLIP / RetCLIP model (its retrieval head, if any, gives the neighbours).
        top_neighbours: neighbours listed per segment.
    """

    def __init__(self, model: torch.nn.Module, top_neighbours: int = 5) -> None:
        self.model = model
        self.top_neighbours = top_neighbours
        self._provenance: Dict[int, ProvenanceReader] = {}

    @property
    def retrievers(self) -> List[Any]:
        head = getattr(self.model, "retrieval_head", None)
        return [] if head is None else list(head.retrievers)

    def explain(self, queries: QueryOutputs, result: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Per segment of ``result["panoptic_seg"]`` (a :func:`~retclip.reranking.rerank` output):
        id, class, isthing, area, score, query, s_iv, s_clip, s_ret, neighbours."""
        seg, infos = result["panoptic_seg"]
        seg = seg.cpu()
        probs = result["mask_cls"].float().softmax(-1)
        labels = probs.argmax(-1)
        out = queries.outputs
        s_iv = out["pred_logits"][0].float().softmax(-1).cpu()
        s_clip = out["clip_logits"][0].float().softmax(-1).cpu()
        s_ret = out.get("retrieval_scores")
        s_ret = None if s_ret is None else s_ret[0].float().cpu()
        available = out.get("retrieval_available")
        valid = out["valid"][0].cpu()
        votes = (out.get("retrieval_votes") or [None])[0]
        names = list(self.model.vocabulary.class_names)
        segments = []
        for info in infos:
            mask = seg == info["id"]
            c = int(info["category_id"])
            q = _best_query(mask, queries.query_masks, labels, c)
            retrieval_score = None if s_ret is None else float(s_ret[q, c])
            usable = bool(
                s_ret is not None and valid[q] and bool(available[c]) and retrieval_score > 0.0
            )
            entry = {
                "id": int(info["id"]), "category_id": c, "class": names[c],
                "isthing": bool(info["isthing"]), "area": int(mask.sum()),
                "score": round(float(probs[q, c]), 6), "query": q,
                "s_iv": round(float(s_iv[q, c]), 6), "s_clip": round(float(s_clip[q, c]), 6),
                "s_ret": None if retrieval_score is None else round(retrieval_score, 6),
                "retrieval_usable": usable,
                "neighbours": self._neighbours(votes[q].get(c, []), names) if usable and votes else [],
            }
            segments.append(entry)
        return segments

    def _match_method(self, database: int, db_label: int) -> Dict[str, Any]:
        matching = self.model.retrieval_head.matching(list(self.model.vocabulary.class_names))
        for m in matching.matches:
            if m.database == database and m.db_index == db_label:
                return {"method": m.method, "cosine": None if m.cosine is None else round(float(m.cosine), 4)}
        return {"method": None, "cosine": None}

    def _neighbours(self, entries: List[Dict[str, Any]], names: Sequence[str]) -> List[Dict[str, Any]]:
        retrievers = self.retrievers
        matching = self.model.retrieval_head.matching(list(names))
        entries = sorted(entries, key=lambda e: -e["similarity"])[: self.top_neighbours]
        out = []
        for e in entries:
            d, row = int(e.get("database", 0)), int(e["id"])
            retriever = retrievers[d]
            db_label = int(retriever._labels[row])
            mapped = int(matching.mappings[d][db_label])
            prov = self.provenance(d).row(row) or {}
            out.append({
                "database": d, "row": row, "image_id": str(retriever.image_ids[row]),
                "database_class": retriever.database.class_names[db_label],
                "mapped_class": names[mapped] if mapped >= 0 else None,
                "mapping": self._match_method(d, db_label),
                "similarity": round(float(e["similarity"]), 6), "weight": round(float(e["weight"]), 6),
                "source": prov.get("source"), "box": prov.get("box"),
                "has_mask": prov.get("mask_rle") is not None,
            })
        return out

    def provenance(self, database: int) -> ProvenanceReader:
        if database not in self._provenance:
            self._provenance[database] = ProvenanceReader(self.retrievers[database].database)
        return self._provenance[database]

    def thumbnails(self, segment: Dict[str, Any], size: int = 160) -> List[Optional[np.ndarray]]:
        """One labelled thumbnail per neighbour of ``segment`` (None where the database has no
        source image for the row: databases built before provenance, or a moved image)."""
        out: List[Optional[np.ndarray]] = []
        for n in segment["neighbours"]:
            out.append(row_thumbnail(self.provenance(n["database"]).row(n["row"]), neighbour_caption(n), size))
        return out


def neighbour_caption(n: Dict[str, Any]) -> List[str]:
    """Caption lines of a neighbour thumbnail: database class -> test class, similarity, weight."""
    mapped = n.get("mapped_class") or "?"
    db_class = n["database_class"].split(",")[0]
    arrow = db_class if mapped.split(",")[0] == db_class else f"{db_class} -> {mapped.split(',')[0]}"
    return [arrow, f"sim {n['similarity']:.3f}  w {n['weight']:.2f}"]
