#!/usr/bin/env python
"""Panoptic segmentation of your images with your vocabulary (and a feature database).

    python tools/demo.py --config-file configs/retclip/retclip_convnext_large_ade20k.yaml \
        --input photo.jpg folder/ --vocabulary "cat, sofa;couch, lamp" \
        --database /data/databases/ade20k_train_convnext_large_d_320 --output out/ \
        MODEL.WEIGHTS /weights/fcclip_cocopan.pth

Writes <stem>_panoptic.png and <stem>_segments.json per image into --output. Works on CPU.
"""
import argparse
import logging
import os
import sys


import retclip  # noqa: E402  (compat steps before detectron2)
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from retclip.demo import DemoPredictor, list_images, parse_vocabulary  # noqa: E402
from retclip.vocabulary_syntax import split_kinds  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a configs/fcclip or configs/retclip YAML")
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument("--vocabulary", required=True,
                        help="comma-separated classes, synonyms joined by ';', ':stuff' after a stuff class "
                             "(\"cat, sofa;couch, sky:stuff\"), or a file")
    parser.add_argument("--database", default=None, help="feature database (sets MODEL.RETCLIP.DATABASE)")
    parser.add_argument("--output", required=True, help="folder for pictures and JSON")
    parser.add_argument("--top-neighbours", type=int, default=5, help="neighbours listed per segment")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def setup_cfg(args: argparse.Namespace):
    cfg = get_cfg()
    retclip.add_retclip_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.database is not None:
        if cfg.MODEL.META_ARCHITECTURE != "RetCLIP":
            raise ValueError(f"--database needs a RetCLIP config; {args.config_file} builds {cfg.MODEL.META_ARCHITECTURE}")
        cfg.MODEL.RETCLIP.DATABASE = os.path.abspath(os.path.expanduser(args.database))
    cfg.freeze()
    return cfg


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="retclip")
    logger = logging.getLogger("retclip.demo")
    cfg = setup_cfg(args)
    classes, things = split_kinds(parse_vocabulary(args.vocabulary))
    images = list_images(args.input)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        from retclip.checkpoint import RetCLIPCheckpointer

        RetCLIPCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: the model has random weights (predictions are meaningless)")
    predictor = DemoPredictor(model, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, args.top_neighbours)
    predictor.set_vocabulary(classes, things)
    from pathlib import Path

    output = Path(args.output).expanduser()
    for path in images:
        prediction = predictor(path)
        segments = predictor.explain(prediction)
        written = predictor.save(prediction, segments, output, path.stem)
        print(f"{path}: {len(segments)} segments -> {written['picture']}, {written['segments']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
