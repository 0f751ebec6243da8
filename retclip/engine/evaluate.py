"""The one evaluation path: ``tools/train_net.py --eval-only`` (with ``TEST.SCORE_CACHE_DIR`` set
it also writes the score cache that ``tools/sweep_ensemble.py`` reads, in the same pass).

Every evaluation of a checkpoint goes through :func:`evaluate_checkpoint`, and every load of
``MODEL.WEIGHTS`` for evaluation through :func:`load_weights`, so the loader is chosen in one place.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm

from .trainer import Trainer, write_metrics

logger = logging.getLogger(__name__)

__all__ = ["evaluate_checkpoint", "load_weights"]


def load_weights(model: torch.nn.Module, cfg: Any, resume: bool = False) -> None:
    """Load ``MODEL.WEIGHTS`` (or, with ``resume``, OUTPUT_DIR's last checkpoint) into ``model``."""
    DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=resume
    )


def evaluate_checkpoint(cfg: Any, resume: bool = False) -> Dict[str, Any]:
    """Build the model of ``cfg``, load its weights, evaluate every DATASETS.TEST (and write the
    score cache when ``TEST.SCORE_CACHE_DIR`` is set), and write ``OUTPUT_DIR/metrics_eval.json``.

    Returns:
        detectron2's results: {dataset: {task: {metric: value}}} (one dataset: its dict alone).
    """
    model = Trainer.build_model(cfg)
    load_weights(model, cfg, resume=resume)
    results = Trainer.test(cfg, model)
    if comm.is_main_process():
        write_metrics(results, os.path.join(cfg.OUTPUT_DIR, "metrics_eval.json"))
    return results
