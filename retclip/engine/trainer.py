"""The training/evaluation loop of ``tools/train_net.py``: detectron2's DefaultTrainer with
RetCLIP's mapper, evaluators, optimizer, config checks and metrics files.

Metrics of every evaluation are written atomically to ``OUTPUT_DIR/metrics_<N>.json``, N = the
number of iterations trained so far (7 digits), and those of ``--eval-only`` to
``OUTPUT_DIR/metrics_eval.json``. Checkpoints hold the optimizer (and AMP grad-scaler) state,
which detectron2 v0.6's DefaultTrainer leaves out, so ``--resume`` continues exactly.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional

import torch
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, hooks
from detectron2.utils import comm

from retclip.checkpoint import CLASS_COUNT_KEYS, RetCLIPCheckpointer
from retclip.data.mappers import TestDatasetMapper, build_dataset_mapper
from retclip.evaluation import build_evaluator
from retclip.utils.device import resolve_device  # noqa: F401  (re-exported: one CPU fallback for every tool)
from retclip.utils.fileio import atomic_write_text

from .optimizer import build_optimizer

logger = logging.getLogger(__name__)

__all__ = [
    "Trainer",
    "check_config",
    "check_datasets_registered",
    "resolve_device",
    "resume_or_load",
    "write_metrics",
    "format_metrics",
]


def check_datasets_registered(names: List[str]) -> None:
    """Raise KeyError for a dataset name that is not registered, listing the registered ones."""
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            raise KeyError(f"dataset {name!r} is not registered; registered datasets: {sorted(registered)}")


def check_config(cfg: Any) -> None:
    """Consistency checks that would otherwise fail deep inside training.

    Raises:
        KeyError: a DATASETS.TRAIN/TEST name is not registered (the error lists those that are).
        ValueError: MODEL.SEM_SEG_HEAD.NUM_CLASSES differs from the training set's class count.
    """
    check_datasets_registered(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    for name in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(name)
        classes = meta.get("stuff_classes") or meta.get("thing_classes") or []
        if len(classes) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES} but the training "
                f"dataset {name!r} has {len(classes)} classes"
            )


def write_metrics(results: Dict[str, Any], path: str) -> None:
    """Write evaluation results as JSON, atomically (temporary file + rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=2, sort_keys=True))
    logger.info("Wrote metrics to %s", path)


def format_metrics(results: Dict[str, Any]) -> str:
    """One line per dataset: PQ (all / seen / unseen), mask AP, mIoU (all / seen / unseen)."""
    if results and all(k in ("panoptic_seg", "segm", "sem_seg") for k in results):
        results = {"": results}
    lines = []

    def get(d: Dict[str, Any], task: str, key: str) -> str:
        v = d.get(task, {}).get(key)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    for name, res in results.items():
        lines.append(
            f"{name} PQ {get(res, 'panoptic_seg', 'PQ')} (seen {get(res, 'panoptic_seg', 'PQ_seen')}, "
            f"unseen {get(res, 'panoptic_seg', 'PQ_unseen')}) | mAP {get(res, 'segm', 'AP')} | "
            f"mIoU {get(res, 'sem_seg', 'mIoU')} (seen {get(res, 'sem_seg', 'mIoU_seen')}, "
            f"unseen {get(res, 'sem_seg', 'mIoU_unseen')})".strip()
        )
    return "\n".join(lines)


def resume_or_load(trainer: DefaultTrainer, resume: bool) -> None:
    """``trainer.resume_or_load`` that says when ``--resume`` finds nothing to resume from."""
    if resume and not trainer.checkpointer.has_checkpoint():
        logger.warning(
            "--resume: no checkpoint in %s (no 'last_checkpoint' file); starting from scratch "
            "(iteration 0, MODEL.WEIGHTS=%r)",
            trainer.cfg.OUTPUT_DIR,
            trainer.cfg.MODEL.WEIGHTS,
        )
    trainer.resume_or_load(resume=resume)
    if resume and trainer.start_iter > 0:
        logger.info("Resumed from %s at iteration %d", trainer.checkpointer.get_checkpoint_file(), trainer.start_iter)


class Trainer(DefaultTrainer):
    """DefaultTrainer with the mapper of INPUT.DATASET_MAPPER_NAME, RetCLIP's evaluators and
    optimizer, and a metrics JSON after each evaluation."""

    @classmethod
    def build_train_loader(cls, cfg: Any) -> Any:
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg: Any, dataset_name: str) -> Any:
        return build_detection_test_loader(cfg, dataset_name, mapper=TestDatasetMapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg: Any, dataset_name: str, output_folder: Optional[str] = None) -> Any:
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg: Any, model: torch.nn.Module, evaluators: Optional[List[Any]] = None) -> Dict[str, Any]:
        """detectron2's test loop; with TEST.SCORE_CACHE_DIR the same pass also writes the score
        cache that tools/sweep_ensemble.py recombines (meant for --eval-only runs)."""
        if evaluators is None and cfg.TEST.SCORE_CACHE_DIR:
            from ..sweep.hooks import add_score_cache

            evaluators = [
                add_score_cache(cfg, model, cls.build_evaluator(cfg, name), name) for name in cfg.DATASETS.TEST
            ]
        return super().test(cfg, model, evaluators)

    def build_hooks(self) -> List[Any]:
        # DefaultTrainer.__init__ made a lenient DetectionCheckpointer just before calling this;
        # swap in the strict one (same save dir and checkpointables, so --resume and the periodic
        # checkpointer keep working) before the hooks capture it. A class-count change is the one
        # shape difference allowed when fine-tuning from MODEL.WEIGHTS.
        old = self.checkpointer
        self.checkpointer = RetCLIPCheckpointer(
            old.model, old.save_dir, allow_shape_mismatch=CLASS_COUNT_KEYS, strict=True,
            save_to_disk=old.save_to_disk, **old.checkpointables,
        )
        ret = super().build_hooks()
        for i, hook in enumerate(ret):
            if isinstance(hook, hooks.EvalHook):
                ret[i] = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._test_and_write)
        return ret

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()  # optimizer (+ grad scaler)
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state (older format): the optimizer starts fresh")

    def _test_and_write(self) -> Dict[str, Any]:
        done = min(self.iter + 1, self.max_iter)  # after_train sees iter == max_iter
        self._last_eval_results = self.test(self.cfg, self.model)
        if comm.is_main_process():
            write_metrics(self._last_eval_results, os.path.join(self.cfg.OUTPUT_DIR, f"metrics_{done:07d}.json"))
            logger.info("Evaluation after %d iterations:\n%s", done, format_metrics(self._last_eval_results))
        return self._last_eval_results
