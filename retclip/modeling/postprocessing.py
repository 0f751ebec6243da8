"""Per-image outputs of mask-classification models in detectron2's format (Mask2Former rules).

Inputs are one image's class log-probabilities ``mask_cls`` (Q, K+1), void last, and mask logits
``mask_pred`` (Q, H, W) already at the output resolution. FC-CLIP passes ``log(probs + 1e-8)``
as ``mask_cls``; a softmax of it gives back the ensembled probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import (
    AbstractSet,
    Any,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.memory import retry_if_cuda_oom


@dataclass(frozen=True)
class PostprocessSettings:
    """What post-processing produces and how (the model's settings; the score cache records
    them so a sweep post-processes exactly as the model did).

    Attributes:
        semantic_on / panoptic_on / instance_on: which outputs to produce.
        object_mask_threshold, overlap_threshold: panoptic thresholds (FC-CLIP: 0.0 / 0.8).
        sem_seg_postprocess_before_inference: resize masks to the output size before inference
            (forced on when panoptic or instance output is on, as in FC-CLIP).
        topk: detections per image for instance output.
        thing_ids: contiguous ids of thing classes.
    """

    semantic_on: bool
    panoptic_on: bool
    instance_on: bool
    object_mask_threshold: float
    overlap_threshold: float
    sem_seg_postprocess_before_inference: bool
    topk: int
    thing_ids: FrozenSet[int]

    def to_dict(self) -> Dict[str, Any]:
        """JSON form (the score-cache manifest records the model's settings this way)."""
        return {
            "semantic_on": self.semantic_on,
            "panoptic_on": self.panoptic_on,
            "instance_on": self.instance_on,
            "object_mask_threshold": self.object_mask_threshold,
            "overlap_threshold": self.overlap_threshold,
            "sem_seg_postprocess_before_inference": self.sem_seg_postprocess_before_inference,
            "topk": self.topk,
            "thing_ids": sorted(int(i) for i in self.thing_ids),
        }

    @classmethod
    def from_dict(cls, pp: Mapping[str, Any]) -> "PostprocessSettings":
        """Inverse of :meth:`to_dict`."""
        return cls(
            semantic_on=bool(pp["semantic_on"]),
            panoptic_on=bool(pp["panoptic_on"]),
            instance_on=bool(pp["instance_on"]),
            object_mask_threshold=float(pp["object_mask_threshold"]),
            overlap_threshold=float(pp["overlap_threshold"]),
            sem_seg_postprocess_before_inference=bool(pp["sem_seg_postprocess_before_inference"]),
            topk=int(pp["topk"]),
            thing_ids=frozenset(int(i) for i in pp["thing_ids"]),
        )


#: Side of the square tiles over which :class:`MaskProbabilities` keeps each query's smallest and
#: largest mask probability (the panoptic winner search skips queries that cannot win a tile).
WINNER_TILE = 32


def _tile_reduce(x: torch.Tensor, reduce) -> torch.Tensor:
    """(Q, H, W) -> (Q, th, tw): ``reduce`` over ``WINNER_TILE`` bands of rows, then columns."""
    t = WINNER_TILE

    def bands(y: torch.Tensor, dim: int) -> torch.Tensor:
        n = y.shape[dim]
        full = n // t * t
        parts = []
        if full:
            shape = list(y.shape)
            shape[dim : dim + 1] = [n // t, t]
            parts.append(reduce(y.narrow(dim, 0, full).reshape(shape), dim=dim + 1))
        if full < n:
            parts.append(reduce(y.narrow(dim, full, n - full), dim=dim, keepdim=True))
        return torch.cat(parts, dim)

    return bands(bands(x, 1), 2)


class PostprocessBuffers:
    """Memory that post-processing's whole-image tensors (upsampled mask logits, their resize to
    the output size, mask probabilities) are written into, reused from image to image.

    A sweep post-processes every cached image in one process. On CPU a fresh tensor of that size
    (ConvNeXt-L, 250 queries at 800 x 1088: 0.87 GB) costs more in first-touch page faults than
    the operator itself: the upsample takes 0.97 s into fresh memory and 0.41 s into touched
    memory, the sigmoid 0.74 s and 0.25 s. The same operators write into the buffers (their
    ``out=`` forms), so the values are those of fresh tensors. A tensor handed out stays valid
    until its name is asked for again, i.e. until the next image.
    """

    def __init__(self) -> None:
        self._flat: Dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor of ``shape`` with ``like``'s dtype and device (contents undefined),
        in the memory kept under ``name`` (grown when too small)."""
        shape = tuple(int(n) for n in shape)
        numel = math.prod(shape)
        flat = self._flat.get(name)
        if (
            flat is None
            or flat.numel() < numel
            or flat.dtype != like.dtype
            or flat.device != like.device
        ):
            flat = self._flat[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return flat[:numel].view(shape)


class MaskProbabilities:
    """The parts of post-processing that depend on the mask logits only: their sigmoid, each
    query's own-mask area, per-tile probability bounds, the instance binarisations and the mean
    probability inside them (each computed on first use, binarisations query by query). One
    image's outputs (semantic, panoptic, instances), or a sweep's grid points over one image,
    share them instead of recomputing whole-image passes per call: only what depends on the class
    scores is left per call.

    Args:
        mask_pred: (Q, H, W) mask logits.
        buffers: write the probabilities into these (a sweep's, reused per image) instead of
            fresh memory; the values are the same.
    """

    def __init__(
        self, mask_pred: torch.Tensor, buffers: Optional[PostprocessBuffers] = None
    ) -> None:
        self.logits = mask_pred
        if buffers is None:
            self.prob = mask_pred.sigmoid()
        else:
            self.prob = torch.sigmoid(
                mask_pred, out=buffers.take("probabilities", mask_pred.shape, mask_pred)
            )
        self._positive: Dict[int, torch.Tensor] = {}
        self._inside: Dict[int, torch.Tensor] = {}

    @cached_property
    def own_area(self) -> torch.Tensor:
        """(Q,) int32 pixels of each query's own mask (counted query by query: one mask at a
        time stays in cache, which is faster on CPU than one pass over (Q, H, W))."""
        if self.prob.is_cuda:  # one kernel; a per-query loop would synchronise per query
            return (self.prob >= 0.5).flatten(1).sum(1, dtype=torch.int32)
        counts = [int((mask >= 0.5).sum()) for mask in self.prob]
        return torch.tensor(counts, dtype=torch.int32)

    @cached_property
    def tile_bounds(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Q, th, tw) smallest and largest probability of each query over each
        ``WINNER_TILE``-square tile (edge tiles partial)."""
        return _tile_reduce(self.prob, torch.amin), _tile_reduce(self.prob, torch.amax)

    def positive(self, queries: Sequence[int]) -> torch.Tensor:
        """(N, H, W) bool: logit > 0, the instance masks of ``queries``. Each query's mask is
        made once, on first use: instance output and a sweep's grid points ask for the top-k
        queries only, which are usually far fewer than Q."""
        queries = [int(q) for q in queries]
        if self.logits.is_cuda:  # one kernel
            return self.logits[queries] > 0
        for q in queries:
            if q not in self._positive:
                self._positive[q] = self.logits[q] > 0
        if not queries:
            return torch.zeros((0, *self.logits.shape[1:]), dtype=torch.bool)
        return torch.stack([self._positive[q] for q in queries])

    def summaries(self, panoptic: bool, instances: bool) -> Dict[str, torch.Tensor]:
        """The per-query values post-processing derives from whole-image passes, for a score
        cache to keep (a sweep then skips those passes; :meth:`restore` takes them back): with
        ``panoptic`` "own_area" (Q,) int32, "tile_low" / "tile_high" (Q, th, tw) and
        "tile_size" (the :attr:`tile_bounds`), with ``instances`` "inside" (Q,): :meth:`inside`
        of every query, each computed alone as instance output computes it."""
        out: Dict[str, torch.Tensor] = {}
        if panoptic:
            low, high = self.tile_bounds
            out.update(
                own_area=self.own_area,
                tile_low=low,
                tile_high=high,
                tile_size=torch.tensor(WINNER_TILE),
            )
        if instances:
            out["inside"] = self.inside(torch.arange(self.prob.shape[0]))
        return out

    def restore(self, summaries: Mapping[str, torch.Tensor], where: str = "summaries") -> None:
        """Take back values of :meth:`summaries` (of these masks) instead of computing them.
        Tile bounds of another ``WINNER_TILE`` are left to be recomputed; a value of the wrong
        shape is a ValueError naming ``where`` and the field."""
        q, h, w = self.prob.shape
        th, tw = -(-h // WINNER_TILE), -(-w // WINNER_TILE)
        expected = {"own_area": (q,), "inside": (q,)}
        if "tile_size" in summaries and int(summaries["tile_size"]) == WINNER_TILE:
            expected.update({"tile_low": (q, th, tw), "tile_high": (q, th, tw)})
        for name, shape in expected.items():
            if name in summaries and tuple(summaries[name].shape) != shape:
                raise ValueError(
                    f"{where}: {name} has shape {tuple(summaries[name].shape)}, masks of shape "
                    f"{(q, h, w)} need {shape}"
                )
        device = self.prob.device
        if "own_area" in summaries:
            self.__dict__["own_area"] = summaries["own_area"].to(device)
        if "tile_low" in expected and "tile_low" in summaries and "tile_high" in summaries:
            self.__dict__["tile_bounds"] = (
                summaries["tile_low"].to(device),
                summaries["tile_high"].to(device),
            )
        if "inside" in summaries:
            self._inside.update(enumerate(summaries["inside"].to(device).unbind(0)))

    def inside(self, queries: torch.Tensor) -> torch.Tensor:
        """(N,) mean probability inside the instance masks of ``queries`` (the instance score
        factor). Each query's value is computed once, alone, so it does not depend on which
        other queries are asked for with it."""
        values = []
        for q in queries.tolist():
            if q not in self._inside:
                positive = self.positive([q])[0]
                self._inside[q] = (self.prob[q] * positive).sum() / (positive.sum() + 1e-6)
            values.append(self._inside[q])
        if not values:
            return self.prob.new_zeros(0)
        return torch.stack(values)


def _probabilities(
    mask_pred: torch.Tensor, mask_prob: Optional[MaskProbabilities]
) -> MaskProbabilities:
    if mask_prob is None:
        return MaskProbabilities(mask_pred)
    if mask_prob.prob.shape != mask_pred.shape:
        raise ValueError(
            f"mask_prob is for masks of shape {tuple(mask_prob.prob.shape)}, "
            f"mask_pred has {tuple(mask_pred.shape)}"
        )
    return mask_prob


def semantic_inference(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, mask_prob: Optional[MaskProbabilities] = None
) -> torch.Tensor:
    """Per-class score maps: Σ_q p(class | q) · sigmoid(mask_q).

    Args:
        mask_cls: (Q, K+1) logits; mask_pred: (Q, H, W) mask logits.
        mask_prob: ``MaskProbabilities(mask_pred)`` if already computed.
    Returns:
        (K, H, W) float scores (detectron2's ``sem_seg``).
    """
    probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", probs, _probabilities(mask_pred, mask_prob).prob)


def first_argmax(rows: Iterable[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(rows).argmax(0)`` (ties to the lowest index) as a running maximum: the same
    comparisons, one pass per row over contiguous memory, several times faster on CPU than
    ``argmax`` over dim 0. ``rows`` yields equally shaped tensors; each is read before the next
    is asked for, so a generator may reuse one buffer. Values must not be NaN."""
    rows = iter(rows)
    best = next(rows).clone()
    winner = torch.zeros(best.shape, dtype=torch.int32, device=best.device)
    for k, value in enumerate(rows, start=1):
        winner.masked_fill_(value > best, k)  # strictly greater: a tie keeps the lower index
        torch.maximum(best, value, out=best)
    return winner.long()


def _first_argmax(scores: torch.Tensor, prob: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``(scores[:, None, None] * prob[queries]).argmax(0)`` without the (n, H, W) product."""
    rows = queries.tolist()
    buffer = torch.empty(prob.shape[1:], dtype=prob.dtype, device=prob.device)
    return first_argmax(torch.mul(prob[r], scores[k], out=buffer) for k, r in enumerate(rows))


def winning_queries(
    scores: torch.Tensor, queries: torch.Tensor, mask_prob: MaskProbabilities
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, ``(scores[:, None, None] * mask_prob.prob[queries]).argmax(0)`` (the panoptic
    competition; ties to the lowest index) and whether the winner's own probability is >= 0.5.

    Computed tile by tile over the queries that can win there: float products are monotone, so a
    query whose score times its largest probability in a tile is below the largest score times
    smallest probability of any query cannot reach, nor tie, the winning value at any pixel of
    the tile. The others keep their order, so the argmax (values and ties) is the full one.
    Where most queries can win most tiles (diffuse masks) the whole-image argmax is taken.

    Args:
        scores: (n,) scores of the competing queries; queries: (n,) ascending query indices.
    Returns:
        (H, W) int64 index into ``queries``, (H, W) bool.
    """
    prob = mask_prob.prob
    h, w = prob.shape[-2:]
    low, high = mask_prob.tile_bounds
    s = scores.view(-1, 1, 1)
    floor = (s * low[queries]).amax(0)
    candidates = (s * high[queries]) >= floor  # (n, th, tw)
    if candidates.float().mean() > 0.5:  # little to skip: one whole-image pass is cheaper
        winner = _first_argmax(scores, prob, queries)
        at_winner = prob.flatten(1).gather(0, queries[winner].view(1, -1)).view(h, w)
        return winner, at_winner >= 0.5
    winner = torch.empty((h, w), dtype=torch.int64, device=prob.device)
    own = torch.empty((h, w), dtype=torch.bool, device=prob.device)
    for ty, tx in torch.nonzero(candidates.any(0)).tolist():
        ys = slice(ty * WINNER_TILE, min(h, (ty + 1) * WINNER_TILE))
        xs = slice(tx * WINNER_TILE, min(w, (tx + 1) * WINNER_TILE))
        index = candidates[:, ty, tx].nonzero()[:, 0]
        tile = prob[queries[index], ys, xs]
        best = (s[index] * tile).argmax(0)
        winner[ys, xs] = index[best]
        own[ys, xs] = tile.gather(0, best[None])[0] >= 0.5
    return winner, own


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    object_mask_threshold: float,
    overlap_threshold: float,
    thing_ids: AbstractSet[int],
    mask_prob: Optional[MaskProbabilities] = None,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Panoptic segments from query masks (Mask2Former's rule, FC-CLIP's thresholds 0.0 / 0.8).

    Queries whose best class is not void and scores above ``object_mask_threshold`` compete per
    pixel by score · sigmoid(mask); a query keeps the pixels it wins inside its own mask
    (sigmoid >= 0.5) unless that is less than ``overlap_threshold`` of its mask. Segments of one
    stuff class are merged.

    Args:
        mask_cls: (Q, K+1) logits, void last; mask_pred: (Q, H, W) mask logits.
        thing_ids: contiguous class ids that are things.
        mask_prob: ``MaskProbabilities(mask_pred)`` if already computed.
    Returns:
        (H, W) int32 segment ids (0 = no segment) and ``segments_info`` dicts
        {"id", "isthing", "category_id"} (contiguous category id).
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes = scores[keep], labels[keep]
    mask_prob = _probabilities(mask_pred, mask_prob)
    h, w = mask_pred.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_pred.device)
    segments_info: List[Dict] = []
    n = cur_scores.shape[0]
    if n == 0:
        return panoptic_seg, segments_info
    # The pixels query k wins, those inside its own mask, and their intersection are disjoint
    # across queries, so their areas come from a few whole-image passes (bincounts) instead of a
    # pass per query; the decisions below then use only these counts.
    mask_ids, own_at_winner = winning_queries(cur_scores, keep.nonzero()[:, 0], mask_prob)
    won_areas = torch.bincount(mask_ids.flatten(), minlength=n).tolist()
    own_areas = mask_prob.own_area[keep].tolist()
    kept_areas = torch.bincount(mask_ids[own_at_winner], minlength=n).tolist()
    classes = cur_classes.tolist()
    segment_of_query = [0] * n
    stuff_segment: Dict[int, int] = {}
    segment_id = 0
    for k in range(n):
        pred_class = classes[k]
        isthing = pred_class in thing_ids
        won_area, own_area = won_areas[k], own_areas[k]
        if won_area == 0 or own_area == 0 or kept_areas[k] == 0:
            continue
        if won_area / own_area < overlap_threshold:
            continue
        if not isthing and pred_class in stuff_segment:
            segment_of_query[k] = stuff_segment[pred_class]
            continue
        segment_id += 1
        if not isthing:
            stuff_segment[pred_class] = segment_id
        segment_of_query[k] = segment_id
        segments_info.append(
            {"id": segment_id, "isthing": bool(isthing), "category_id": pred_class}
        )
    lookup = torch.tensor(segment_of_query, dtype=torch.int32, device=mask_pred.device)
    panoptic_seg = torch.where(own_at_winner, lookup[mask_ids], panoptic_seg)
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    topk: int,
    thing_ids: AbstractSet[int],
    things_only: bool,
    mask_prob: Optional[MaskProbabilities] = None,
    mask_tensors: bool = True,
) -> Instances:
    """Top-k (query, class) pairs as instances (boxes are zeros, as in FC-CLIP: no box AP).

    Args:
        mask_cls: (Q, K+1) logits; mask_pred: (Q, H, W) mask logits.
        topk: detections kept (TEST.DETECTIONS_PER_IMAGE), at most Q·K.
        thing_ids: contiguous ids of thing classes.
        things_only: keep only thing classes (FC-CLIP does when panoptic output is on).
        mask_prob: ``MaskProbabilities(mask_pred)`` if already computed.
        mask_tensors: give ``pred_masks``; a sweep scoring masks from per-query RLEs (each
            instance's mask is its query's, ``pred_queries``) skips these (N, H, W) floats.
    Returns:
        ``Instances`` of size (H, W) with pred_masks (N, H, W) float 0/1, pred_boxes (zeros),
        scores = class probability · mean sigmoid inside the mask, pred_classes (N,) int64.
    """
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device).repeat(num_queries)
    k = min(topk, scores.numel())
    top_scores, top_index = scores.flatten().topk(k, sorted=False)
    top_labels = labels[top_index]
    query = torch.div(top_index, num_classes, rounding_mode="floor")
    if things_only:
        ids = torch.tensor(sorted(thing_ids), dtype=top_labels.dtype, device=top_labels.device)
        keep = torch.isin(top_labels, ids)
        top_scores, top_labels, query = top_scores[keep], top_labels[keep], query[keep]
    mask_prob = _probabilities(mask_pred, mask_prob)
    result = Instances(tuple(mask_pred.shape[-2:]))
    if mask_tensors:
        result.pred_masks = mask_prob.positive(query.tolist()).float()
    result.pred_boxes = Boxes(torch.zeros(query.shape[0], 4, device=mask_pred.device))
    result.scores = top_scores * mask_prob.inside(query)
    result.pred_classes = top_labels
    result.pred_queries = query  # which query each instance is (its mask is that query's)
    return result


def output_mask_logits(
    mask_logits: torch.Tensor,
    padded_size: Tuple[int, int],
    image_size: Tuple[int, int],
    height: int,
    width: int,
    settings: PostprocessSettings,
    buffers: Optional[PostprocessBuffers] = None,
) -> torch.Tensor:
    """One image's decoder-resolution mask logits as :func:`image_outputs` takes them.

    Upsampled to the padded input size, then (``settings.sem_seg_postprocess_before_inference``)
    cropped to the image and resized to the output size. The model's forward and the sweep's
    cached masks both go through here.

    Args:
        mask_logits: (Q, h, w) mask logits at the decoder's resolution of the padded input.
        padded_size: (Hp, Wp) of the padded input; image_size: (h, w) of the image inside it.
        height, width: the output size.
        buffers: write the resized masks into these (see :class:`PostprocessBuffers`).
    """
    masks = _resize_bilinear(mask_logits, tuple(padded_size), buffers, "upsampled")
    if settings.sem_seg_postprocess_before_inference:
        masks = retry_if_cuda_oom(crop_and_resize)(
            masks, tuple(image_size), height, width, buffers
        )
    return masks


def _resize_bilinear(
    x: torch.Tensor,
    size: Tuple[int, int],
    buffers: Optional[PostprocessBuffers],
    name: str,
) -> torch.Tensor:
    """(C, h, w) -> (C, *size): ``F.interpolate(x[None], size, mode="bilinear",
    align_corners=False)[0]``; with ``buffers``, the same operator's ``out=`` form into them."""
    if buffers is None:
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    out = buffers.take(name, (1, x.shape[0], *size), x)
    torch.ops.aten.upsample_bilinear2d.out(x[None], list(size), False, None, None, out=out)
    return out[0]


def crop_and_resize(
    result: torch.Tensor,
    image_size: Tuple[int, int],
    height: int,
    width: int,
    buffers: Optional[PostprocessBuffers] = None,
) -> torch.Tensor:
    """detectron2's ``sem_seg_postprocess`` (crop the image out of the padded input, resize
    bilinearly to the output size), with the resize skipped when the sizes already agree: a
    bilinear resize to the same size reads each pixel with weight 1, so it is an exact copy
    (returned as a view of ``result``: later steps read it once, copying it would cost as much).
    With ``buffers`` the resize writes into them (see :class:`PostprocessBuffers`)."""
    h, w = image_size
    if (h, w) == (height, width):
        return result[:, :height, :width]
    if buffers is None:
        return sem_seg_postprocess(result, (h, w), height, width)
    return _resize_bilinear(result[:, :h, :w], (height, width), buffers, "resized")


def image_outputs(
    mask_cls: torch.Tensor,
    masks: torch.Tensor,
    settings: PostprocessSettings,
    image_size: Tuple[int, int],
    height: int,
    width: int,
    mask_prob: Optional[MaskProbabilities] = None,
    instance_mask_tensors: bool = True,
) -> Dict[str, Any]:
    """One image's outputs ("sem_seg", "panoptic_seg", "instances") as FC-CLIP makes them: the
    model's forward and a sweep's recombined scores both end here.

    Args:
        mask_cls: (Q, K+1) class logits, void last.
        masks: (Q, H, W) mask logits: at the output size (height, width) when
            ``settings.sem_seg_postprocess_before_inference``, else at the padded input size.
        image_size: the image's size inside the padded input (before the resize to the output).
        mask_prob: ``MaskProbabilities(masks)`` if already computed (else computed once here
            for all three outputs).
        instance_mask_tensors: see :func:`instance_inference` (``mask_tensors``).
    """
    if mask_prob is None:
        mask_prob = MaskProbabilities(masks)
    if settings.sem_seg_postprocess_before_inference:
        mask_cls = mask_cls.to(masks)
    result: Dict[str, Any] = {}
    if settings.semantic_on:
        sem = semantic_inference(mask_cls, masks, mask_prob)
        if not settings.sem_seg_postprocess_before_inference:
            sem = sem_seg_postprocess(sem, image_size, height, width)
        result["sem_seg"] = sem
    if settings.panoptic_on:
        result["panoptic_seg"] = panoptic_inference(
            mask_cls,
            masks,
            object_mask_threshold=settings.object_mask_threshold,
            overlap_threshold=settings.overlap_threshold,
            thing_ids=settings.thing_ids,
            mask_prob=mask_prob,
        )
    if settings.instance_on:
        result["instances"] = instance_inference(
            mask_cls,
            masks,
            topk=settings.topk,
            thing_ids=settings.thing_ids,
            things_only=settings.panoptic_on,
            mask_prob=mask_prob,
            mask_tensors=instance_mask_tensors,
        )
    return result
