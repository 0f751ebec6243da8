"""``build_evaluator``: every metric of a dataset from one inference pass.

Panoptic datasets (evaluator types ``coco_panoptic_seg``, ``ade20k_panoptic_seg``) get PQ, mask
AP and mIoU together, as FC-CLIP evaluates them; ``sem_seg`` datasets get mIoU and ``coco``
instance datasets mask AP. PQ and mIoU are also split into classes seen / unseen in training
(the training sets are ``cfg.DATASETS.TRAIN``).
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Optional

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators

from retclip.data.synthetic_datasets import ensure_dataset_files

from .instance_seg import InstanceSegEvaluator
from .panoptic import PanopticEvaluator
from .seen_split import seen_classes_for
from .sem_seg import SemSegSplitEvaluator

logger = logging.getLogger(__name__)

__all__ = ["build_evaluator", "EVALUATOR_TYPES"]

EVALUATOR_TYPES = ("coco_panoptic_seg", "ade20k_panoptic_seg", "sem_seg", "coco")


def build_evaluator(cfg: Any, dataset_name: str, output_dir: Optional[str] = None) -> DatasetEvaluators:
    """Evaluators for ``dataset_name`` according to its ``evaluator_type`` metadata.

    Args:
        cfg: config; reads MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON,
            DATASETS.TRAIN (seen classes), TEST.DETECTIONS_PER_IMAGE and OUTPUT_DIR.
        output_dir: where prediction files go (default ``OUTPUT_DIR/inference``).
    Raises:
        ValueError: an evaluator type outside :data:`EVALUATOR_TYPES`, or a config that turns
            off every metric the dataset supports.
    """
    if output_dir is None:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
    os.makedirs(output_dir, exist_ok=True)
    ensure_dataset_files(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    etype = meta.get("evaluator_type")
    if etype not in EVALUATOR_TYPES:
        raise ValueError(
            f"dataset {dataset_name!r} has evaluator_type {etype!r}; supported: {list(EVALUATOR_TYPES)}"
        )
    test = cfg.MODEL.MASK_FORMER.TEST
    panoptic = etype in ("coco_panoptic_seg", "ade20k_panoptic_seg")
    seen = None
    if panoptic or etype == "sem_seg":
        seen = seen_classes_for(dataset_name, list(cfg.DATASETS.TRAIN))
    evaluators: List[DatasetEvaluator] = []
    if (panoptic or etype == "sem_seg") and test.SEMANTIC_ON and meta.get("sem_seg_root"):
        evaluators.append(
            SemSegSplitEvaluator(dataset_name, distributed=True, output_dir=output_dir, seen_classes=seen)
        )
    if panoptic and test.PANOPTIC_ON:
        evaluators.append(PanopticEvaluator(dataset_name, output_dir, seen_classes=seen))
    if (panoptic and test.INSTANCE_ON and meta.get("json_file")) or etype == "coco":
        evaluators.append(
            InstanceSegEvaluator(dataset_name, output_dir, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)
        )
    if not evaluators:
        raise ValueError(
            f"no evaluator for {dataset_name!r} (type {etype}): MODEL.MASK_FORMER.TEST turns off every "
            "metric it supports (SEMANTIC_ON / PANOPTIC_ON / INSTANCE_ON)"
        )
    return DatasetEvaluators(evaluators)
