"""Fast PQ / mask AP / mIoU for sweeps, on hotcoco (Rust) instead of panopticapi and pycocotools.

A sweep evaluates the same images hundreds of times. The reference evaluators write one PNG per
image and re-read the ground truth at every call; :class:`FastPanopticEvaluator` reads the ground
truth once (the evaluator is reused across sweep points: :meth:`reset` keeps it) and scores
in-memory RLE segments with ``hotcoco.panoptic.PanopticEval``, mask AP with ``hotcoco.COCOeval``
and mIoU from a confusion matrix counted by ``hotcoco.semantic.SemanticEval``.

The numbers are those of detectron2's ``COCOPanopticEvaluator`` (panopticapi), ``COCOEvaluator``
(pycocotools, segm) and ``SemSegEvaluator`` (same keys, same formulas, x100);
``tests/sweep/test_metrics_equivalence.py`` checks this on perturbed ground truth, including the
seen / unseen split of PQ and mIoU that :func:`retclip.evaluation.build_evaluator` adds.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from retclip.utils.errors import BadFileError
from detectron2.evaluation import DatasetEvaluator
from PIL import Image

from retclip.modeling.postprocessing import first_argmax

logger = logging.getLogger(__name__)

__all__ = [
    "FastPanopticEvaluator",
    "QueryMaskRLEs",
    "encode_masks",
    "semseg_metrics",
    "panoptic_average",
    "METRICS_BACKENDS",
]

#: Values of ``--metrics-backend``: "hotcoco" (this module) or "reference" (the evaluators a
#: full ``--eval-only`` run uses: panopticapi, pycocotools, detectron2's SemSegEvaluator).
METRICS_BACKENDS = ("hotcoco", "reference")

_PQ_KEYS = {"All": "", "Things": "_th", "Stuff": "_st"}
_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _rgb2id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _encode(mask: np.ndarray) -> Dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_masks(masks: np.ndarray) -> List[Dict[str, Any]]:
    """(N, H, W) uint8 0/1 masks -> COCO RLEs with str counts (how instance masks are scored)."""
    from pycocotools import mask as mask_utils

    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


class QueryMaskRLEs:
    """One image's instance masks per query as RLEs, each encoded on first use: a sweep's grid
    points pick different top-k queries from the same masks, so only the scores change between
    points. Given as ``outputs["query_rles"]`` with instances that carry ``pred_queries``,
    :class:`FastPanopticEvaluator` takes the masks from here.

    Args:
        positive: (Q, H, W) bool masks, or a function from query indices to their (N, H, W)
            masks (``MaskProbabilities.positive``, which binarises only the queries asked for).
    """

    def __init__(
        self, positive: Union[torch.Tensor, Callable[[Sequence[int]], torch.Tensor]]
    ) -> None:
        if isinstance(positive, torch.Tensor):
            masks = positive
            positive = lambda queries: masks[list(queries)]  # noqa: E731
        self.positive = positive
        self._rles: Dict[int, Dict[str, Any]] = {}

    def pack(self, num_queries: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Every query's RLE as two tensors (how a score cache stores them): the ASCII counts
        strings end to end, (L,) uint8, and where each starts, (Q + 1,) int64."""
        rles = self(list(range(num_queries)))
        data = b"".join(r["counts"].encode("ascii") for r in rles)
        lengths = torch.tensor([0] + [len(r["counts"]) for r in rles], dtype=torch.int64)
        counts = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
        return counts, lengths.cumsum(0)

    @classmethod
    def unpack(
        cls, counts: torch.Tensor, offsets: torch.Tensor, size: Sequence[int], where: str
    ) -> "QueryMaskRLEs":
        """The RLEs of :meth:`pack` for masks of ``size`` (H, W); inconsistent offsets are a
        BadFileError naming ``where``."""
        ends = offsets.tolist()
        if (
            offsets.ndim != 1
            or not ends
            or ends[0] != 0
            or ends[-1] != counts.numel()
            or any(b < a for a, b in zip(ends, ends[1:]))
        ):
            raise BadFileError(
                f"{where}: instance mask RLE offsets do not index the {counts.numel()} stored "
                "bytes; the cache is damaged: write it again"
            )

        def missing(queries: Sequence[int]) -> torch.Tensor:
            raise KeyError(f"{where}: queries {list(queries)} have no stored instance mask RLE")

        rles = cls(missing)
        data = counts.numpy().tobytes()
        height, width = (int(x) for x in size)
        for q, (a, b) in enumerate(zip(ends, ends[1:])):
            rles._rles[q] = {"size": [height, width], "counts": data[a:b].decode("ascii")}
        return rles

    def __call__(self, queries: Sequence[int]) -> List[Dict[str, Any]]:
        missing = [q for q in dict.fromkeys(queries) if q not in self._rles]
        if missing:
            masks = self.positive(missing).cpu().numpy().astype(np.uint8)
            self._rles.update(zip(missing, encode_masks(masks)))
        return [self._rles[q] for q in queries]


def _segment_annotations(
    ids: np.ndarray, segments: Sequence[Mapping[str, Any]], image_id: Any, start: int
) -> List[Dict[str, Any]]:
    """One COCO annotation with an RLE mask per panoptic segment (PanopticEval's in-memory form)."""
    anns = []
    for k, seg in enumerate(segments):
        mask = ids == seg["id"]
        anns.append(
            {
                "id": start + k,
                "image_id": image_id,
                "category_id": int(seg["category_id"]),
                "segmentation": _encode(mask),
                "area": int(mask.sum()),
                "iscrowd": int(seg.get("iscrowd", 0)),
            }
        )
    return anns


def semseg_metrics(
    confusion: np.ndarray, class_names: Sequence[str], seen: Optional[Sequence[bool]] = None
) -> Dict[str, float]:
    """The numbers of :class:`retclip.evaluation.SemSegSplitEvaluator` (x100) from a (K, K)
    confusion matrix [gt, pred] (ignored pixels left out).

    mIoU is that evaluator's (mean over classes with ground truth, through its own
    ``miou_from_confusion``); ``mIoU_d2v06``, fwIoU, mACC, pACC and the per-class values follow
    detectron2's SemSegEvaluator formulas. With ``seen`` (K bools) also mIoU_seen / mIoU_unseen.
    """
    from retclip.evaluation import miou_from_confusion

    num = confusion.shape[0]
    d2 = np.zeros((num + 1, num + 1), dtype=np.int64)  # detectron2's layout: [pred, gt] + ignore
    d2[:num, :num] = confusion.T
    conf = d2.astype(np.float64)
    tp = conf.diagonal()[:-1]
    pos_gt = conf[:-1, :-1].sum(axis=0)
    pos_pred = conf[:-1, :-1].sum(axis=1)
    acc_valid = pos_gt > 0
    iou_valid = (pos_gt + pos_pred) > 0
    acc = np.full(num, np.nan)
    iou = np.full(num, np.nan)
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    iou[acc_valid] = tp[acc_valid] / (pos_gt + pos_pred - tp)[acc_valid]
    weights = pos_gt / np.sum(pos_gt)
    res: Dict[str, float] = OrderedDict()
    res["mIoU"] = 100 * miou_from_confusion(d2)
    res["fwIoU"] = 100 * float(np.sum(iou[acc_valid] * weights[acc_valid]))
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * float(iou[i])
    res["mACC"] = 100 * float(np.sum(acc[acc_valid]) / np.sum(acc_valid))
    res["pACC"] = 100 * float(np.sum(tp) / np.sum(pos_gt))
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * float(acc[i])
    res["mIoU_d2v06"] = 100 * float(np.sum(iou[acc_valid]) / np.sum(iou_valid))
    if seen is not None:
        seen_arr = np.asarray(seen, dtype=bool)
        res["mIoU_seen"] = 100 * miou_from_confusion(d2, seen_arr)
        res["mIoU_unseen"] = 100 * miou_from_confusion(d2, ~seen_arr)
    return res


