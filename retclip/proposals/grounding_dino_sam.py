"""Grounding DINO boxes for the given class names, turned into masks by SAM box prompts: the
class-aware masks of the paper's database construction (§2.1) and training-free variant (§2.2)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from .base import PROPOSAL_REGISTRY, Proposals, ProposalSource, check_image
from .grounding_dino import GroundingDinoDetector
from .sam import SamBoxSegmenter

__all__ = ["GroundingDinoSamProposals"]


@PROPOSAL_REGISTRY.register()
class GroundingDinoSamProposals(ProposalSource):
    """Detect the named classes, segment every box with SAM; the detector's class is the hint.

    Scores are the detector's box confidences. An image without detections gives empty
    proposals and runs no SAM forward.
    """

    needs_class_names = True

    def __init__(self, *, detector: GroundingDinoDetector, segmenter: SamBoxSegmenter) -> None:
        """
        Args:
            detector: Grounding DINO wrapper (thresholds, prompt chunking).
            segmenter: SAM box-prompt wrapper (one image embedding per image).
        """
        self.detector = detector
        self.segmenter = segmenter

    def __call__(
        self,
        image: np.ndarray,
        class_names: Optional[Sequence[str]] = None,
        dataset_dict: Optional[Dict[str, Any]] = None,
    ) -> Proposals:
        check_image(image)
        if class_names is None:
            raise ValueError("GroundingDinoSamProposals needs class_names to prompt the detector")
        h, w = image.shape[:2]
        detections = self.detector(image, class_names)
        if len(detections) == 0:
            return Proposals.empty(h, w)
        masks, _ = self.segmenter(image, detections.boxes)
        return Proposals(
            masks=masks,
            scores=detections.scores.float(),
            labels=detections.labels.long(),
            boxes=detections.boxes.float(),
        )
