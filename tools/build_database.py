#!/usr/bin/env python
"""Build a RetCLIP feature database (paper §2.1): Grounding DINO boxes for each image's labels,
SAM masks, the model's CLIP dense map, mask pooling.

    python tools/build_database.py --config-file configs/database/ade20k_train_gdino_sam.yaml \
        --num-gpus 8 DATABASE_BUILD.OUTPUT_DIR /data/db/ade20k

Run it again with the same arguments after an interruption: it continues where it stopped. The
folder is locked while a build writes (a second build is refused, naming the first's host and
pid; a lock left by a dead process on this host is taken over; a lock from another host must be
deleted by hand once nothing runs there). A resume with other settings (SHARD_SIZE, DTYPE,
models, thresholds, source) is refused, naming each changed key.
Multi-node: --num-machines/--machine-rank/--dist-url as in tools/train_net.py. Without CUDA,
--num-gpus N starts N CPU processes joined by gloo.
"""
import json
import os
import sys

import retclip  # noqa: F401  (compat steps before detectron2)
from detectron2.engine import default_argument_parser
from detectron2.utils.logger import setup_logger

from retclip.database_builder import (
    launch_build,
    rank_and_world_size,
    run_build,
    setup_build_config,
)
from retclip.database_builder.settings import preflight
from retclip.retrieval.safedir import DatabaseLockedError
from retclip.utils.cli import UserError, run_tool

#: Errors of the build library whose message names the file, key or class at fault.
_USER_ERRORS = (ValueError, KeyError, DatabaseLockedError)


def build_rank(args):
    """Logging (console + <database>/build/log.txt), then this rank's part of the build."""
    rank, _ = rank_and_world_size()
    out = setup_build_config(args.config_file, args.opts).DATABASE_BUILD.OUTPUT_DIR
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


def main(argv):
    """Check the output folder (another builder's lock, changed settings) before any worker
    starts or any file is written, then run the build on every rank."""
    args = default_argument_parser().parse_args(argv)
    if args.eval_only or args.resume:
        raise UserError("build_database.py has no --eval-only/--resume: a build always resumes")
    try:
        preflight(setup_build_config(args.config_file, args.opts))
        launch_build(
            build_rank,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except _USER_ERRORS as e:
        raise UserError(e.args[0] if e.args else str(e)) from e
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
