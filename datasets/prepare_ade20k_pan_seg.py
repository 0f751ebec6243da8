#!/usr/bin/env python
"""ADE20k-150 panoptic annotations in COCO panoptic format, from the semantic and instance PNGs.

    python datasets/prepare_ade20k_pan_seg.py [--root DIR] [--catid-mapping FILE] [--workers N]

Needs ADEChallengeData2016/{annotations,annotations_instance}/{training,validation} and
ade20k_instance_catid_mapping.txt (default: ADEChallengeData2016/ade20k_instance_catid_mapping.txt).
Writes ADEChallengeData2016/ade20k_panoptic_{train,val}/ and ade20k_panoptic_{train,val}.json.
Resumable: each image leaves a small part file after its PNG; the JSON is assembled at the end.
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
    panoptic_record,
    part_path,
)
from retclip.data.prepare_utils import atomic_write_json


def _one(sem_png, inst_dir, out_dir, parts_dir, mapping):
    stem = os.path.splitext(os.path.basename(sem_png))[0]
    record = panoptic_record(sem_png, os.path.join(inst_dir, stem + ".png"), mapping, os.path.join(out_dir, stem + ".png"))
    atomic_write_json(record, part_path(parts_dir, sem_png))


def main(argv=None):
    ade, mapping, workers = ade_command_line(argv, __doc__)
    total = 0
    for split, dirname in ADE_SPLITS.items():
        sem_dir = os.path.join(ade, "annotations", dirname)
        inst_dir = os.path.join(ade, "annotations_instance", dirname)
        for d in (sem_dir, inst_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"{d} not found (see datasets/README.md for the ADE20k downloads)")
        out_dir = os.path.join(ade, f"ade20k_panoptic_{split}")
        parts_dir = out_dir + ".parts"
        total += build_split_json(
            functools.partial(_one, inst_dir=inst_dir, out_dir=out_dir, parts_dir=parts_dir, mapping=mapping),
            sorted(glob.glob(os.path.join(sem_dir, "*.png"))),
            parts_dir,
            os.path.join(ade, f"ade20k_panoptic_{split}.json"),
            "panoptic",
            f"panoptic {dirname}",
            workers,
        )
    return total


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
