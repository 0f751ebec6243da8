"""SAM (segment-anything) as a mask source: box prompts (all boxes of an image decoded in one
batch over a single image embedding) and the automatic point-grid generator."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import PROPOSAL_REGISTRY, Proposals, ProposalSource, check_image

logger = logging.getLogger(__name__)

__all__ = ["load_sam", "SamBoxSegmenter", "SamGridProposals"]


def load_sam(model_type: str, checkpoint: str, device: str = "cpu") -> torch.nn.Module:
    """Build SAM ``model_type`` ("vit_b", "vit_l", "vit_h") and load a local checkpoint.

    The weights load with ``torch.load(weights_only=True)`` (the released ``.pth`` files hold
    only tensors). ``checkpoint=""`` keeps random weights (tests, speed measurements).
    ``model_type="tiny"`` is the test-only model of :mod:`retclip.proposals.testing`.
    """
    from segment_anything import sam_model_registry

    if model_type == "tiny":
        from .testing import build_tiny_sam

        sam = build_tiny_sam()
    elif model_type not in sam_model_registry:
        valid = sorted(k for k in sam_model_registry if k != "default") + ["tiny"]
        raise KeyError(f"unknown SAM model type {model_type!r}; valid: {valid}")
    else:
        sam = sam_model_registry[model_type](checkpoint=None)
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
    else:
        logger.warning("SAM %s has random weights (no checkpoint given)", model_type)
    return sam.to(device).eval()


class SamBoxSegmenter:
    """Masks for box prompts: one image-encoder forward per image, all boxes in one decoder batch.

    Uses segment-anything's ``SamPredictor`` (``set_image`` once, ``predict_torch`` on the boxes).
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        *,
        multimask_output: bool = False,
        max_boxes_per_batch: int = 256,
    ) -> None:
        """
        Args:
            sam: a ``segment_anything.modeling.Sam``.
            multimask_output: ask SAM for 3 masks per box and keep the one with the best
                predicted IoU (False: SAM's single-mask output, the usual choice for boxes).
            max_boxes_per_batch: decoder batch size limit (memory), not a per-image cap.
        """
        from segment_anything import SamPredictor

        if max_boxes_per_batch < 1:
            raise ValueError(f"max_boxes_per_batch must be >= 1, got {max_boxes_per_batch}")
        self.sam = sam
        self.predictor = SamPredictor(sam)
        self.multimask_output = multimask_output
        self.max_boxes_per_batch = max_boxes_per_batch

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes: Tensor) -> tuple:
        """Segment the boxes of one image.

        Args:
            image: H x W x 3 uint8 RGB.
            boxes: N x 4 XYXY in pixels of ``image``.
        Returns:
            (masks N x H x W bool, predicted IoU N float). N = 0 runs no forward.
        """
        check_image(image)
        h, w = image.shape[:2]
        if boxes.numel() == 0:
            return torch.zeros((0, h, w), dtype=torch.bool), torch.zeros(0)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be N x 4 XYXY, got {tuple(boxes.shape)}")
        self.predictor.set_image(image, image_format="RGB")
        device = self.predictor.device
        prompts = self.predictor.transform.apply_boxes_torch(boxes.float().to(device), (h, w))
        masks, ious = [], []
        for start in range(0, len(prompts), self.max_boxes_per_batch):
            m, iou, _ = self.predictor.predict_torch(
                None,
                None,
                boxes=prompts[start : start + self.max_boxes_per_batch],
                multimask_output=self.multimask_output,
            )
            best = iou.argmax(dim=1)
            rows = torch.arange(len(best), device=best.device)
            masks.append(m[rows, best].cpu())
            ious.append(iou[rows, best].float().cpu())
        self.predictor.reset_image()
        return torch.cat(masks).bool(), torch.cat(ious)


@PROPOSAL_REGISTRY.register()
class SamGridProposals(ProposalSource):
    """Class-agnostic masks from SAM prompted with a regular point grid
    (segment-anything's ``SamAutomaticMaskGenerator``); labels are None."""

    def __init__(
        self,
        *,
        sam: torch.nn.Module,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
        min_mask_region_area: int = 0,
    ) -> None:
        """
        Args:
            sam: a ``segment_anything.modeling.Sam``.
            points_per_side: the grid has points_per_side^2 point prompts.
            points_per_batch: prompts decoded together.
            pred_iou_thresh: drop masks whose predicted IoU is below this.
            stability_score_thresh: drop masks whose stability score is below this.
            box_nms_thresh: IoU threshold of the box NMS between masks.
            min_mask_region_area: remove small holes/islands below this area (needs OpenCV).
        """
        from segment_anything import SamAutomaticMaskGenerator

        if points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
        self.generator = SamAutomaticMaskGenerator(
            sam,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            box_nms_thresh=box_nms_thresh,
            min_mask_region_area=min_mask_region_area,
        )

    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray,
        class_names: Optional[Sequence[str]] = None,
        dataset_dict: Optional[Dict[str, Any]] = None,
    ) -> Proposals:
        check_image(image)
        records = self.generator.generate(image)
        if not records:
            return Proposals.empty(*image.shape[:2], with_labels=False)
        masks = torch.from_numpy(np.stack([r["segmentation"] for r in records])).bool()
        xywh = torch.tensor([r["bbox"] for r in records], dtype=torch.float32)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        scores = torch.tensor([r["predicted_iou"] for r in records], dtype=torch.float32)
        return Proposals(masks=masks, scores=scores, labels=None, boxes=boxes)
