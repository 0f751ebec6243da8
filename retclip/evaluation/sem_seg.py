"""mIoU with detectron2's SemSegEvaluator, plus mIoU over seen and unseen classes.

mIoU formula: we report the mean IoU over classes that have ground truth in the evaluated set
(detectron2 after commit f3c1bc19, the version FC-CLIP's numbers come from). detectron2 v0.6
divides the same sum by the number of classes with ground truth *or* predictions, which is lower
whenever a class is predicted but absent from the ground truth; that value is kept as
``mIoU_d2v06`` for comparison. The two agree on ADE20k-150 val (every class has ground truth).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import numpy as np
from detectron2.evaluation import SemSegEvaluator

logger = logging.getLogger(__name__)

__all__ = ["SemSegSplitEvaluator", "miou_from_confusion"]


def miou_from_confusion(conf: np.ndarray, classes: Optional[np.ndarray] = None) -> float:
    """Mean IoU over classes with ground truth.

    Args:
        conf: (K+1, K+1) confusion matrix, rows = prediction, columns = ground truth, last row /
            column = ignore (detectron2's layout).
        classes: optional bool (K,) subset of classes to average over.
    Returns:
        mIoU in [0, 1]; NaN when no class of the subset has ground truth.
    """
    tp = conf.diagonal()[:-1].astype(np.float64)
    pos_gt = conf[:-1, :-1].sum(axis=0).astype(np.float64)
    pos_pred = conf[:-1, :-1].sum(axis=1).astype(np.float64)
    valid = pos_gt > 0
    if classes is not None:
        valid &= np.asarray(classes, dtype=bool)
    if not valid.any():
        return float("nan")
    iou = tp[valid] / (pos_gt[valid] + pos_pred[valid] - tp[valid])
    return float(iou.mean())


class SemSegSplitEvaluator(SemSegEvaluator):
    """SemSegEvaluator whose mIoU follows the fixed formula and that adds mIoU_seen/mIoU_unseen.

    Args:
        dataset_name: registered dataset with ``sem_seg_file_name`` per image.
        seen_classes: per contiguous class id, whether it was seen in training (``None``: no split).
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        seen_classes: Optional[Sequence[bool]] = None,
    ) -> None:
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        if seen_classes is not None and len(seen_classes) != self._num_classes:
            raise ValueError(
                f"seen_classes has {len(seen_classes)} entries but {dataset_name!r} has {self._num_classes} classes"
            )
        self._seen = None if seen_classes is None else np.asarray(seen_classes, dtype=bool)

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        results = super().evaluate()
        if results is None:  # not the main process
            return None
        res = results["sem_seg"]
        res["mIoU_d2v06"] = res["mIoU"]
        res["mIoU"] = 100 * miou_from_confusion(self._conf_matrix)
        if self._seen is not None:
            res["mIoU_seen"] = 100 * miou_from_confusion(self._conf_matrix, self._seen)
            res["mIoU_unseen"] = 100 * miou_from_confusion(self._conf_matrix, ~self._seen)
        logger.info(
            "mIoU %.2f (seen %s, unseen %s)",
            res["mIoU"],
            f"{res['mIoU_seen']:.2f}" if "mIoU_seen" in res else "-",
            f"{res['mIoU_unseen']:.2f}" if "mIoU_unseen" in res else "-",
        )
        return OrderedDict({"sem_seg": res})
