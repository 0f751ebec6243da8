"""The proposal sources by config name: one registry, one naming scheme, for the database builder
(``DATABASE_BUILD.PROPOSALS``) and the training-free model (``MODEL.TRAINING_FREE.PROPOSALS``),
each built from its config's ``SAM`` and ``GROUNDING_DINO`` blocks."""

from __future__ import annotations

from typing import Any

from .base import PROPOSAL_REGISTRY, ProposalSource
from .ground_truth import GroundTruthProposals
from .grounding_dino import GroundingDinoDetector
from .grounding_dino_sam import GroundingDinoSamProposals
from .sam import SamGridProposals, build_box_segmenter, load_sam

__all__ = ["ground_truth", "sam_grid", "grounding_dino_sam"]


@PROPOSAL_REGISTRY.register("ground_truth")
def ground_truth(sam: Any, grounding_dino: Any, *, device: str, batch_size: int) -> ProposalSource:
    """The dataset's panoptic segments (evaluation upper bound; database ablation)."""
    return GroundTruthProposals()


@PROPOSAL_REGISTRY.register("sam_grid")
def sam_grid(sam: Any, grounding_dino: Any, *, device: str, batch_size: int) -> ProposalSource:
    """segment-anything's automatic masks from a point grid (class-agnostic)."""
    if sam.BACKEND != "segment_anything":
        raise ValueError(
            "proposal source 'sam_grid' uses segment-anything's point-grid generator; "
            f"SAM.BACKEND is {sam.BACKEND!r}"
        )
    return SamGridProposals(
        sam=load_sam(sam.MODEL_TYPE, sam.CHECKPOINT, device=device),
        points_per_side=sam.POINTS_PER_SIDE,
        points_per_batch=sam.POINTS_PER_BATCH,
        pred_iou_thresh=sam.PRED_IOU_THRESH,
        stability_score_thresh=sam.STABILITY_SCORE_THRESH,
        box_nms_thresh=sam.BOX_NMS_THRESH,
    )


@PROPOSAL_REGISTRY.register("grounding_dino_sam")
def grounding_dino_sam(
    sam: Any, grounding_dino: Any, *, device: str, batch_size: int
) -> ProposalSource:
    """Grounding DINO boxes for the vocabulary, segmented by SAM box prompts (the paper's)."""
    detector = GroundingDinoDetector.from_pretrained(
        grounding_dino.MODEL,
        device=device,
        box_threshold=grounding_dino.BOX_THRESHOLD,
        text_threshold=grounding_dino.TEXT_THRESHOLD,
        nms_threshold=grounding_dino.NMS_THRESHOLD,
        max_detections=grounding_dino.MAX_DETECTIONS,
        max_images_per_batch=batch_size,
    )
    segmenter = build_box_segmenter(sam, device=device, max_images_per_batch=batch_size)
    return GroundingDinoSamProposals(detector=detector, segmenter=segmenter)
