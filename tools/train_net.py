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

from retclip.utils.cli import UserError, run_tool  # noqa: E402  (light: --help imports no torch)
from retclip.utils.launch_args import launcher_argument_parser  # noqa: E402

logger = logging.getLogger("retclip.train_net")


def load_checked_config(args):
    """Config = defaults + RetCLIP keys + file + KEY VALUE pairs, CPU fallback applied, checked;
    every mistake (file, key, value, dataset, weights) a UserError naming it."""
    import retclip.modeling  # noqa: F401  (registers meta-architectures and datasets)
    from retclip.engine import check_config
    from retclip.utils.tool_config import load_tool_config

    cfg = load_tool_config(args.config_file, args.opts, freeze=False)
    try:
        check_config(cfg)
    except KeyError as e:  # an unregistered dataset name (the message lists the registered ones)
        raise UserError(e.args[0] if e.args else str(e)) from e
    except ValueError as e:  # NUM_CLASSES against the training set
        raise UserError(str(e)) from e
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(os.path.expanduser(weights)):
        raise UserError(f"MODEL.WEIGHTS {weights}: no such file")
    return cfg


def setup(args):
    """The checked config, frozen, with logging and detectron2's default setup."""
    from detectron2.engine import default_setup
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    cfg = load_checked_config(args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="retclip")
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def run(args):
    """One process's training or evaluation (what ``launch`` runs on every worker)."""
    import retclip.modeling  # noqa: F401  (registers the meta-architectures)
    from detectron2.utils import comm

    from retclip.engine import Trainer, evaluate_checkpoint, format_metrics, resume_or_load

    cfg = setup(args)
    if args.eval_only:
        results = evaluate_checkpoint(cfg, resume=args.resume)
        if comm.is_main_process():
            print(format_metrics(results))
        return results

    trainer = Trainer(cfg)
    resume_or_load(trainer, resume=args.resume)
    return trainer.train()  # each evaluation logs its PQ / mAP / mIoU summary


def main(argv=None) -> int:
    """Check the GPU count and the config here, before any worker starts, then launch."""
    args = launcher_argument_parser(__doc__).parse_args(argv)
    from retclip.utils.device import check_num_gpus

    check_num_gpus(args.num_gpus)
    if not args.config_file:
        raise UserError("--config-file is required")
    if args.num_gpus * args.num_machines > 1:
        load_checked_config(args)  # fail here, not in every worker
    import retclip.engine  # noqa: F401  (compat steps before detectron2)
    from detectron2.engine import launch

    print("Command Line Args:", args)
    launch(
        run,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
