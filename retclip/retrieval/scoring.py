"""Neighbours -> per-class retrieval scores s_ret (RetCLIP §2.2).

Per query, over its retrieved neighbours (slots with score -inf / id -1 are ignored):

1. distance d = 1 - cosine similarity; min-max normalised over the query's neighbours and
   subtracted from one: w = 1 - (d - d_min) / (d_max - d_min) = (c - c_min) / (c_max - c_min).
   The nearest neighbour gets 1, the farthest 0. When all neighbours are equally far (including
   a single neighbour) every one gets 1: the min-max is undefined there and "all equally good"
   is the reading that keeps a lone or tied match from scoring 0.
2. per test class, over the neighbours whose label maps to it (labels -1 vote for nothing but
   still take part in step 1):

   * ``max`` (default): the best w; in [0, 1].
   * ``mean``: mean w; in [0, 1].
   * ``sum``: sum of w; in [0, k].
   * ``rank_vote``: sum of 1 / (offset + rank), rank 0 for the nearest neighbour, ignoring w
     (Geirhos et al. 2024, offset 2); in [0, sum_{r<k} 1/(offset + r)], e.g. ~1.52 for k = 10.

   Classes with no neighbour get 0.

Each aggregation is an :class:`Aggregation` (a neighbour-weight rule and a per-class reduction)
registered by name in :data:`AGGREGATIONS`; a new one is registered there once.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..utils.registry import NamedRegistry

__all__ = ["AGGREGATIONS", "Aggregation", "retrieval_scores", "minmax_weights"]


@dataclass(frozen=True)
class Aggregation:
    """A per-class aggregation of neighbour votes.

    Attributes:
        weights: ``(similarities (N, k), present (N, k) bool, rank_offset) -> (N, k)`` weight of
            each neighbour (0 where missing).
        reduce: ``(target (N, k) long, weights (N, k), num_classes) -> (N, K+1)`` per-class
            scores; ``target`` is the neighbour's test class, K (a dustbin column) when it votes
            for none.
    """

    weights: Callable[[Tensor, Tensor, float], Tensor]
    reduce: Callable[[Tensor, Tensor, int], Tensor]


#: Per-class aggregations (``MODEL.RETCLIP.AGGREGATION``).
AGGREGATIONS: NamedRegistry[Aggregation] = NamedRegistry(
    "retrieval aggregation", "MODEL.RETCLIP.AGGREGATION"
)

Votes = List[Dict[int, List[Dict[str, float]]]]


def minmax_weights(similarities: Tensor) -> Tensor:
    """(N, k) cosine similarities (-inf = missing) -> (N, k) weights in [0, 1], 0 where missing.

    Equal to 1 - minmax(1 - similarity) over each row's present neighbours; rows whose present
    neighbours all share one value give 1 to each of them.
    """
    present = torch.isfinite(similarities)
    sim = similarities.to(torch.float32)
    hi = torch.where(present, sim, torch.full_like(sim, -float("inf"))).amax(1, keepdim=True)
    lo = torch.where(present, sim, torch.full_like(sim, float("inf"))).amin(1, keepdim=True)
    spread = hi - lo
    flat = ~(spread > 0)  # all equal, or no neighbour at all (spread is nan / -inf)
    safe_spread = torch.where(flat, torch.ones_like(spread), spread)
    w = (sim - torch.where(flat, sim, lo.expand_as(sim))) / safe_spread
    w = torch.where(flat.expand_as(sim), torch.ones_like(sim), w)
    return torch.where(present, w.clamp(0.0, 1.0), torch.zeros_like(w))


def retrieval_scores(
    similarities: Tensor,
    neighbour_classes: Tensor,
    num_classes: int,
    aggregation: str = "max",
    rank_offset: float = 2.0,
    neighbour_ids: Optional[Tensor] = None,
    return_votes: bool = False,
) -> Union[Tensor, Tuple[Tensor, Votes]]:
    """Per-class retrieval scores from the top-k neighbours of N queries.

    Args:
        similarities: (N, k) cosine similarities from the index, -inf where no neighbour.
        neighbour_classes: (N, k) int64 test-class index of each neighbour's label, -1 when the
            neighbour is missing or its database class maps to no test class.
        num_classes: K, the number of test classes.
        aggregation: one of :data:`AGGREGATIONS`.
        rank_offset: offset of rank voting, w = 1 / (rank_offset + rank); must be > 0.
        neighbour_ids: optional (N, k) database ids, reported in the votes.
        return_votes: also return, per query, {class: [{"id", "similarity", "weight"}...]} of
            the neighbours that voted for each class (for the demo).

    Returns:
        s_ret: (N, K) float32 (range per aggregation, see the module docstring); with
        ``return_votes`` a tuple (s_ret, votes).
    """
    agg = AGGREGATIONS.get(aggregation)
    if similarities.shape != neighbour_classes.shape or similarities.ndim != 2:
        raise ValueError(
            "similarities and neighbour_classes must both be (N, k), got "
            f"{tuple(similarities.shape)} and {tuple(neighbour_classes.shape)}"
        )
    if rank_offset <= 0:
        raise ValueError(f"rank_offset must be > 0, got {rank_offset}")
    classes = neighbour_classes.to(torch.long)
    if (classes >= num_classes).any() or (classes < -1).any():
        raise ValueError(f"neighbour_classes must lie in [-1, {num_classes}), got other values")
    present = torch.isfinite(similarities)
    weights = agg.weights(similarities, present, rank_offset)
    votes_mask = present & (classes >= 0)
    # column K is a dustbin for neighbours that vote for no test class
    target = torch.where(votes_mask, classes, torch.full_like(classes, num_classes))
    out = agg.reduce(target, weights, num_classes)
    s_ret = out[:, :num_classes]
    if not return_votes:
        return s_ret
    return s_ret, _collect_votes(similarities, classes, weights, votes_mask, neighbour_ids)


def _collect_votes(
    similarities: Tensor,
    classes: Tensor,
    weights: Tensor,
    votes_mask: Tensor,
    neighbour_ids: Optional[Tensor],
) -> Votes:
    votes: Votes = []
    sims, cls, ws, mask = (t.cpu().tolist() for t in (similarities, classes, weights, votes_mask))
    ids = neighbour_ids.cpu().tolist() if neighbour_ids is not None else None
    for i in range(len(sims)):
        per_class: Dict[int, List[Dict[str, float]]] = {}
        for j in range(len(sims[i])):
            if mask[i][j]:
                per_class.setdefault(cls[i][j], []).append(
                    {"id": ids[i][j] if ids is not None else j, "similarity": sims[i][j],
                     "weight": ws[i][j]}
                )
        votes.append(per_class)
    return votes


def _minmax(similarities: Tensor, present: Tensor, rank_offset: float) -> Tensor:
    return minmax_weights(similarities)


def _rank(similarities: Tensor, present: Tensor, rank_offset: float) -> Tensor:
    """1 / (rank_offset + rank) among the present neighbours, nearest first (ties keep order)."""
    n, k = similarities.shape
    sims = similarities.float()
    order = torch.where(present, sims, torch.full_like(sims, -float("inf")))
    positions = torch.arange(k, device=similarities.device).expand(n, k).contiguous()
    ranks = torch.empty_like(positions)
    ranks.scatter_(1, order.argsort(dim=1, descending=True, stable=True), positions)
    return torch.where(
        present, 1.0 / (rank_offset + ranks.float()), torch.zeros(n, k, device=sims.device)
    )


def _empty(target: Tensor, weights: Tensor, num_classes: int) -> Tensor:
    return torch.zeros(
        target.shape[0], num_classes + 1, device=weights.device, dtype=torch.float32
    )


def _max(target: Tensor, weights: Tensor, num_classes: int) -> Tensor:
    out = _empty(target, weights, num_classes)
    return out.scatter_reduce_(1, target, weights, reduce="amax", include_self=True)


def _sum(target: Tensor, weights: Tensor, num_classes: int) -> Tensor:
    return _empty(target, weights, num_classes).scatter_add_(1, target, weights)


def _mean(target: Tensor, weights: Tensor, num_classes: int) -> Tensor:
    counts = _empty(target, weights, num_classes).scatter_add_(1, target, torch.ones_like(weights))
    return _sum(target, weights, num_classes) / counts.clamp_min(1.0)


AGGREGATIONS.register("max")(Aggregation(weights=_minmax, reduce=_max))
AGGREGATIONS.register("mean")(Aggregation(weights=_minmax, reduce=_mean))
AGGREGATIONS.register("sum")(Aggregation(weights=_minmax, reduce=_sum))
AGGREGATIONS.register("rank_vote")(Aggregation(weights=_rank, reduce=_sum))
