"""Turning the score cache on in an evaluation run (``TEST.SCORE_CACHE_DIR``).

``Trainer.test`` builds one evaluator per test dataset; :func:`add_score_cache` wraps it so the
same inference pass also writes the cache, and asks the model for its ensemble inputs::

    evaluator = add_score_cache(cfg, model, build_evaluator(cfg, name), name)
"""

from __future__ import annotations

import logging
import os
from typing import Any

from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators

from .writer import ScoreCacheWriter

logger = logging.getLogger(__name__)

__all__ = ["add_score_cache", "score_cache_dir"]


def score_cache_dir(cfg: Any, dataset_name: str) -> str:
    """Where the cache of ``dataset_name`` goes: ``TEST.SCORE_CACHE_DIR/<dataset_name>``."""
    return os.path.join(os.path.expanduser(cfg.TEST.SCORE_CACHE_DIR), dataset_name)


def add_score_cache(
    cfg: Any, model: Any, evaluator: DatasetEvaluator, dataset_name: str
) -> DatasetEvaluator:
    """``evaluator`` plus a :class:`ScoreCacheWriter` when ``TEST.SCORE_CACHE_DIR`` is set.

    Sets ``model.return_ensemble_inputs = True`` (a RetCLIP model; others are refused with the
    reason) and records ``model.ensemble_fingerprint()`` and ``model.score_cache_manifest()`` in the cache.

    Raises:
        ValueError: the model cannot give ensemble inputs (no ``ensemble_fingerprint``).
    """
    if not cfg.TEST.SCORE_CACHE_DIR:
        return evaluator
    target = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    if not hasattr(target, "return_ensemble_inputs") or not hasattr(target, "ensemble_fingerprint"):
        raise ValueError(
            f"TEST.SCORE_CACHE_DIR is set but {type(target).__name__} cannot return ensemble inputs; "
            'use MODEL.META_ARCHITECTURE "RetCLIP" (MODEL.ENSEMBLE.MODE "geometric" without a '
            "database is FC-CLIP)"
        )
    target.return_ensemble_inputs = True
    cache_dir = score_cache_dir(cfg, dataset_name)
    writer = ScoreCacheWriter(
        cache_dir,
        dataset_name=dataset_name,
        fingerprint=target.ensemble_fingerprint(),
        model_manifest=target.score_cache_manifest(),
        mask_dtype=cfg.TEST.SCORE_CACHE_MASK_DTYPE,
        shard_mb=cfg.TEST.SCORE_CACHE_SHARD_MB,
    )
    logger.info("Writing the score cache of %s to %s", dataset_name, cache_dir)
    return DatasetEvaluators([evaluator, writer])
