"""Ground-truth masks as proposals: the upper bound of the training-free variant and the
"GT masks instead of detector + SAM" ablation of the database build."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .base import Proposals, ProposalSource, check_image, masks_to_boxes

__all__ = ["GroundTruthProposals", "read_panoptic_segments"]


def read_panoptic_segments(dataset_dict: Dict[str, Any]) -> tuple:
    """Masks and contiguous class ids of the segments of a detectron2 panoptic dataset dict.

    Args:
        dataset_dict: with ``pan_seg_file_name`` (RGB-encoded ids, id = R + 256 G + 256^2 B) and
            ``segments_info`` (dicts with ``id``, ``category_id`` contiguous, optional ``iscrowd``).
    Returns:
        (masks N x H x W bool numpy, category ids N int64 numpy, iscrowd N bool numpy), in
        ``segments_info`` order; segments absent from the PNG are dropped.
    """
    for key in ("pan_seg_file_name", "segments_info"):
        if key not in dataset_dict:
            raise KeyError(
                f"dataset dict of {dataset_dict.get('file_name', '?')} has no {key!r}: not a panoptic dataset"
            )
    path = dataset_dict["pan_seg_file_name"]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"panoptic PNG not found: {path}")
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    masks, cats, crowd = [], [], []
    for seg in dataset_dict["segments_info"]:
        mask = ids == seg["id"]
        if mask.any():
            masks.append(mask)
            cats.append(int(seg["category_id"]))
            crowd.append(bool(seg.get("iscrowd", 0)))
    h, w = ids.shape
    if not masks:
        return np.zeros((0, h, w), bool), np.zeros(0, np.int64), np.zeros(0, bool)
    return np.stack(masks), np.asarray(cats, np.int64), np.asarray(crowd, bool)


class GroundTruthProposals(ProposalSource):
    """One proposal per ground-truth panoptic segment; the label is its contiguous category id.

    Class hints index into the dataset's class list (``stuff_classes`` of its metadata), so
    ``class_names``, if given, must be that list; it is only used to check the ids.
    """

    needs_dataset_dict = True

    def __init__(self, *, include_crowd: bool = True) -> None:
        """
        Args:
            include_crowd: keep ``iscrowd`` segments (they are still pixels of the class).
        """
        self.include_crowd = include_crowd

    def __call__(
        self,
        image: np.ndarray,
        class_names: Optional[Sequence[str]] = None,
        dataset_dict: Optional[Dict[str, Any]] = None,
    ) -> Proposals:
        check_image(image)
        if dataset_dict is None:
            raise ValueError(
                "GroundTruthProposals needs the image's dataset_dict (with pan_seg_file_name)"
            )
        masks, cats, crowd = read_panoptic_segments(dataset_dict)
        if masks.shape[1:] != image.shape[:2]:
            raise ValueError(
                f"panoptic PNG {dataset_dict['pan_seg_file_name']} is {masks.shape[1:]} but the image is {image.shape[:2]}"
            )
        if not self.include_crowd:
            masks, cats = masks[~crowd], cats[~crowd]
        if class_names is not None and len(cats) and int(cats.max()) >= len(class_names):
            raise ValueError(
                f"{dataset_dict['pan_seg_file_name']}: category id {int(cats.max())} outside the {len(class_names)} class names"
            )
        if len(cats) == 0:
            return Proposals.empty(*image.shape[:2])
        mask_t = torch.from_numpy(masks)
        return Proposals(
            masks=mask_t,
            scores=torch.ones(len(cats)),
            labels=torch.from_numpy(cats),
            boxes=masks_to_boxes(mask_t),
        )
