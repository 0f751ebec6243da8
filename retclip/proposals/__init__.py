"""Mask proposal sources (ground truth, SAM point grid, Grounding DINO -> SAM) behind one call
signature and one registry, shared by the database builder and the training-free model."""

from .base import (
    PROPOSAL_REGISTRY,
    Proposals,
    ProposalSource,
    build_proposal_source,
    masks_to_boxes,
)
from .build import grounding_dino_sam, ground_truth, sam_grid  # registers the sources
from .grounding_dino import Detections, GroundingDinoDetector
from .grounding_dino_sam import GroundingDinoSamProposals
from .ground_truth import GroundTruthProposals
from .sam import SAM_BACKENDS, SamBoxSegmenter, SamGridProposals, build_box_segmenter, load_sam
from .sam_hf import HFSamBoxSegmenter

__all__ = [
    "PROPOSAL_REGISTRY",
    "Proposals",
    "ProposalSource",
    "build_proposal_source",
    "masks_to_boxes",
    "Detections",
    "GroundingDinoDetector",
    "GroundingDinoSamProposals",
    "GroundTruthProposals",
    "SamBoxSegmenter",
    "HFSamBoxSegmenter",
    "SamGridProposals",
    "load_sam",
    "build_box_segmenter",
    "SAM_BACKENDS",
]
