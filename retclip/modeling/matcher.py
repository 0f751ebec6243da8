"""Hungarian matching of predicted masks to ground-truth segments (Mask2Former / FC-CLIP).

The cost of assigning query i to segment j is a weighted sum of the negative predicted probability
of j's class, the sigmoid BCE between the two masks and their dice loss. The mask costs are
evaluated on a set of uniformly random points shared by all pairs of one image (Cheng et al.,
CVPR 2022, sec. 3.3), in float32 with autocast off. The assignment uses scipy's
``linear_sum_assignment``.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

__all__ = ["HungarianMatcher", "batch_dice_cost", "batch_sigmoid_ce_cost"]


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise dice loss (+1 smoothing). inputs N x P logits, targets M x P in [0, 1] -> N x M."""
    inputs = inputs.sigmoid()
    numerator = 2 * torch.einsum("np,mp->nm", inputs, targets)
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise mean sigmoid BCE. inputs N x P logits, targets M x P in [0, 1]. Returns N x M."""
    num_points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    loss = torch.einsum("np,mp->nm", pos, targets) + torch.einsum("np,mp->nm", neg, 1 - targets)
    return loss / num_points


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the matching cost, per image.

    Args:
        cost_class: weight of the class cost (-probability of the target class).
        cost_mask: weight of the point-sampled sigmoid BCE.
        cost_dice: weight of the point-sampled dice loss.
        num_points: random points per image for the mask costs (TRAIN_NUM_POINTS).
    """

    @configurable
    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 0,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @classmethod
    def from_config(cls, cfg) -> dict:
        mf = cfg.MODEL.MASK_FORMER
        return {
            "cost_class": mf.CLASS_WEIGHT,
            "cost_mask": mf.MASK_WEIGHT,
            "cost_dice": mf.DICE_WEIGHT,
            "num_points": mf.TRAIN_NUM_POINTS,
        }

    def sample_points(self, device: torch.device) -> Tensor:
        """1 x P x 2 uniformly random normalised (x, y) points shared by all pairs of an image."""
        return torch.rand(1, self.num_points, 2, device=device)

    def cost_matrix(
        self, pred_logits: Tensor, pred_masks: Tensor, target: Dict[str, Tensor]
    ) -> Tensor:
        """Q x G matching cost of one image.

        Args:
            pred_logits: Q x (K+1) class logits.
            pred_masks: Q x h x w mask logits.
            target: "labels" G (long) and "masks" G x H x W (binary).
        """
        tgt_ids = target["labels"]
        cost_class = -pred_logits.softmax(-1)[:, tgt_ids]
        tgt_masks = target["masks"].to(pred_masks)
        points = self.sample_points(pred_masks.device)
        tgt_points = point_sample(
            tgt_masks[:, None], points.repeat(tgt_masks.shape[0], 1, 1), align_corners=False
        ).squeeze(1)
        out_points = point_sample(
            pred_masks[:, None], points.repeat(pred_masks.shape[0], 1, 1), align_corners=False
        ).squeeze(1)
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            out_points = out_points.float()
            tgt_points = tgt_points.float()
            cost_mask = batch_sigmoid_ce_cost(out_points, tgt_points)
            cost_dice = batch_dice_cost(out_points, tgt_points)
        return (
            self.cost_mask * cost_mask
            + self.cost_class * cost_class.float()
            + self.cost_dice * cost_dice
        )

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]
    ) -> List[Tuple[Tensor, Tensor]]:
        """Match every image of the batch.

        Args:
            outputs: "pred_logits" B x Q x (K+1) and "pred_masks" B x Q x h x w.
            targets: B dicts with "labels" G_b and "masks" G_b x H x W.
        Returns:
            B pairs (query indices, target indices), int64, each of length min(Q, G_b); target j
            of the pair is matched to query i.
        """
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(
                f"HungarianMatcher: {len(targets)} targets for a batch of "
                f"{outputs['pred_logits'].shape[0]}"
            )
        indices = []
        for b, target in enumerate(targets):
            cost = self.cost_matrix(outputs["pred_logits"][b], outputs["pred_masks"][b], target)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
