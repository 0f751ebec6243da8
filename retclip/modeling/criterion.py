"""Set-prediction losses of Mask2Former, as trained in FC-CLIP.

After Hungarian matching, the loss is cross-entropy over K+1 classes (the no-object class
down-weighted by ``eos_coef``) plus sigmoid BCE and dice (+1 smoothing) between matched masks.
The mask losses are evaluated on points chosen by PointRend's importance sampling (Kirillov et
al., CVPR 2020): ``oversample_ratio * num_points`` random candidates, of which the
``importance_sample_ratio`` most uncertain (smallest |logit|) are kept, the rest uniform. Mask
losses are normalised by the number of ground-truth masks averaged over processes (at least 1).
Losses are returned unweighted; ``weight_dict`` says how the meta-architecture weighs them.
"""

import logging
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from torch import Tensor, nn

from .matcher import HungarianMatcher

__all__ = ["SetCriterion", "dice_loss", "sigmoid_ce_loss"]

logger = logging.getLogger(__name__)

_KNOWN_LOSSES = ("labels", "masks")


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Sum over masks of 1 - (2|X.Y| + 1) / (|X| + |Y| + 1), divided by num_masks.

    inputs: N x P logits; targets: N x P in [0, 1].
    """
    inputs = inputs.sigmoid().flatten(1)
    numerator = 2 * (inputs * targets).sum(-1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Sum over masks of the mean point BCE, divided by num_masks. inputs N x P logits."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def _uncertainty(logits: Tensor) -> Tensor:
    """PointRend uncertainty of R x 1 x ... mask logits: -|logit| (0 on the decision boundary)."""
    return -torch.abs(logits)


def _pad_masks(masks: List[Tensor]) -> Tensor:
    """Stack G_b x H_b x W_b masks of all images into sum(G_b) x H x W, zero-padded bottom/right."""
    height = max(m.shape[-2] for m in masks)
    width = max(m.shape[-1] for m in masks)
    return torch.cat(
        [F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in masks], 0
    )


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SetCriterion(nn.Module):
    """Matching-based classification and point-sampled mask losses.

    Args:
        num_classes: training classes K (the no-object class is K).
        matcher: assigns queries to targets.
        weight_dict: loss name -> weight, including "_i" copies for auxiliary outputs.
        eos_coef: CE weight of the no-object class (NO_OBJECT_WEIGHT).
        losses: subset of ("labels", "masks").
        num_points, oversample_ratio, importance_sample_ratio: point sampling of mask losses.
    """

    @configurable
    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: List[str],
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
    ):
        super().__init__()
        unknown = [name for name in losses if name not in _KNOWN_LOSSES]
        if unknown:
            raise ValueError(
                f"SetCriterion: unknown losses {unknown}; expected a subset of {_KNOWN_LOSSES}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    @classmethod
    def from_config(cls, cfg) -> dict:
        mf = cfg.MODEL.MASK_FORMER
        weight_dict = {
            "loss_ce": mf.CLASS_WEIGHT,
            "loss_mask": mf.MASK_WEIGHT,
            "loss_dice": mf.DICE_WEIGHT,
        }
        if mf.DEEP_SUPERVISION:
            aux = {f"{k}_{i}": v for i in range(mf.DEC_LAYERS - 1) for k, v in weight_dict.items()}
            weight_dict.update(aux)
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": HungarianMatcher(cfg),
            "weight_dict": weight_dict,
            "eos_coef": mf.NO_OBJECT_WEIGHT,
            "losses": ["labels", "masks"],
            "num_points": mf.TRAIN_NUM_POINTS,
            "oversample_ratio": mf.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO,
        }

    @staticmethod
    def _src_permutation_idx(indices: List[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def loss_labels(
        self,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        indices,
        num_masks: float,
    ) -> Dict[str, Tensor]:
        """Weighted CE over K+1 classes; unmatched queries target the no-object class."""
        logits = outputs["pred_logits"].float()
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"SetCriterion: pred_logits has {logits.shape[-1]} classes, expected "
                f"num_classes + 1 = {self.num_classes + 1}"
            )
        idx = self._src_permutation_idx(indices)
        matched = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]).to(
            logits.device
        )
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[idx] = matched
        return {
            "loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        }

    def sample_points(self, src_masks: Tensor) -> Tensor:
        """R x P x 2 training points for R x 1 x h x w mask logits (importance sampling)."""
        return get_uncertain_point_coords_with_randomness(
            src_masks,
            _uncertainty,
            self.num_points,
            self.oversample_ratio,
            self.importance_sample_ratio,
        )

    def loss_masks(
        self,
        outputs: Dict[str, Tensor],
        targets: List[Dict[str, Tensor]],
        indices,
        num_masks: float,
    ) -> Dict[str, Tensor]:
        """Point-sampled sigmoid BCE and dice between matched predicted and target masks."""
        src_idx = self._src_permutation_idx(indices)
        src_masks = outputs["pred_masks"][src_idx]
        if src_masks.shape[0] == 0:
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        target_masks = _pad_masks([t["masks"] for t in targets]).to(src_masks)
        offsets = torch.cumsum(torch.as_tensor([0] + [len(t["masks"]) for t in targets[:-1]]), 0)
        tgt_idx = torch.cat([tgt + offsets[i] for i, (_, tgt) in enumerate(indices)]).to(
            src_masks.device
        )
        target_masks = target_masks[tgt_idx][:, None]
        src_masks = src_masks[:, None]
        with torch.no_grad():
            point_coords = self.sample_points(src_masks)
            point_labels = point_sample(target_masks, point_coords, align_corners=False).squeeze(1)
        point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def get_loss(self, loss: str, outputs, targets, indices, num_masks: float) -> Dict[str, Tensor]:
        if loss == "labels":
            return self.loss_labels(outputs, targets, indices, num_masks)
        if loss == "masks":
            return self.loss_masks(outputs, targets, indices, num_masks)
        raise ValueError(f"SetCriterion: unknown loss {loss!r}; expected one of {_KNOWN_LOSSES}")

    def num_masks(self, targets: List[Dict[str, Tensor]], device: torch.device) -> float:
        """Ground-truth masks in the batch, averaged over processes, at least 1."""
        total = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if _world_size() > 1:
            dist.all_reduce(total)
        return torch.clamp(total / _world_size(), min=1).item()

    def forward(
        self, outputs: Dict[str, object], targets: List[Dict[str, Tensor]]
    ) -> Dict[str, Tensor]:
        """Compute all losses.

        Args:
            outputs: "pred_logits" B x Q x (K+1), "pred_masks" B x Q x h x w and optionally
                "aux_outputs" (list of dicts with the same keys).
            targets: B dicts with "labels" G_b (long) and "masks" G_b x H x W (binary).
        Returns:
            "loss_ce", "loss_mask", "loss_dice" and, per auxiliary output i, the same keys with
            suffix "_i" (unweighted; see ``weight_dict``).
        """
        main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        indices = self.matcher(main, targets)
        num_masks = self.num_masks(targets, main["pred_logits"].device)
        losses: Dict[str, Tensor] = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, main, targets, indices, num_masks))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_indices = self.matcher(aux, targets)
            for loss in self.losses:
                values = self.get_loss(loss, aux, targets, aux_indices, num_masks)
                losses.update({f"{k}_{i}": v for k, v in values.items()})
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )
