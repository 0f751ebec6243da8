#!/usr/bin/env python
"""Build a RetCLIP feature database (paper §2.1): Grounding DINO boxes for each image's labels,
SAM masks, the model's CLIP dense map, mask pooling.

    python tools/build_database.py --config-file configs/database/ade20k_train_gdino_sam.yaml \
        --num-gpus 8 DATABASE_BUILD.OUTPUT_DIR /data/db/ade20k

Run it again with the same arguments after an interruption: it continues where it stopped.
Multi-node: --num-machines/--machine-rank/--dist-url as in tools/train_net.py. Without CUDA,
--num-gpus N starts N CPU processes joined by gloo. Array jobs: --shard-id K --num-shards N builds
part K of N under OUTPUT_DIR/parts (each job may also use --num-gpus); when all are done,
tools/inspect_database.py finalize OUTPUT_DIR joins them (docs/SCALING.md).
"""
import json
import os
import sys

import retclip  # noqa: F401  (compat steps before detectron2)
from detectron2.engine import default_argument_parser
from detectron2.utils.logger import setup_logger

from retclip.database_builder import (
    launch_build,
    part_dir,
    rank_and_world_size,
    run_build,
    setup_build_config,
)


def main(args):
    """Logging (console + <database>/build/log.txt), then this rank's part of the build."""
    rank, _ = rank_and_world_size()
    build = setup_build_config(args.config_file, args.opts).DATABASE_BUILD
    out = part_dir(build.OUTPUT_DIR, build.ARRAY_JOB.SHARD_ID, build.ARRAY_JOB.NUM_SHARDS)
    if out:
        os.makedirs(os.path.join(out, "build"), exist_ok=True)
    setup_logger(
        output=os.path.join(out, "build", f"log_rank{rank}.txt") if out else None,
        distributed_rank=rank,
        name="retclip",
    )
    report = run_build(args.config_file, args.opts)
    if report is not None:
        summary = {
            k: report[k]
            for k in ("vectors", "images_per_second", "forwards", "forwards_per_processed_image")
        }
        summary["unreadable_images"] = len(report["images"]["unreadable"])
        summary["images_without_labels"] = len(report["images"]["no_labels"])
        print(json.dumps(summary, indent=1))
    return report


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--shard-id", type=int, default=None,
                        help="array job index (DATABASE_BUILD.ARRAY_JOB.SHARD_ID)")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="array job count (DATABASE_BUILD.ARRAY_JOB.NUM_SHARDS)")
    args = parser.parse_args()
    for flag, key in (("shard_id", "SHARD_ID"), ("num_shards", "NUM_SHARDS")):
        if getattr(args, flag) is not None:
            args.opts = [*args.opts, f"DATABASE_BUILD.ARRAY_JOB.{key}", str(getattr(args, flag))]
    if args.eval_only or args.resume:
        sys.exit("build_database.py has no --eval-only/--resume: a build always resumes")
    launch_build(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
