"""Run a sweep: for each grid point, recombine every cached image, post-process, evaluate; one
result row per point, written atomically, resumable, optionally in parallel processes. Points go
in passes of a few: each pass reads every cached image (and resizes its masks) once for all of
its points, which matters when the cache is larger than the page cache.

Results live in ``<output_dir>/sweep.jsonl`` (one JSON row per point, with the full metric dicts)
and ``sweep.csv`` (headline columns), both rewritten through a temporary file after every point,
plus ``sweep_meta.json`` (the cache fingerprint and metric backend). Re-running skips points
already in ``sweep.jsonl``; results from another cache or backend are refused, naming what differs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from detectron2.data import MetadataCatalog

from retclip.utils.errors import BadFileError

from .cache import ScoreCache, StaleCacheError, compare_fingerprints
from .grid import GridPoint
from .metrics import METRICS_BACKENDS, FastPanopticEvaluator
from retclip.ensemble import ENSEMBLE_MODES
from retclip.modeling.postprocessing import PostprocessBuffers
from retclip.utils.fileio import atomic_write_text

from .recombine import (
    combine_scores,
    instance_rles,
    postprocess,
    postprocess_settings,
    prepare_masks,
)

logger = logging.getLogger(__name__)

__all__ = ["HEADLINE", "SweepRunner", "metrics_row", "read_rows"]

#: CSV columns after alpha, beta, gamma, mode: PQ, mask AP ("mAP") and mIoU, with the splits.
HEADLINE = (
    "PQ",
    "PQ_th",
    "PQ_st",
    "PQ_seen",
    "PQ_unseen",
    "SQ",
    "RQ",
    "mAP",
    "mAP_seen",
    "mAP_unseen",
    "mIoU",
    "mIoU_seen",
    "mIoU_unseen",
)


def _nan_mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def metrics_row(
    point: GridPoint,
    mode: str,
    results: Mapping[str, Mapping[str, float]],
    seen: Sequence[bool],
    dataset_name: str,
) -> Dict[str, Any]:
    """A result row: the point, headline metrics and the full results.

    mAP_seen / mAP_unseen average the per-class mask AP ("AP-<class>") over seen / unseen thing
    classes (classes without ground truth, NaN, left out), so both backends split it the same way.
    """
    pan, segm, sem = (
        results.get("panoptic_seg", {}),
        results.get("segm", {}),
        results.get("sem_seg", {}),
    )
    row: Dict[str, Any] = {
        "alpha": point.alpha,
        "beta": point.beta,
        "gamma": point.gamma,
        "mode": mode,
    }
    for key in ("PQ", "PQ_th", "PQ_st", "PQ_seen", "PQ_unseen", "SQ", "RQ"):
        row[key] = pan.get(key, float("nan"))
    row["mAP"] = segm.get("AP", float("nan"))
    meta = MetadataCatalog.get(dataset_name)
    thing_contiguous = sorted(meta.thing_dataset_id_to_contiguous_id.values())
    per_class = [
        (seen[c], segm.get(f"AP-{name}", float("nan")))
        for c, name in zip(thing_contiguous, meta.thing_classes)
    ]
    row["mAP_seen"] = _nan_mean([ap for s, ap in per_class if s])
    row["mAP_unseen"] = _nan_mean([ap for s, ap in per_class if not s])
    for key in ("mIoU", "mIoU_seen", "mIoU_unseen"):
        row[key] = sem.get(key, float("nan"))
    row["results"] = {task: dict(values) for task, values in results.items()}
    return row


def read_rows(path: str) -> List[Dict[str, Any]]:
    """Rows of a ``sweep.jsonl`` (empty list if the file does not exist); a line that is not JSON
    (a torn last line) is a :class:`BadFileError` naming the file and line."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BadFileError(
                    f"{path}, line {number}: not a JSON row ({e.msg}); the file is torn or edited "
                    "(delete that line and re-run the sweep to recompute the point)"
                ) from e
    return rows


# One sweep state per worker process (built once by the pool initializer, reused for every point).
_WORKER: Dict[str, Any] = {}


def _init_worker(runner: "SweepRunner", dataset: Dict[str, Any]) -> None:
    """Spawned worker: re-register the dataset if this process does not know it (datasets
    registered at run time, e.g. synthetic ones, exist only in the parent), then open the cache."""
    from detectron2.data import DatasetCatalog

    torch.set_num_threads(1)
    name = runner.dataset_name
    if name not in DatasetCatalog.list():
        records = dataset["records"]
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(
            **{k: v for k, v in dataset["metadata"].items() if k != "name"}
        )
    _WORKER["runner"] = runner
    _WORKER["state"] = runner._open()


def _worker_points(points: List[GridPoint]) -> List[Dict[str, Any]]:
    runner = _WORKER["runner"]
    return runner._evaluate_points(_WORKER["state"], points)


