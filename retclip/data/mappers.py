"""Dataset mappers: training ones chosen by ``INPUT.DATASET_MAPPER_NAME`` through a registry, and
the evaluation mapper :class:`TestDatasetMapper`.

``coco_panoptic_lsj`` is the COCO panoptic large-scale-jitter mapper FC-CLIP trains with:
horizontal flip, resize by a random factor in [MIN_SCALE, MAX_SCALE] of IMAGE_SIZE, then a fixed
IMAGE_SIZE x IMAGE_SIZE crop (the image padded with 128 where it is smaller). Its targets are one
binary mask per non-crowd segment with contiguous class ids.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances

from retclip.utils.image_io import read_image

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "register_dataset_mapper",
    "build_dataset_mapper",
    "COCOPanopticLSJDatasetMapper",
    "TestDatasetMapper",
    "read_image_checked",
    "read_panoptic_ids",
]

#: Training mappers by ``cfg.INPUT.DATASET_MAPPER_NAME`` (names are FC-CLIP's, lowercase with
#: underscores, so a dict keyed by name rather than detectron2's class-name Registry). An entry is
#: a class called as ``Mapper(cfg, is_train=True)`` whose instances turn a detectron2 dataset dict
#: into the model's input dict (``image`` CHW uint8 tensor, ``instances`` with ``gt_classes`` and
#: ``gt_masks``).
DATASET_MAPPER_REGISTRY: Dict[str, Callable[..., Any]] = {}


def register_dataset_mapper(name: str) -> Callable[[type], type]:
    """Class decorator adding a mapper to :data:`DATASET_MAPPER_REGISTRY` under ``name``."""

    def deco(cls: type) -> type:
        if name in DATASET_MAPPER_REGISTRY:
            raise KeyError(f"dataset mapper {name!r} is already registered")
        DATASET_MAPPER_REGISTRY[name] = cls
        return cls

    return deco


def build_dataset_mapper(cfg: Any, is_train: bool = True) -> Any:
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``; an unknown name lists the known ones."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPER_REGISTRY:
        known = sorted(DATASET_MAPPER_REGISTRY)
        raise KeyError(f"INPUT.DATASET_MAPPER_NAME {name!r} is not registered; known mappers: {known}")
    return DATASET_MAPPER_REGISTRY[name](cfg, is_train=is_train)


def read_image_checked(path: str, image_format: str) -> np.ndarray:
    """The project's one image reader (:func:`retclip.utils.image_io.read_image`: EXIF, 16-bit and
    palette modes handled, errors naming the file) for the mappers."""
    return read_image(path, format=image_format)


def read_panoptic_ids(path: str, segments_info: List[Dict[str, Any]]) -> np.ndarray:
    """Read an RGB-encoded panoptic PNG (H, W, 3 uint8), checking its ids against the JSON.

    Raises:
        ValueError: naming the file and the ids present in the PNG but absent from
            ``segments_info`` (0 is void and always allowed).
    """
    from panopticapi.utils import rgb2id

    rgb = read_image_checked(path, "RGB")
    known = {int(s["id"]) for s in segments_info}
    unknown = sorted(int(i) for i in np.unique(rgb2id(rgb)) if i != 0 and int(i) not in known)
    if unknown:
        raise ValueError(
            f"panoptic annotation {path} contains segment id(s) {unknown[:10]} that are not in its "
            f"segments_info in the JSON (known ids: {sorted(known)[:10]}...)"
        )
    return rgb


class TestDatasetMapper:
    """Evaluation inputs as detectron2's ``DatasetMapper(cfg, is_train=False)`` makes them (the
    image resized by ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST), "height"/"width" kept for
    the output size, annotations dropped; the ground-truth "sem_seg" it also decodes is not read:
    evaluators load ground truth themselves), but read with the project's one image reader, so an
    evaluation image that is 16-bit, palette or EXIF-rotated is converted as in training and in
    the demos, and an unreadable one is named."""

    def __init__(self, cfg: Any) -> None:
        self.augmentation = T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice"
        )
        self.image_format = cfg.INPUT.FORMAT

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        self.augmentation(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict.pop("annotations", None)  # as detectron2's test mapper: evaluators read
        dataset_dict.pop("sem_seg_file_name", None)  # the ground truth themselves
        return dataset_dict


@register_dataset_mapper("coco_panoptic_lsj")
class COCOPanopticLSJDatasetMapper:
    """COCO panoptic large-scale jitter (LSJ) mapper for training mask-classification models.

    Output dict: the input dict without annotation paths, plus ``image`` (3 x S x S uint8 tensor,
    S = IMAGE_SIZE) and ``instances`` (``gt_classes`` int64 (N,), ``gt_masks`` BitMasks (N, S, S),
    ``gt_boxes``) for the N non-crowd segments that survive the crop.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List[Any], image_format: str) -> None:
        if not is_train:
            raise ValueError(
                "coco_panoptic_lsj is a training mapper; use detectron2's DatasetMapper for testing"
            )
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        logger.info("coco_panoptic_lsj augmentations: %s", augmentations)

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool = True) -> Dict[str, Any]:
        size = cfg.INPUT.IMAGE_SIZE
        augs: List[Any] = []
        if cfg.INPUT.RANDOM_FLIP != "none":
            augs.append(
                T.RandomFlip(
                    horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                    vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
                )
            )
        augs += [
            T.ResizeScale(
                min_scale=cfg.INPUT.MIN_SCALE,
                max_scale=cfg.INPUT.MAX_SCALE,
                target_height=size,
                target_width=size,
            ),
            T.FixedSizeCrop(crop_size=(size, size), pad_value=128.0),
        ]
        return {"is_train": is_train, "augmentations": augs, "image_format": cfg.INPUT.FORMAT}

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        if "pan_seg_file_name" not in dataset_dict:
            raise KeyError(
                f"{dataset_dict['file_name']}: coco_panoptic_lsj needs 'pan_seg_file_name' "
                "(a panoptic dataset)"
            )
        segments_info = dataset_dict.pop("segments_info")
        pan_path = dataset_dict.pop("pan_seg_file_name")
        pan_rgb = read_panoptic_ids(pan_path, segments_info)
        if pan_rgb.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"{pan_path} is {pan_rgb.shape[1::-1]} but its image is {image.shape[1::-1]} (W, H)"
            )

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        # Nearest-neighbour resize of the RGB-encoded ids (as FC-CLIP); padding adds id 0 (void).
        from panopticapi.utils import rgb2id

        pan_ids = rgb2id(transforms.apply_segmentation(pan_rgb)).astype(np.int64)

        h, w = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict.pop("sem_seg_file_name", None)
        dataset_dict.pop("annotations", None)

        classes, masks = [], []
        for seg in segments_info:
            if seg.get("iscrowd", 0):
                continue
            mask = pan_ids == seg["id"]
            if mask.any():
                classes.append(int(seg["category_id"]))
                masks.append(mask)
        instances = Instances((h, w))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        if masks:
            gt_masks = BitMasks(torch.from_numpy(np.stack(masks)))
        else:
            gt_masks = BitMasks(torch.zeros((0, h, w), dtype=torch.bool))
        instances.gt_masks = gt_masks
        instances.gt_boxes = gt_masks.get_bounding_boxes() if masks else Boxes(torch.zeros((0, 4)))
        dataset_dict["instances"] = instances
        return dataset_dict
