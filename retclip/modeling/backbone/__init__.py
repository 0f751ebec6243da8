"""Backbones registered in detectron2's BACKBONE_REGISTRY."""

from .clip import CLIP, create_clip_model

__all__ = ["CLIP", "create_clip_model"]
