#!/usr/bin/env python
"""ADE20k instance annotations (100 thing classes) as COCO instance JSON with RLE masks.

    python datasets/prepare_ade20k_ins_seg.py [--root DIR] [--catid-mapping FILE] [--workers N]

Reads ADEChallengeData2016/annotations_instance/{training,validation}/*.png; writes
ADEChallengeData2016/ade20k_instance_{train,val}.json with 0-based ADE-150 category ids and the
file stem as image id (the same ids as the panoptic JSON). Resumable through per-image parts.
"""
import functools
import glob
import logging
import os
import sys

from retclip.data.prepare_ade20k import (
    ADE_SPLITS,
    ade_command_line,
    build_split_json,
    instance_record,
    part_path,
)
from retclip.data.prepare_utils import atomic_write_json


def _one(inst_png, parts_dir, mapping):
    atomic_write_json(instance_record(inst_png, mapping), part_path(parts_dir, inst_png))


def main(argv=None):
    ade, mapping, workers = ade_command_line(argv, __doc__)
    total = 0
    for split, dirname in ADE_SPLITS.items():
        inst_dir = os.path.join(ade, "annotations_instance", dirname)
        if not os.path.isdir(inst_dir):
            raise FileNotFoundError(f"{inst_dir} not found (see datasets/README.md for the ADE20k downloads)")
        parts_dir = os.path.join(ade, f".ade20k_instance_{split}.parts")
        total += build_split_json(
            functools.partial(_one, parts_dir=parts_dir, mapping=mapping),
            sorted(glob.glob(os.path.join(inst_dir, "*.png"))),
            parts_dir,
            os.path.join(ade, f"ade20k_instance_{split}.json"),
            "instance",
            f"instances {dirname}",
            workers,
        )
    return total


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
