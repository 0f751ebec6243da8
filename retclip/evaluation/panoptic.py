"""PQ with detectron2's COCOPanopticEvaluator, plus PQ over seen and unseen classes.

Predictions are collected exactly as detectron2 does (RGB PNGs + segments_info); the metric is
panopticapi's: one ``pq_compute_multi_core`` pass gives the per-class statistics, and
``PQStat.pq_average`` averages them over all classes, things, stuff, and the seen / unseen
subsets (classes with no ground truth and no prediction are skipped, as panopticapi does).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence

from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)

__all__ = ["PanopticEvaluator", "panoptic_quality"]


def panoptic_quality(
    gt_json: str,
    pred_annotations: Sequence[Dict[str, Any]],
    gt_folder: str,
    pred_folder: str,
    seen_category_ids: Optional[Sequence[int]] = None,
) -> Dict[str, Dict[str, float]]:
    """panopticapi PQ/SQ/RQ for All/Things/Stuff and, given seen ids, Seen/Unseen.

    Args:
        gt_json: COCO panoptic ground-truth JSON (its ``categories`` define the classes).
        pred_annotations: prediction annotations (image_id, file_name, segments_info with
            dataset category ids), one per ground-truth image.
        seen_category_ids: dataset category ids seen in training.
    Returns:
        ``{"All": {"pq", "sq", "rq", "n"}, "Things": ..., "Stuff": ..., ["Seen", "Unseen"]}``,
        values in [0, 1]; a subset with no class present has n = 0 and NaN values.
    """
    from panopticapi.evaluation import pq_compute_multi_core

    with open(gt_json) as f:
        gt = json.load(f)
    categories = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred_annotations}
    matched = []
    for ann in gt["annotations"]:
        if ann["image_id"] not in preds:
            raise KeyError(f"no prediction for image id {ann['image_id']!r} of {gt_json}")
        matched.append((ann, preds[ann["image_id"]]))
    with contextlib.redirect_stdout(io.StringIO()):
        stat = pq_compute_multi_core(matched, gt_folder, pred_folder, categories)

    subsets = {"All": categories}
    subsets["Things"] = {k: c for k, c in categories.items() if c["isthing"] == 1}
    subsets["Stuff"] = {k: c for k, c in categories.items() if c["isthing"] != 1}
    if seen_category_ids is not None:
        seen = set(seen_category_ids)
        subsets["Seen"] = {k: c for k, c in categories.items() if k in seen}
        subsets["Unseen"] = {k: c for k, c in categories.items() if k not in seen}
    results = {}
    for name, cats in subsets.items():
        counts = (stat.pq_per_cat[k] for k in cats)
        if not any(c.tp + c.fp + c.fn > 0 for c in counts):
            results[name] = {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
            continue
        results[name], _ = stat.pq_average(cats, isthing=None)
    return results


class PanopticEvaluator(COCOPanopticEvaluator):
    """COCOPanopticEvaluator with PQ_seen / PQ_unseen (and SQ, RQ) added to its results.

    Args:
        dataset_name: registered panoptic dataset (panoptic_json, panoptic_root, id maps).
        output_dir: where predictions.json is written (optional).
        seen_classes: per contiguous class id, whether it was seen in training; ``None`` skips
            the split.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        seen_classes: Optional[Sequence[bool]] = None,
    ) -> None:
        super().__init__(dataset_name, output_dir)
        self._seen_ids: Optional[list] = None
        if seen_classes is not None:
            id_map = self._metadata.stuff_dataset_id_to_contiguous_id
            contiguous_to_dataset = {v: k for k, v in id_map.items()}
            if len(seen_classes) != len(contiguous_to_dataset):
                raise ValueError(
                    f"seen_classes has {len(seen_classes)} entries but {dataset_name!r} has "
                    f"{len(contiguous_to_dataset)} classes"
                )
            self._seen_ids = [contiguous_to_dataset[i] for i, s in enumerate(seen_classes) if s]

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None
        gt_json = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        with tempfile.TemporaryDirectory(prefix="panoptic_eval") as pred_dir:
            for p in predictions:
                with open(os.path.join(pred_dir, p["file_name"]), "wb") as f:
                    f.write(p.pop("png_string"))
            if self._output_dir:
                with open(gt_json) as f:
                    payload = json.load(f)
                payload["annotations"] = predictions
                with PathManager.open(os.path.join(self._output_dir, "predictions.json"), "w") as f:
                    f.write(json.dumps(payload))
            pq = panoptic_quality(gt_json, predictions, gt_folder, pred_dir, self._seen_ids)

        res: Dict[str, float] = {}
        suffixes = {"All": "", "Things": "_th", "Stuff": "_st", "Seen": "_seen", "Unseen": "_unseen"}
        for name, suffix in suffixes.items():
            if name in pq:
                for key in ("pq", "sq", "rq"):
                    res[key.upper() + suffix] = 100 * pq[name][key]
        rows = [
            f"{n:7s} PQ {100 * v['pq']:6.2f} SQ {100 * v['sq']:6.2f} RQ {100 * v['rq']:6.2f} #classes {v['n']}"
            for n, v in pq.items()
        ]
        logger.info("Panoptic evaluation of %s:\n%s", self._metadata.name, "\n".join(rows))
        return OrderedDict({"panoptic_seg": res})