def panoptic_average(
    per_class: Mapping[Any, Mapping[str, float]], category_ids: Sequence[int]
) -> Dict[str, float]:
    """PQ / SQ / RQ (x100) over the given dataset category ids, with panopticapi's arithmetic
    (``PQStat.pq_average``): classes with tp + fp + fn == 0 are skipped; NaN if none is left.

    Args:
        per_class: category id -> {"iou", "tp", "fp", "fn"} (hotcoco's ``per_class``).
    """
    pq = sq = rq = 0.0
    n = 0
    for cid in category_ids:
        stats = per_class.get(cid, per_class.get(str(cid)))
        if stats is None:
            continue
        iou, tp, fp, fn = stats["iou"], stats["tp"], stats["fp"], stats["fn"]
        if tp + fp + fn == 0:
            continue
        n += 1
        pq += iou / (tp + 0.5 * fp + 0.5 * fn)
        sq += iou / tp if tp != 0 else 0
        rq += tp / (tp + 0.5 * fp + 0.5 * fn)
    if n == 0:
        return {"PQ": float("nan"), "SQ": float("nan"), "RQ": float("nan")}
    return {"PQ": 100 * (pq / n), "SQ": 100 * (sq / n), "RQ": 100 * (rq / n)}


class _GroundTruth:
    """Everything the fast path reads once per dataset: panoptic segments as RLE, semantic label
    maps, the instance COCO API, and the id maps."""

    def __init__(self, dataset_name: str, tasks: Sequence[str]) -> None:
        import hotcoco

        self.meta = MetadataCatalog.get(dataset_name)
        records = DatasetCatalog.get(dataset_name)
        self.by_file = {r["file_name"]: r for r in records}
        self.class_names = list(self.meta.stuff_classes)
        self.thing_rev = {v: k for k, v in self.meta.thing_dataset_id_to_contiguous_id.items()}
        self.stuff_rev = {v: k for k, v in self.meta.stuff_dataset_id_to_contiguous_id.items()}
        self.panoptic: Dict[Any, Dict[str, Any]] = {}
        self.categories: List[Dict[str, Any]] = []
        if "panoptic_seg" in tasks:
            with open(self.meta.panoptic_json) as f:
                pan = json.load(f)
            self.categories = pan["categories"]
            images = {img["id"]: img for img in pan["images"]}
            next_id = 1
            for ann in pan["annotations"]:
                path = os.path.join(self.meta.panoptic_root, ann["file_name"])
                ids = _rgb2id(np.asarray(Image.open(path)))
                anns = _segment_annotations(ids, ann["segments_info"], ann["image_id"], next_id)
                next_id += len(anns)
                self.panoptic[ann["image_id"]] = {"image": images[ann["image_id"]], "anns": anns}
        self.coco = None
        if "segm" in tasks:
            if not self.meta.get("json_file"):
                raise KeyError(
                    f"dataset {dataset_name!r} has no json_file in its metadata (needed for mask AP)"
                )
            self.coco = hotcoco.COCO(self.meta.json_file)
        self.ignore_label = int(self.meta.get("ignore_label", 255))

    def semantic(self, file_name: str) -> np.ndarray:
        record = self.by_file.get(file_name)
        if record is None or "sem_seg_file_name" not in record:
            raise KeyError(f"no semantic ground truth for {file_name!r} in {self.meta.name!r}")
        return np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.int64)


