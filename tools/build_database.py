#!/usr/bin/env python
"""Build a RetCLIP feature database (paper §2.1): Grounding DINO boxes for each image's labels,
SAM masks, the model's CLIP dense map, mask pooling.

    python tools/build_database.py --config-file configs/database/ade20k_train_gdino_sam.yaml \
        --num-gpus 8 DATABASE_BUILD.OUTPUT_DIR /data/db/ade20k

Run it again with the same arguments after an interruption: it continues where it stopped.
Multi-node: --num-machines/--machine-rank/--dist-url as in tools/train_net.py. Without CUDA,
--num-gpus N starts N CPU processes joined by gloo.
"""
import json
import logging
import os
import sys

import retclip  # noqa: F401  (compat steps before detectron2)
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser
from detectron2.utils.logger import setup_logger

from retclip import add_retclip_config
from retclip.database_builder import build_database_builder, build_source, launch_build, rank_and_world_size

logger = logging.getLogger("retclip.build_database")


def setup(args):
    """Config = defaults + file + KEY VALUE overrides; a log file next to the database."""
    cfg = get_cfg()
    add_retclip_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    rank, _ = rank_and_world_size()
    out = cfg.DATABASE_BUILD.OUTPUT_DIR
    setup_logger(output=os.path.join(out, "build", "log.txt") if out else None, distributed_rank=rank, name="retclip")
    setup_logger(distributed_rank=rank, name="retclip.build_database")
    return cfg


def main(args):
    cfg = setup(args)
    rank, world_size = rank_and_world_size()
    builder = build_database_builder(cfg)
    source = build_source(cfg)
    report = builder.build(source, rank=rank, world_size=world_size)
    if report is not None:
        summary = {k: report[k] for k in ("vectors", "images_per_second", "forwards", "forwards_per_processed_image")}
        summary["unreadable_images"] = len(report["images"]["unreadable"])
        summary["images_without_labels"] = len(report["images"]["no_labels"])
        print(json.dumps(summary, indent=1))
    return report


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    if args.eval_only or args.resume:
        sys.exit("build_database.py has no --eval-only/--resume: a build always resumes")
    launch_build(
        main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,)
    )
