"""Checks of detectron2-style model inputs, so bad images fail with a message naming them."""

from __future__ import annotations

from typing import Any, Dict, List

import torch


def _describe(x: Dict[str, Any], index: int) -> str:
    name = x.get("file_name") or x.get("image_id")
    return f"image {index}" + (f" ({name})" if name is not None else "")


def check_batched_inputs(batched_inputs: List[Dict[str, Any]], training: bool) -> None:
    """Raise a clear error for inputs the model cannot take.

    Images must be (3, H, W) RGB tensors with H, W >= 1: grayscale or RGBA conversion belongs
    in the dataset mapper (``detection_utils.read_image(path, format="RGB")`` does it), where the
    colour space is known.

    Raises:
        ValueError: empty batch, wrong image type/shape/channels, missing "instances" in training.
        KeyError: a dict without "image".
    """
    if not isinstance(batched_inputs, (list, tuple)) or len(batched_inputs) == 0:
        raise ValueError("batched_inputs must be a non-empty list of dicts with an 'image' tensor")
    for i, x in enumerate(batched_inputs):
        if "image" not in x:
            raise KeyError(f"{_describe(x, i)} has no 'image' key (keys: {sorted(x)})")
        image = x["image"]
        what = _describe(x, i)
        if not isinstance(image, torch.Tensor):
            raise ValueError(
                f"{what}: 'image' must be a torch.Tensor (3, H, W), got {type(image).__name__}"
            )
        if image.dim() != 3:
            raise ValueError(
                f"{what}: 'image' must be (3, H, W) CHW, got shape {tuple(image.shape)}"
            )
        if image.shape[0] != 3:
            raise ValueError(
                f"{what}: expected 3 RGB channels (CHW), got {image.shape[0]} in shape "
                f"{tuple(image.shape)}; convert grayscale/RGBA to RGB in the mapper, e.g. "
                "detectron2.data.detection_utils.read_image(path, format='RGB')"
            )
        if image.shape[1] < 1 or image.shape[2] < 1:
            raise ValueError(f"{what}: empty image of shape {tuple(image.shape)}")
        if training and "instances" not in x:
            raise ValueError(f"{what}: training needs 'instances' (gt_classes, gt_masks)")