class FastPanopticEvaluator(DatasetEvaluator):
    """PQ, mask AP and mIoU in one pass, with hotcoco; the ground truth is read once.

    Args:
        dataset_name: a registered COCO-panoptic-format dataset (``panoptic_json``,
            ``panoptic_root``, ``json_file``, ``sem_seg_file_name`` per record).
        tasks: any of "panoptic_seg", "segm", "sem_seg".
        seen: K bools over contiguous class ids (e.g. the model's seen mask) for the
            seen / unseen split; None: no split.
        max_dets_per_image: the largest COCO maxDets (detectron2's default 100).
        ground_truth: another evaluator's ``gt`` (same dataset and tasks), to share it.
    Returns (:meth:`evaluate`):
        {"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "PQ_seen", ...},
        "segm": {"AP", "AP50", ..., "AP-<class>"},
        "sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", ..., "mIoU_seen", "mIoU_unseen"}}, x100:
        the keys and formulas of :func:`retclip.evaluation.build_evaluator`'s evaluators.
        Only images given to :meth:`process` are scored (a partial sweep scores a subset).
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        tasks: Sequence[str] = ("panoptic_seg", "segm", "sem_seg"),
        seen: Optional[Sequence[bool]] = None,
        max_dets_per_image: int = 100,
        ground_truth: Optional["_GroundTruth"] = None,
    ) -> None:
        unknown = set(tasks) - {"panoptic_seg", "segm", "sem_seg"}
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; valid: panoptic_seg, segm, sem_seg")
        self.dataset_name = dataset_name
        self.tasks = tuple(tasks)
        self.seen = None if seen is None else [bool(s) for s in seen]
        self.max_dets = [1, 10, int(max_dets_per_image)]
        # One evaluator per grid point of a pass: they share the ground truth (read once).
        self.gt = (
            ground_truth if ground_truth is not None else _GroundTruth(dataset_name, self.tasks)
        )
        if self.seen is not None and len(self.seen) != len(self.gt.class_names):
            raise ValueError(
                f"seen has {len(self.seen)} entries but {dataset_name!r} has {len(self.gt.class_names)} classes"
            )
        self.reset()

    def reset(self) -> None:
        import hotcoco.semantic

        self._panoptic: Dict[Any, List[Dict[str, Any]]] = {}
        self._instances: List[Dict[str, Any]] = []
        self._image_ids: List[Any] = []
        self._sem = hotcoco.semantic.SemanticEval(
            len(self.gt.class_names), ignore_index=self.gt.ignore_label
        )

    # ------------------------------------------------------------------ process
    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs):
            self._image_ids.append(inp["image_id"])
            if "panoptic_seg" in self.tasks:
                self._add_panoptic(inp, out)
            if "segm" in self.tasks:
                self._add_instances(inp, out)
            if "sem_seg" in self.tasks:
                pred = first_argmax(out["sem_seg"].cpu()).numpy()
                self._sem.update(self.gt.semantic(inp["file_name"]), pred)

    def _add_panoptic(self, inp: Dict[str, Any], out: Dict[str, Any]) -> None:
        ids, segments_info = out["panoptic_seg"]
        if segments_info is None:
            raise ValueError(
                "panoptic_seg without segments_info is not supported by the fast evaluator"
            )
        ids = ids.cpu().numpy()
        segments = []
        for seg in segments_info:
            cid = seg["category_id"]
            rev = self.gt.thing_rev if seg.get("isthing") else self.gt.stuff_rev
            segments.append({"id": seg["id"], "category_id": rev[cid]})
        listed = {s["id"] for s in segments}
        present = set(np.unique(ids).tolist()) - {0}
        if present != listed:
            raise ValueError(
                f"image {inp['image_id']}: segment ids in the map {sorted(present)} differ from "
                f"segments_info {sorted(listed)}"
            )
        self._panoptic[inp["image_id"]] = _segment_annotations(ids, segments, inp["image_id"], 1)

    def _add_instances(self, inp: Dict[str, Any], out: Dict[str, Any]) -> None:
        inst = out["instances"].to("cpu")
        if len(inst) == 0:
            return
        query_rles = out.get("query_rles")
        if query_rles is not None and inst.has("pred_queries"):
            rles = query_rles(inst.pred_queries.tolist())
        else:
            rles = encode_masks(inst.pred_masks.numpy().astype(np.uint8))
        for rle, score, cls in zip(rles, inst.scores.tolist(), inst.pred_classes.tolist()):
            if cls not in self.gt.thing_rev:
                raise KeyError(
                    f"instance class {cls} is not a thing class of {self.dataset_name!r}"
                )
            self._instances.append(
                {
                    "image_id": inp["image_id"],
                    "category_id": self.gt.thing_rev[cls],
                    "segmentation": rle,
                    "score": score,
                }
            )

    # ------------------------------------------------------------------ evaluate
    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        results: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
        if "panoptic_seg" in self.tasks:
            results["panoptic_seg"] = self._eval_panoptic()
        if "segm" in self.tasks:
            results["segm"] = self._eval_segm()
        if "sem_seg" in self.tasks:
            results["sem_seg"] = semseg_metrics(
                self._sem.confusion(), self.gt.class_names, self.seen
            )
        return results

    def _seen_dataset_ids(self) -> Tuple[List[int], List[int]]:
        seen_mask = self.seen or []
        stuff_map = self.gt.meta.stuff_dataset_id_to_contiguous_id
        seen = [d for d, c in stuff_map.items() if seen_mask[c]]
        unseen = [d for d, c in stuff_map.items() if not seen_mask[c]]
        return seen, unseen

    def _eval_panoptic(self) -> Dict[str, float]:
        from hotcoco.panoptic import PanopticEval

        missing = [i for i in self._image_ids if i not in self.gt.panoptic]
        if missing:
            raise KeyError(
                f"images {missing[:5]} have no panoptic ground truth in {self.dataset_name!r}"
            )
        images, gt_anns, pred_anns = [], [], []
        for image_id in self._image_ids:
            entry = self.gt.panoptic[image_id]
            images.append(entry["image"])
            gt_anns.extend(entry["anns"])
            for ann in self._panoptic[image_id]:
                pred_anns.append(dict(ann, id=len(pred_anns) + 1))
        cats = self.gt.categories
        ev = PanopticEval(
            {"images": images, "annotations": gt_anns, "categories": cats},
            {"images": images, "annotations": pred_anns, "categories": cats},
        )
        ev.evaluate()
        per_class = ev.results()["per_class"]
        groups = {
            "": [c["id"] for c in cats],
            "_th": [c["id"] for c in cats if c["isthing"] == 1],
            "_st": [c["id"] for c in cats if c["isthing"] != 1],
        }
        if self.seen is not None:
            groups["_seen"], groups["_unseen"] = self._seen_dataset_ids()
        res: Dict[str, float] = OrderedDict()
        for suffix, ids in groups.items():
            for k, v in panoptic_average(per_class, ids).items():
                res[k + suffix] = v
        return res

    def _eval_segm(self) -> Dict[str, float]:
        import hotcoco

        if not self._instances:
            logger.warning("No instance predictions: segm AP is NaN")
            return {k: float("nan") for k in _AP_KEYS}
        coco_gt = self.gt.coco
        dt = coco_gt.load_res(copy.deepcopy(self._instances))
        ev = hotcoco.COCOeval(coco_gt, dt, "segm")
        ev.params.max_dets = self.max_dets
        ev.params.img_ids = sorted(set(self._image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summary_lines()  # fills ev.stats without printing (summarize() prints)
        stats = list(ev.stats)
        res: Dict[str, float] = OrderedDict(
            (k, float(stats[i] * 100) if stats[i] >= 0 else float("nan"))
            for i, k in enumerate(_AP_KEYS)
        )
        precisions = np.asarray(ev.eval["precision"])
        thing_names = list(self.gt.meta.thing_classes)
        for idx, name in enumerate(thing_names):
            p = precisions[:, :, idx, 0, -1]
            p = p[p > -1]
            ap = float(np.mean(p) * 100) if p.size else float("nan")
            res[f"AP-{name}"] = ap
        return res
