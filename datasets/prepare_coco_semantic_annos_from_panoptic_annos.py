#!/usr/bin/env python
"""COCO semantic labels (133 contiguous classes, 255 = void) from the panoptic annotations.

    python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py [--root DIR] [--workers N]

Reads coco/annotations/panoptic_{train,val}2017.json and coco/panoptic_{train,val}2017/*.png
(from panoptic_annotations_trainval2017.zip); writes coco/panoptic_semseg_{train,val}2017/*.png.
Contiguous ids follow the 133 COCO panoptic categories sorted by id (things 0..79, stuff
80..132); every segment is painted, crowd regions included. Resumable; atomic PNG writes.
Only the mIoU evaluation reads these labels.
"""
import argparse
import functools
import json
import logging
import os
import sys

import numpy as np

from retclip.data.categories import coco_panoptic_categories
from retclip.data.prepare_utils import atomic_save_png, read_png, resolve_root, rgb2id, run_per_image


def _convert(ann, pan_dir, out_dir, id_map):
    src = os.path.join(pan_dir, ann["file_name"])
    ids = rgb2id(read_png(src))
    out = np.full(ids.shape, 255, dtype=np.uint8)
    for seg in ann["segments_info"]:
        if seg["category_id"] not in id_map:
            raise KeyError(f"{src}: segment {seg['id']} has unknown COCO category id {seg['category_id']}")
        out[ids == seg["id"]] = id_map[seg["category_id"]]
    known = {s["id"] for s in ann["segments_info"]} | {0}
    unknown = sorted(set(np.unique(ids).tolist()) - known)
    if unknown:
        raise ValueError(f"{src}: segment id(s) {unknown[:10]} are in the PNG but not in the JSON")
    atomic_save_png(out, os.path.join(out_dir, ann["file_name"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS; one of the two is required)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    coco = os.path.join(resolve_root(args.root), "coco")
    id_map = {c["id"]: i for i, c in enumerate(coco_panoptic_categories())}
    total = 0
    for split in ("train2017", "val2017"):
        json_file = os.path.join(coco, "annotations", f"panoptic_{split}.json")
        pan_dir = os.path.join(coco, f"panoptic_{split}")
        for path in (json_file, pan_dir):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} not found: unzip panoptic_annotations_trainval2017.zip (see datasets/README.md)")
        out_dir = os.path.join(coco, f"panoptic_semseg_{split}")
        with open(json_file) as f:
            anns = json.load(f)["annotations"]
        fn = functools.partial(_convert, pan_dir=pan_dir, out_dir=out_dir, id_map=id_map)
        done = lambda a, d=out_dir: os.path.isfile(os.path.join(d, a["file_name"]))  # noqa: E731
        total += run_per_image(fn, anns, done, f"semantic {split}", args.workers)
    return total


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
