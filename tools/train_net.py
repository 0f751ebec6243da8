#!/usr/bin/env python
"""Train and evaluate FC-CLIP / RetCLIP models (detectron2-style entry point).

    python tools/train_net.py --config-file configs/... --num-gpus 8 [KEY VALUE ...]
    python tools/train_net.py --config-file configs/... --eval-only MODEL.WEIGHTS path/to/model.pth
    python tools/train_net.py ... --eval-only MODEL.WEIGHTS ... TEST.SCORE_CACHE_DIR cache/  # + sweep cache
    python tools/train_net.py --config-file configs/tests/tiny_fcclip_synthetic.yaml --num-gpus 0

Multi-node: ``--num-machines N --machine-rank R --dist-url tcp://HOST:PORT``. ``--resume``
continues from OUTPUT_DIR/last_checkpoint (or starts fresh, saying so, when there is none).
The logic lives in :mod:`retclip.engine`.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import retclip  # noqa: E402  (compat steps and registrations, before detectron2)
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from retclip.engine import (  # noqa: E402
    Trainer,
    check_config,
    evaluate_checkpoint,
    format_metrics,
    resolve_device,
    resume_or_load,
)

logger = logging.getLogger("retclip.train_net")


def setup(args):
    """Config = defaults + RetCLIP keys + file + command-line KEY VALUE pairs, checked and frozen."""
    cfg = get_cfg()
    retclip.add_retclip_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="retclip")
    resolve_device(cfg)
    check_config(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        results = evaluate_checkpoint(cfg, resume=args.resume)
        if comm.is_main_process():
            print(format_metrics(results))
        return results

    trainer = Trainer(cfg)
    resume_or_load(trainer, resume=args.resume)
    return trainer.train()  # each evaluation logs its PQ / mAP / mIoU summary


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
