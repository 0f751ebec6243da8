#!/usr/bin/env python
"""ADE20k-150 semantic labels for detectron2: annotations/*.png minus 1, 'other' (0) -> 255.

    python datasets/prepare_ade20k_sem_seg.py [--root DIR] [--workers N]

Reads and writes under $DETECTRON2_DATASETS/ADEChallengeData2016 (or --root). Resumable:
finished PNGs are skipped; every PNG is written atomically.
"""
import argparse
import functools
import glob
import logging
import os
import sys

from retclip.data.prepare_ade20k import ADE_SPLITS, semantic_to_detectron2
from retclip.data.prepare_utils import resolve_root, run_per_image


def _convert(src, out_dir):
    semantic_to_detectron2(src, os.path.join(out_dir, os.path.basename(src)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS; one of the two is required)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    ade = os.path.join(resolve_root(args.root), "ADEChallengeData2016")
    total = 0
    for dirname in ADE_SPLITS.values():
        src_dir = os.path.join(ade, "annotations", dirname)
        if not os.path.isdir(src_dir):
            raise FileNotFoundError(f"{src_dir} not found: unzip ADEChallengeData2016.zip under the dataset root")
        out_dir = os.path.join(ade, "annotations_detectron2", dirname)
        files = sorted(glob.glob(os.path.join(src_dir, "*.png")))
        done = lambda f, d=out_dir: os.path.isfile(os.path.join(d, os.path.basename(f)))  # noqa: E731
        total += run_per_image(functools.partial(_convert, out_dir=out_dir), files, done, f"sem_seg {dirname}", args.workers)
    return total


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
