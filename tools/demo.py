#!/usr/bin/env python
"""Panoptic segmentation of your images with your vocabulary (and a feature database).

    python tools/demo.py --config-file configs/retclip/retclip_convnext_large_ade20k.yaml \
        --input photo.jpg folder/ --vocabulary "cat, sofa;couch, lamp" \
        --database /data/databases/ade20k_train_convnext_large_d_320 --output out/ \
        MODEL.WEIGHTS /weights/fcclip_cocopan.pth

Writes <name>_panoptic.png and <name>_segments.json per image into --output, <name> being the
image's path relative to the inputs' common folder (so a/x.jpg and b/x.jpg do not collide).
CPU: on a machine without a CUDA GPU it runs on CPU by itself (slower), saying so once.
GPU: with one, it runs on MODEL.DEVICE (cuda by default).
Images that cannot be read are skipped and listed at the end (exit code 2); other mistakes end
in one line naming the file, key or class (exit code 2; --debug for the traceback).
"""
import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retclip.utils.cli import UserError, int_at_least, run_tool  # noqa: E402  (light: --help and mistakes stay fast)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a configs/fcclip or configs/retclip YAML")
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument("--vocabulary", required=True,
                        help="comma-separated classes, synonyms joined by ';', ':stuff' after a stuff class "
                             "(\"cat, sofa;couch, sky:stuff\"), or a file (one class per line; a value with "
                             "'/' or a .txt/.csv suffix must exist)")
    parser.add_argument("--database", default=None, help="feature database (sets MODEL.RETCLIP.DATABASE)")
    parser.add_argument("--output", required=True, help="folder for pictures and JSON")
    parser.add_argument("--top-neighbours", type=int_at_least(0), default=5, help="neighbours listed per segment (>= 0)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def setup_cfg(args: argparse.Namespace):
    """Config file + overrides (+ --database), CPU fallback applied; mistakes named."""
    from retclip.utils.tool_config import load_tool_config

    cfg = load_tool_config(args.config_file, args.opts, freeze=False)
    if args.database is not None:
        database = os.path.abspath(os.path.expanduser(args.database))
        if not os.path.isdir(database):
            raise UserError(f"--database {args.database}: no such folder")
        if cfg.MODEL.META_ARCHITECTURE != "RetCLIP":
            raise UserError(f"--database needs a RetCLIP config; {args.config_file} builds {cfg.MODEL.META_ARCHITECTURE}")
        cfg.MODEL.RETCLIP.DATABASE = database
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(os.path.expanduser(weights)):
        raise UserError(f"MODEL.WEIGHTS {weights}: no such file")
    cfg.freeze()
    return cfg


def _build_predictor(cfg, args: argparse.Namespace, classes, things):
    from detectron2.modeling import build_model

    from retclip.checkpoint import load_model_weights
    from retclip.demo import DemoPredictor

    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        load_model_weights(model, cfg.MODEL.WEIGHTS)
    else:
        logging.getLogger("retclip.demo").warning(
            "MODEL.WEIGHTS is empty: the model has random weights (predictions are meaningless)")
    predictor = DemoPredictor(model, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, args.top_neighbours)
    predictor.set_vocabulary(classes, things)
    return predictor


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from retclip.demo_inputs import list_images, output_stems, parse_vocabulary

    from retclip.vocabulary_syntax import split_kinds

    classes, things = split_kinds(parse_vocabulary(args.vocabulary))
    images = list_images(args.input)
    stems = output_stems(images)
    output = Path(args.output).expanduser()
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {args.output}: exists and is not a folder")
    cfg = setup_cfg(args)

    import retclip.modeling  # noqa: F401  (compat steps, then the meta-architectures' registration)
    from detectron2.utils.logger import setup_logger

    from retclip.utils.image_io import ImageReadError

    setup_logger(name="retclip")
    predictor = _build_predictor(cfg, args, classes, things)
    failed = []
    for path in images:
        try:
            prediction = predictor(path)
        except ImageReadError as e:
            logging.getLogger("retclip.demo").warning("skipped: %s", e)
            failed.append(str(e))
            continue
        segments = predictor.explain(prediction)
        written = predictor.save(prediction, segments, output, stems[path])
        print(f"{path}: {len(segments)} segments -> {written['picture']}, {written['segments']}")
    if failed:
        print(f"demo.py: error: {len(failed)} of {len(images)} images could not be read:", file=sys.stderr)
        for message in failed:
            print(f"  {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
