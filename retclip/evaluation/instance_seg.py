"""Mask AP for datasets whose thing ids are not contiguous (ADE20k, the synthetic test split).

detectron2's COCOEvaluator asserts that ``thing_dataset_id_to_contiguous_id`` maps onto
0..N-1; ADE20k's thing classes keep their place in the 150-class list (scattered ids), so the
assertion fails. This evaluator maps predicted class ids back through the reverse of that map
without the assertion, and uses the official pycocotools COCOeval unless detectron2's compiled
module (fast COCOeval) is really present.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from typing import Any, Dict, List, Optional

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.utils.file_io import PathManager

from retclip.compat import has_compiled_detectron2

logger = logging.getLogger(__name__)

__all__ = ["InstanceSegEvaluator"]


class InstanceSegEvaluator(COCOEvaluator):
    """Segm AP ("mAP") on the dataset's COCO instance JSON (``metadata.json_file``).

    Args:
        dataset_name: registered dataset with ``json_file`` and ``thing_dataset_id_to_contiguous_id``.
        output_dir: where ``coco_instances_results.json`` is written (optional).
        distributed: gather predictions from all ranks before evaluating.
        use_fast_impl: ``None`` picks the fast COCOeval only when compiled detectron2 is present.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        distributed: bool = True,
        max_dets_per_image: Optional[int] = None,
        use_fast_impl: Optional[bool] = None,
    ) -> None:
        if use_fast_impl is None:
            use_fast_impl = has_compiled_detectron2()
        super().__init__(
            dataset_name,
            tasks=("segm",),
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=use_fast_impl,
        )

    def _eval_predictions(self, predictions: List[Dict[str, Any]], img_ids: Optional[List[int]] = None) -> None:
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        reverse = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
        for result in coco_results:
            if result["category_id"] not in reverse:
                raise KeyError(
                    f"a prediction has class {result['category_id']}, which is not a thing class of "
                    f"{self._metadata.name!r} (thing ids: {sorted(reverse)})"
                )
            result["category_id"] = reverse[result["category_id"]]

        if self._output_dir:
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            with PathManager.open(path, "w") as f:
                f.write(json.dumps(coco_results))
        if not self._do_evaluation:
            return
        logger.info("Evaluating mask AP with the %s COCO API", "fast" if self._use_fast_impl else "official")
        for task in sorted(self._tasks or ("segm",)):
            coco_eval = (
                _evaluate_predictions_on_coco(
                    self._coco_api,
                    coco_results,
                    task,
                    use_fast_impl=self._use_fast_impl,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
                if coco_results
                else None  # pycocotools fails on empty results
            )
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )
