#!/usr/bin/env python
"""ADE20k instance annotations (100 thing classes) as COCO instance JSON with RLE masks.

    python datasets/prepare_ade20k_ins_seg.py [--root DIR] [--catid-mapping FILE] [--workers N]

Reads ADEChallengeData2016/annotations_instance/{training,validation}/*.png; writes
ADEChallengeData2016/ade20k_instance_{train,val}.json with 0-based ADE-150 category ids and the
file stem as image id (the same ids as the panoptic JSON). Resumable through per-image parts.
"""
import argparse
import functools
import glob
import logging
import os
import shutil
import sys

from retclip.data.prepare_ade20k import ADE_SPLITS, instance_record, read_catid_mapping, write_json_from_parts
from retclip.data.prepare_utils import atomic_write_json, merge_parts, resolve_root, run_per_image


def _one(inst_png, parts_dir, mapping):
    stem = os.path.splitext(os.path.basename(inst_png))[0]
    atomic_write_json(instance_record(inst_png, mapping), os.path.join(parts_dir, stem + ".json"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--catid-mapping", help="ade20k_instance_catid_mapping.txt")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    ade = os.path.join(resolve_root(args.root), "ADEChallengeData2016")
    mapping = read_catid_mapping(args.catid_mapping or os.path.join(ade, "ade20k_instance_catid_mapping.txt"))
    total = 0
    for split, dirname in ADE_SPLITS.items():
        inst_dir = os.path.join(ade, "annotations_instance", dirname)
        if not os.path.isdir(inst_dir):
            raise FileNotFoundError(f"{inst_dir} not found (see datasets/README.md for the ADE20k downloads)")
        out_json = os.path.join(ade, f"ade20k_instance_{split}.json")
        parts_dir = os.path.join(ade, f".ade20k_instance_{split}.parts")
        if os.path.isfile(out_json) and not os.path.isdir(parts_dir):
            logging.info("%s exists, skipping the %s split", out_json, split)
            continue
        os.makedirs(parts_dir, exist_ok=True)
        files = sorted(glob.glob(os.path.join(inst_dir, "*.png")))
        part = lambda f, p=parts_dir: os.path.join(p, os.path.splitext(os.path.basename(f))[0] + ".json")  # noqa: E731
        fn = functools.partial(_one, parts_dir=parts_dir, mapping=mapping)
        total += run_per_image(fn, files, lambda f: os.path.isfile(part(f)), f"instances {dirname}", args.workers)
        write_json_from_parts(merge_parts(part(f) for f in files), out_json, "instance")
        shutil.rmtree(parts_dir)
    return total


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