class SweepRunner:
    """Evaluates grid points on a score cache.

    Args:
        cache_dir: written by :class:`retclip.sweep.cache.ScoreCacheWriter`.
        output_dir: where sweep.jsonl / sweep.csv / sweep_meta.json go.
        mode: a name in :data:`retclip.ensemble.ENSEMBLE_MODES` ("arithmetic", the paper's;
            "geometric", FC-CLIP's; or any registered one); default: the cached model's mode.
        backend: "hotcoco" (fast, scores the cached images even if some are missing) or
            "reference" (the evaluators of ``--eval-only``; needs ``cfg`` and every image).
        cfg: the evaluation config (for the reference backend: DATASETS.TRAIN, TEST flags).
        expected_fingerprint: refuse a cache whose fingerprint differs.
        workers: processes evaluating points in parallel (1 = in this process). Each keeps
            its own post-processing buffers, two Q x H x W float tensors of the largest image
            (1.7 GB at Q = 250, 800 x 1088).
        points_per_pass: points evaluated in one pass over the cache (each image is read and its
            masks resized once per pass; memory grows with the predictions of each point).
    """

    def __init__(
        self,
        cache_dir: str,
        output_dir: str,
        *,
        mode: Optional[str] = None,
        backend: str = "hotcoco",
        cfg: Optional[Any] = None,
        expected_fingerprint: Optional[Mapping[str, Any]] = None,
        workers: int = 1,
        points_per_pass: int = 4,
    ) -> None:
        if backend not in METRICS_BACKENDS:
            raise ValueError(f"unknown metrics backend {backend!r}; valid: {METRICS_BACKENDS}")
        if backend == "reference" and cfg is None:
            raise ValueError(
                "the reference metrics backend needs the evaluation config (--config-file)"
            )
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if points_per_pass < 1:
            raise ValueError(f"points_per_pass must be >= 1, got {points_per_pass}")
        self.cache_dir = cache_dir
        self.output_dir = output_dir
        self.backend = backend
        self.cfg = cfg
        self.workers = workers
        self.points_per_pass = points_per_pass
        cache = ScoreCache(cache_dir, expected_fingerprint)
        self.manifest = cache.manifest
        # default: the cached model's own mode; any registered mode can be swept
        self.mode = mode if mode is not None else self.manifest["model"]["ensemble_mode"]
        ENSEMBLE_MODES.get(self.mode)
        self.dataset_name = self.manifest["dataset"]
        self.num_images = len(cache)
        if len(cache) == 0:
            raise ValueError(f"score cache {cache_dir} holds no finished image ({cache.summary()})")
        if cache.missing_image_ids:
            logger.warning("Sweeping %s", cache.summary())
            if backend == "reference":
                raise ValueError(
                    f"score cache {cache_dir} is partial ({cache.summary()}); the reference evaluators need "
                    "every image: finish the cache, or use --metrics-backend hotcoco, which scores the cached ones"
                )
        self.missing_image_ids = list(cache.missing_image_ids)
        self.seen = [bool(s) for s in cache.load(cache.image_ids[0]).tensors["seen"].tolist()]
        self.jsonl = os.path.join(output_dir, "sweep.jsonl")
        self.csv = os.path.join(output_dir, "sweep.csv")
        self.meta_path = os.path.join(output_dir, "sweep_meta.json")

    # ------------------------------------------------------------ per process
    def _open(self) -> Dict[str, Any]:
        cache = ScoreCache(self.cache_dir)
        settings = postprocess_settings(self.manifest)
        state: Dict[str, Any] = {
            "cache": cache,
            "settings": settings,
            "evaluators": [],
            "buffers": PostprocessBuffers(),
        }
        if self.backend == "hotcoco":
            tasks = []
            meta = MetadataCatalog.get(self.dataset_name)
            if settings.panoptic_on:
                tasks.append("panoptic_seg")
            if settings.instance_on and meta.get("json_file"):
                tasks.append("segm")
            if settings.semantic_on and meta.get("sem_seg_root"):
                tasks.append("sem_seg")
            first = FastPanopticEvaluator(
                self.dataset_name, tasks=tasks, seen=self.seen, max_dets_per_image=settings.topk
            )
            state["evaluators"].append(first)
            state["new_evaluator"] = lambda: FastPanopticEvaluator(
                self.dataset_name,
                tasks=tasks,
                seen=self.seen,
                max_dets_per_image=settings.topk,
                ground_truth=first.gt,
            )
        else:
            from retclip.evaluation import build_evaluator

            state["new_evaluator"] = lambda: build_evaluator(
                self.cfg, self.dataset_name, tempfile.mkdtemp(prefix="sweep_reference_")
            )
        return state

    def _evaluate_points(
        self, state: Dict[str, Any], points: Sequence[GridPoint]
    ) -> List[Dict[str, Any]]:
        """One pass over the cache for several points: each image is read and its masks resized
        once, then every point recombines and post-processes it into its own evaluator."""
        start = time.perf_counter()
        while len(state["evaluators"]) < len(points):
            state["evaluators"].append(state["new_evaluator"]())
        evaluators = state["evaluators"][: len(points)]
        for evaluator in evaluators:
            evaluator.reset()
        settings = state["settings"]
        for image in state["cache"]:
            # the evaluators read each image's outputs in process(), so the masks' memory can
            # be reused for the next image
            prepared = prepare_masks(image, settings, state["buffers"])
            # hotcoco scores instance masks from per-query RLEs: the cached ones, or encoded
            # once per image
            rles = instance_rles(image, prepared) if self.backend == "hotcoco" else None
            for point, evaluator in zip(points, evaluators):
                mask_cls = combine_scores(
                    image.tensors, self.mode, point.alpha, point.beta, point.gamma
                )
                outputs = postprocess(
                    mask_cls, image, settings, prepared, instance_mask_tensors=rles is None
                )
                if rles is not None:
                    outputs["query_rles"] = rles
                evaluator.process([image.evaluator_input], [outputs])
        rows = []
        for point, evaluator in zip(points, evaluators):
            results = evaluator.evaluate() or {}
            row = metrics_row(point, self.mode, results, self.seen, self.dataset_name)
            row["backend"] = self.backend
            row["num_images"] = self.num_images
            rows.append(row)
        seconds = round((time.perf_counter() - start) / len(points), 3)
        for row in rows:
            row["seconds"] = seconds  # per point, averaged over the pass
        return rows

    def _evaluate_point(self, state: Dict[str, Any], point: GridPoint) -> Dict[str, Any]:
        return self._evaluate_points(state, [point])[0]

    # ---------------------------------------------------------------- results
    def _check_meta(self) -> None:
        meta = {
            "fingerprint": self.manifest["fingerprint"],
            "dataset": self.dataset_name,
            "mask_dtype": self.manifest["mask_dtype"],
            "backend": self.backend,
        }
        if os.path.isfile(self.meta_path):
            with open(self.meta_path) as f:
                old = json.load(f)
            diffs = compare_fingerprints(
                {k: json.dumps(v, sort_keys=True) for k, v in old.items()},
                {k: json.dumps(v, sort_keys=True) for k, v in meta.items()},
            )
            if diffs:
                raise StaleCacheError(
                    f"{self.output_dir} holds results of another sweep setup ({'; '.join(diffs)}); "
                    "use another output directory"
                )
        else:
            atomic_write_text(self.meta_path, json.dumps(meta, indent=1, sort_keys=True))

    def _write(self, rows: List[Dict[str, Any]]) -> None:
        atomic_write_text(self.jsonl, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        buf = io.StringIO()
        fields = ["alpha", "beta", "gamma", "mode", *HEADLINE, "backend", "num_images", "seconds"]
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
        atomic_write_text(self.csv, buf.getvalue())

    @staticmethod
    def _log(rows: Sequence[Dict[str, Any]]) -> None:
        for r in rows:
            logger.info(
                "Sweep point alpha %.2f beta %.2f gamma %.2f: PQ %.3f (%.1f s)",
                r["alpha"],
                r["beta"],
                r["gamma"],
                r["PQ"],
                r["seconds"],
            )

    def run(self, points: Sequence[GridPoint]) -> List[Dict[str, Any]]:
        """Evaluate the points not yet in the results; returns all rows (old and new)."""
        os.makedirs(self.output_dir, exist_ok=True)
        self._check_meta()
        rows = read_rows(self.jsonl)
        done = {(r["mode"], r["alpha"], r["beta"], r["gamma"]) for r in rows}
        todo = [p for p in points if p.key(self.mode) not in done]
        logger.info(
            "Sweep: %d points, %d already done, %d to run on %d images (%s ensemble, %s metrics, %d workers)",
            len(points),
            len(points) - len(todo),
            len(todo),
            self.num_images,
            self.mode,
            self.backend,
            self.workers,
        )
        if not todo:
            return rows
        batches = [
            todo[i : i + self.points_per_pass] for i in range(0, len(todo), self.points_per_pass)
        ]
        if self.workers == 1:
            state = self._open()
            for batch in batches:
                rows.extend(self._evaluate_points(state, batch))
                self._write(rows)
                self._log(rows[-len(batch) :])
            return rows
        # "spawn": forking a process whose torch / OpenMP thread pools are running can deadlock.
        from detectron2.data import DatasetCatalog

        dataset = {
            "records": DatasetCatalog.get(self.dataset_name),
            "metadata": MetadataCatalog.get(self.dataset_name).as_dict(),
        }
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_worker, initargs=(self, dataset)
        ) as pool:
            futures = [pool.submit(_worker_points, batch) for batch in batches]
            for future in as_completed(futures):
                new = future.result()
                rows.extend(new)
                self._write(rows)
                self._log(new)
        return rows
