"""Write the score cache with one evaluation pass (and get the usual metrics from the same pass).

``tools/train_net.py --eval-only`` arguments, plus ``TEST.SCORE_CACHE_DIR``::

    python -m retclip.sweep.write_cache --config-file configs/retclip/retclip_convnext_large_ade20k.yaml \\
        --num-gpus 8 MODEL.WEIGHTS fcclip_cocopan.pth TEST.SCORE_CACHE_DIR cache/

The cache of each test dataset goes to ``TEST.SCORE_CACHE_DIR/<dataset>``; metrics go to
``OUTPUT_DIR/metrics_eval.json`` as with train_net. Re-running completes a partial cache (images
already cached are skipped by the writer; the network still runs over them).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Sequence

logger = logging.getLogger(__name__)

__all__ = ["write_score_cache", "main"]


def write_score_cache(cfg: Any) -> Dict[str, Any]:
    """Build the model from ``cfg``, load MODEL.WEIGHTS, evaluate every DATASETS.TEST with the
    score cache writer added; returns the metrics per dataset."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    from retclip.evaluation import build_evaluator

    from .hooks import add_score_cache

    if not cfg.TEST.SCORE_CACHE_DIR:
        raise ValueError("TEST.SCORE_CACHE_DIR is empty: give the directory for the score cache")
    model = build_model(cfg).eval()
    DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=False
    )
    results = {}
    for name in cfg.DATASETS.TEST:
        evaluator = build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference", name))
        evaluator = add_score_cache(cfg, model, evaluator, name)
        loader = build_detection_test_loader(cfg, name)
        import torch

        with torch.no_grad():
            results[name] = inference_on_dataset(model, loader, evaluator)
    return results if len(results) > 1 else next(iter(results.values()))


def _main(args: Any) -> Dict[str, Any]:
    from detectron2.engine import default_setup
    from detectron2.utils import comm

    from retclip.utils.tool_config import load_tool_config

    cfg = load_tool_config(args.config_file, args.opts)  # the tools' CPU fallback and named mistakes
    default_setup(cfg, args)
    results = write_score_cache(cfg)
    if comm.is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, "metrics_eval.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
        logger.info("Metrics in %s", path)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    import retclip  # noqa: F401  (compat steps before detectron2)
    from detectron2.engine import default_argument_parser, launch

    from retclip.utils.device import check_num_gpus

    args = default_argument_parser().parse_args(argv)
    check_num_gpus(args.num_gpus)  # before any worker starts
    launch(
        _main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    import sys

    from retclip.utils.cli import run_tool

    sys.exit(run_tool(main))
