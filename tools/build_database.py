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
--num-gpus N starts N CPU processes joined by gloo. Array jobs: --shard-id K --num-shards N builds
part K of N under OUTPUT_DIR/parts (each job may also use --num-gpus); when all are done,
tools/inspect_database.py finalize OUTPUT_DIR joins them (docs/SCALING.md).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retclip.utils.cli import UserError, run_tool  # noqa: E402  (light: --help imports no torch)
from retclip.utils.launch_args import launcher_argument_parser  # noqa: E402


def run(args):
    """Logging (console + <database>/build/log.txt), then this rank's part of the build."""
    from retclip.database_builder import part_dir, rank_and_world_size, run_build, setup_build_config
    from detectron2.utils.logger import setup_logger  # after retclip's compat steps

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
        unreadable = report["images"]["unreadable"]
        if unreadable:  # the database is complete without them; say which, and exit non-zero
            listed = "".join(f"\n  {u['path']}: {u['error']}" for u in unreadable)
            raise UserError(f"the database is built, but {len(unreadable)} image(s) could not be read "
                            f"and were skipped:{listed}")
    return report


def main(argv=None) -> int:
    """Check the arguments, the GPU count and the config before any worker starts, then launch."""
    parser = launcher_argument_parser(__doc__)
    parser.add_argument("--shard-id", type=int, default=None,
                        help="array job index (DATABASE_BUILD.ARRAY_JOB.SHARD_ID)")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="array job count (DATABASE_BUILD.ARRAY_JOB.NUM_SHARDS)")
    args = parser.parse_args(argv)
    for flag, key in (("shard_id", "SHARD_ID"), ("num_shards", "NUM_SHARDS")):
        if getattr(args, flag) is not None:
            args.opts = [*args.opts, f"DATABASE_BUILD.ARRAY_JOB.{key}", str(getattr(args, flag))]
    if args.eval_only or args.resume:
        raise UserError("build_database.py has no --eval-only/--resume: a build always resumes")
    if not args.config_file:
        raise UserError("--config-file is required")
    from retclip.database_builder import launch_build, setup_build_config
    from retclip.database_builder.settings import preflight
    from retclip.retrieval.safedir import DatabaseLockedError
    from retclip.utils.device import check_num_gpus

    check_num_gpus(args.num_gpus, cpu_processes=True)
    try:
        # A bad file, key or value, another builder's lock or changed settings stop here, once,
        # before any worker starts or any file is written.
        preflight(setup_build_config(args.config_file, args.opts))
        launch_build(
            run,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (ValueError, KeyError, DatabaseLockedError) as e:  # the build library names the culprit
        raise UserError(e.args[0] if e.args else str(e)) from e
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
