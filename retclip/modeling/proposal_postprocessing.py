"""Binary mask proposals + per-proposal class probabilities -> detectron2 outputs.

The training-free model has no mask logits to compete per pixel (Mask2Former's rule): proposals
are hard masks from ground truth, SAM or Grounding DINO -> SAM, and they may overlap (SAM's grid
gives parts inside wholes; boxes of one object detected twice give two near-identical masks).
The rules here, one function per output:

* **panoptic**: each proposal takes its best class and that class's probability as its score
  (times the proposal's own confidence if given). Proposals are painted in descending score
  order (ties: lower index first); a pixel keeps the first proposal painted on it. A proposal
  whose still-free area is below ``overlap_threshold`` of its full area is dropped (as
  Mask2Former drops a query that keeps too little of its mask), and its free pixels stay free for
  later proposals. Proposals scoring at most ``object_score_threshold`` are not painted. Segments
  of one stuff class merge into one segment. Unpainted pixels are 0 (void).
* **semantic**: score of class k at pixel x = sum over proposals covering x of p(k | proposal)
  (Mask2Former's formula with 0/1 masks); pixels no proposal covers score 0 for every class.
* **instance**: the top ``topk`` (proposal, class) pairs by p(class | proposal) (times the
  confidence), thing classes only when ``things_only``; boxes are the masks' tight boxes.
"""

from __future__ import annotations

from typing import AbstractSet, Dict, List, Optional, Tuple

import torch
from detectron2.structures import BitMasks, Boxes, Instances
from torch import Tensor

__all__ = ["proposal_scores", "proposal_panoptic", "proposal_semantic", "proposal_instances"]


def _check(masks: Tensor, probs: Tensor, confidence: Optional[Tensor]) -> None:
    if masks.dim() != 3 or masks.dtype != torch.bool:
        raise ValueError(
            f"masks must be an N x H x W bool tensor, got {masks.dtype} {tuple(masks.shape)}"
        )
    if probs.dim() != 2 or probs.shape[0] != masks.shape[0]:
        raise ValueError(
            f"probs must be N x K with N = {masks.shape[0]} masks, got {tuple(probs.shape)}"
        )
    if confidence is not None and confidence.shape != (masks.shape[0],):
        raise ValueError(
            f"confidence must have shape ({masks.shape[0]},), got {tuple(confidence.shape)}"
        )


def proposal_scores(probs: Tensor, confidence: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Best class and its score per proposal.

    Args:
        probs: N x K class probabilities; confidence: optional N proposal confidences.
    Returns:
        (scores N, labels N): max_k probs (times confidence) and argmax_k probs.
    """
    if probs.shape[1] == 0:
        raise ValueError("probs has no class column (empty vocabulary)")
    scores, labels = probs.max(dim=1)
    if confidence is not None:
        scores = scores * confidence.to(scores)
    return scores, labels


def proposal_panoptic(
    masks: Tensor,
    probs: Tensor,
    *,
    thing_ids: AbstractSet[int],
    overlap_threshold: float,
    object_score_threshold: float = 0.0,
    confidence: Optional[Tensor] = None,
) -> Tuple[Tensor, List[Dict]]:
    """Panoptic segmentation from overlapping binary proposals (rule in the module docstring).

    Args:
        masks: N x H x W bool proposals.
        probs: N x K class probabilities.
        thing_ids: contiguous class ids that are things (others are stuff and merge).
        overlap_threshold: minimum fraction of a proposal's area that must still be free.
        object_score_threshold: proposals scoring at most this are ignored.
        confidence: optional N proposal confidences multiplied into the score.
    Returns:
        (H x W int32 segment ids, 0 = void; ``segments_info`` list of {"id", "isthing",
        "category_id" (contiguous), "score"}).
    """
    _check(masks, probs, confidence)
    h, w = masks.shape[-2:]
    panoptic = torch.zeros((h, w), dtype=torch.int32, device=masks.device)
    segments: List[Dict] = []
    if masks.shape[0] == 0:
        return panoptic, segments
    scores, labels = proposal_scores(probs, confidence)
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    areas = masks.flatten(1).sum(1).tolist()
    painted = torch.zeros((h, w), dtype=torch.bool, device=masks.device)
    stuff_segment: Dict[int, int] = {}
    for n in order:
        score = float(scores[n])
        if score <= object_score_threshold or areas[n] == 0:
            continue
        free = masks[n] & ~painted
        free_area = int(free.sum())
        if free_area == 0 or free_area < overlap_threshold * areas[n]:
            continue
        label = int(labels[n])
        isthing = label in thing_ids
        painted |= free
        if not isthing and label in stuff_segment:
            panoptic[free] = stuff_segment[label]
            continue
        segment_id = len(segments) + 1
        if not isthing:
            stuff_segment[label] = segment_id
        panoptic[free] = segment_id
        segments.append(
            {"id": segment_id, "isthing": bool(isthing), "category_id": label, "score": score}
        )
    return panoptic, segments


def proposal_semantic(masks: Tensor, probs: Tensor) -> Tensor:
    """K x H x W class scores: sum of p(k | proposal) over the proposals covering each pixel."""
    _check(masks, probs, None)
    return torch.einsum("nk,nhw->khw", probs.float(), masks.float())


def proposal_instances(
    masks: Tensor,
    probs: Tensor,
    *,
    topk: int,
    thing_ids: AbstractSet[int],
    things_only: bool,
    confidence: Optional[Tensor] = None,
) -> Instances:
    """Top-k (proposal, class) pairs as detectron2 ``Instances``.

    Args:
        masks: N x H x W bool; probs: N x K.
        topk: pairs kept (TEST.DETECTIONS_PER_IMAGE) before the thing filter.
        thing_ids: contiguous thing class ids; things_only: drop stuff classes.
        confidence: optional N proposal confidences multiplied into the scores.
    Returns:
        ``Instances`` of size (H, W): pred_masks (M, H, W) bool, pred_boxes (tight XYXY),
        scores (M,), pred_classes (M,) int64, highest score first.
    """
    _check(masks, probs, confidence)
    n, k = probs.shape
    pair_scores = probs.float() * (
        confidence.to(probs.device).float()[:, None] if confidence is not None else 1.0
    )
    count = min(int(topk), n * k)
    top_scores, top_index = pair_scores.flatten().topk(count, sorted=True)
    classes = top_index % max(k, 1)
    which = torch.div(top_index, max(k, 1), rounding_mode="floor")
    if things_only:
        ids = torch.tensor(sorted(thing_ids), dtype=classes.dtype, device=classes.device)
        keep = torch.isin(classes, ids)
        top_scores, classes, which = top_scores[keep], classes[keep], which[keep]
    result = Instances(tuple(masks.shape[-2:]))
    chosen = masks[which]
    result.pred_masks = chosen
    result.pred_boxes = (
        BitMasks(chosen).get_bounding_boxes() if len(chosen) else Boxes(torch.zeros((0, 4)))
    )
    result.scores = top_scores
    result.pred_classes = classes.long()
    return result
