"""Grounding DINO boxes for the given class names, turned into masks by SAM box prompts: the
class-aware masks of the paper's database construction (§2.1) and training-free variant (§2.2)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .base import (
    Proposals,
    ProposalSource,
    check_batch_lengths,
    check_image,
)
from .grounding_dino import GroundingDinoDetector
from .sam import SamBoxSegmenter

__all__ = ["GroundingDinoSamProposals"]


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
            segmenter: SAM box-prompt wrapper (one image embedding per image): a
                SamBoxSegmenter (segment-anything) or HFSamBoxSegmenter (transformers).
        """
        self.detector = detector
        self.segmenter = segmenter

    def __call__(
        self,
        image: np.ndarray,
        class_names: Optional[Sequence[str]] = None,
        dataset_dict: Optional[Dict[str, Any]] = None,
    ) -> Proposals:
        return self.propose_batch([image], [class_names], [dataset_dict])[0]

    def propose_batch(
        self,
        images: Sequence[np.ndarray],
        class_names: Sequence[Optional[Sequence[str]]],
        dataset_dicts: Sequence[Optional[Dict[str, Any]]],
    ) -> List[Proposals]:
        """Detect in all images (images of equal input size share a Grounding DINO forward),
        then segment all boxes (SAM embeds several images per forward)."""
        check_batch_lengths(images, class_names, dataset_dicts)
        for image, names in zip(images, class_names):
            check_image(image)
            if names is None:
                raise ValueError("GroundingDinoSamProposals needs class_names to prompt the detector")
        detections = self.detector.detect_batch(images, class_names)
        segmented = self.segmenter.segment_batch(images, [d.boxes for d in detections])
        out = []
        for image, det, (masks, _) in zip(images, detections, segmented):
            if len(det) == 0:
                out.append(Proposals.empty(*image.shape[:2]))
                continue
            out.append(
                Proposals(
                    masks=masks,
                    scores=det.scores.float(),
                    labels=det.labels.long(),
                    boxes=det.boxes.float(),
                )
            )
        return out
