#!/usr/bin/env python
"""ADE20k-150 panoptic annotations in COCO panoptic format, from the semantic and instance PNGs.

    python datasets/prepare_ade20k_pan_seg.py [--root DIR] [--catid-mapping FILE] [--workers N]

Needs ADEChallengeData2016/{annotations,annotations_instance}/{training,validation} and
ade20k_instance_catid_mapping.txt (default: ADEChallengeData2016/ade20k_instance_catid_mapping.txt).
Writes ADEChallengeData2016/ade20k_panoptic_{train,val}/ and ade20k_panoptic_{train,val}.json.
Resumable: each image leaves a small part file after its PNG; the JSON is assembled at the end.
"""
import argparse
import functools
import glob
import logging
import os
import shutil
import sys

from retclip.data.prepare_ade20k import ADE_SPLITS, panoptic_record, read_catid_mapping, write_json_from_parts
from retclip.data.prepare_utils import atomic_write_json, merge_parts, resolve_root, run_per_image


def _one(sem_png, inst_dir, out_dir, parts_dir, mapping):
    stem = os.path.splitext(os.path.basename(sem_png))[0]
    record = panoptic_record(sem_png, os.path.join(inst_dir, stem + ".png"), mapping, os.path.join(out_dir, stem + ".png"))
    atomic_write_json(record, os.path.join(parts_dir, stem + ".json"))


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
        sem_dir = os.path.join(ade, "annotations", dirname)
        inst_dir = os.path.join(ade, "annotations_instance", dirname)
        for d in (sem_dir, inst_dir):
            if not os.path.isdir(d):
                raise FileNotFoundError(f"{d} not found (see datasets/README.md for the ADE20k downloads)")
        out_dir = os.path.join(ade, f"ade20k_panoptic_{split}")
        out_json = os.path.join(ade, f"ade20k_panoptic_{split}.json")
        parts_dir = out_dir + ".parts"
        if os.path.isfile(out_json) and not os.path.isdir(parts_dir):
            logging.info("%s exists, skipping the %s split", out_json, split)
            continue
        os.makedirs(parts_dir, exist_ok=True)
        files = sorted(glob.glob(os.path.join(sem_dir, "*.png")))
        part = lambda f, p=parts_dir: os.path.join(p, os.path.splitext(os.path.basename(f))[0] + ".json")  # noqa: E731
        fn = functools.partial(_one, inst_dir=inst_dir, out_dir=out_dir, parts_dir=parts_dir, mapping=mapping)
        total += run_per_image(fn, files, lambda f: os.path.isfile(part(f)), f"panoptic {dirname}", args.workers)
        write_json_from_parts(merge_parts(part(f) for f in files), out_json, "panoptic")
        shutil.rmtree(parts_dir)
    return total


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
