"""Conversions of the official ADE20k downloads into the layout RetCLIP registers.

Inputs under ``<root>/ADEChallengeData2016`` (SceneParsing release + the 2017 instance release):

- ``images/{training,validation}/*.jpg``
- ``annotations/{training,validation}/*.png``: uint8, 0 = other, 1..150 = the 150 classes
- ``annotations_instance/{training,validation}/*.png``: RGB, R = instance-class id (1..100, 0 =
  none), G = instance number; ``ade20k_instance_catid_mapping.txt`` maps instance-class ids to
  150-class ids (lines ``<instance id> <150-class id, 1-based> <full ADE id>`` after a header).

Outputs: ``annotations_detectron2/`` (labels minus 1, 0 -> 255), ``ade20k_panoptic_{train,val}/``
+ ``.json`` (COCO panoptic: stuff from the semantic labels, then things from the instance PNG;
0-based category ids; image id = file stem) and ``ade20k_instance_{train,val}.json`` (COCO
instances, RLE, 0-based ADE ids of the 100 thing classes).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .categories import ade20k_150_categories
from .prepare_utils import (
    atomic_save_png,
    atomic_write_json,
    id2rgb,
    merge_parts,
    read_png,
    resolve_root,
    run_per_image,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ADE_SPLITS",
    "read_catid_mapping",
    "semantic_to_detectron2",
    "ade_instances",
    "panoptic_record",
    "instance_record",
    "ade_command_line",
    "part_path",
    "build_split_json",
]

ADE_SPLITS = {"train": "training", "val": "validation"}
LABEL_DIVISOR = 1000


def read_catid_mapping(path: str) -> Dict[int, int]:
    """Instance-class id (R channel value) -> 0-based ADE-150 id, from the mapping text file.

    Raises:
        FileNotFoundError / ValueError naming the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"instance category mapping not found: {path} (ade20k_instance_catid_mapping.txt from the "
            "ADE20k instance-segmentation release; see datasets/README.md)"
        )
    mapping = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
                continue  # header or blank line
            mapping[int(parts[0])] = int(parts[1]) - 1
    if not mapping:
        raise ValueError(f"{path}: no '<instance id> <150-class id>' lines found")
    return mapping


def semantic_to_detectron2(src: str, dst: str) -> None:
    """ADE label PNG (0 = other, 1..150) -> contiguous 0..149 with 255 for 'other'."""
    labels = read_png(src)
    if labels.ndim != 2:
        raise ValueError(f"{src}: expected a single-channel label PNG, got shape {labels.shape}")
    atomic_save_png((labels.astype(np.int64) - 1).astype(np.uint8), dst)  # 0 - 1 wraps to 255


def ade_instances(inst_png: str, mapping: Dict[int, int]) -> List[Tuple[int, np.ndarray]]:
    """``[(ade_class_id, bool mask), ...]`` for the instances of one instance PNG.

    Raises:
        KeyError: naming the file and the R value when an instance class is not in ``mapping``.
    """
    rgb = read_png(inst_png)
    if rgb.ndim != 3 or rgb.shape[2] < 2:
        raise ValueError(f"{inst_png}: expected an RGB instance PNG, got shape {rgb.shape}")
    r, g = rgb[..., 0].astype(np.int64), rgb[..., 1].astype(np.int64)
    things = {c["id"] for c in ade20k_150_categories() if c["isthing"]}
    out = []
    for key in np.unique(r * 256 + g):
        cat, inst = int(key) // 256, int(key) % 256
        if cat == 0:
            continue
        if cat not in mapping:
            raise KeyError(f"{inst_png}: instance class id {cat} is not in the instance category mapping")
        cls = mapping[cat]
        if cls not in things:
            raise ValueError(f"{inst_png}: instance class {cat} maps to ADE class {cls}, which is not a thing class")
        out.append((cls, (r == cat) & (g == inst)))
    return out


def _bbox(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def panoptic_record(sem_png: str, inst_png: str, mapping: Dict[int, int], out_png: str) -> Dict[str, Any]:
    """Build one panoptic PNG (written atomically) and return its JSON annotation record."""
    sem = read_png(sem_png).astype(np.int64)
    instances = ade_instances(inst_png, mapping)
    if instances and instances[0][1].shape != sem.shape:
        raise ValueError(f"{inst_png} is {instances[0][1].shape} but {sem_png} is {sem.shape}")
    isthing = {c["id"]: c["isthing"] for c in ade20k_150_categories()}
    pan = np.zeros(sem.shape, np.int64)
    cats: Dict[int, int] = {}
    for value in np.unique(sem):
        cls = int(value) - 1
        if cls < 0 or isthing[cls]:
            continue  # 'other', or a thing class (things come from the instance PNG)
        sid = (cls + 1) * LABEL_DIVISOR
        pan[sem == value] = sid
        cats[sid] = cls
    per_class: Dict[int, int] = {}
    for cls, mask in instances:
        per_class[cls] = per_class.get(cls, 0) + 1
        sid = (cls + 1) * LABEL_DIVISOR + per_class[cls]
        pan[mask] = sid
        cats[sid] = cls
    segments = []
    for sid, cls in cats.items():
        mask = pan == sid
        if mask.any():
            segments.append(
                {"id": sid, "category_id": cls, "iscrowd": 0, "area": int(mask.sum()), "bbox": _bbox(mask)}
            )
    atomic_save_png(id2rgb(pan), out_png)
    stem = os.path.splitext(os.path.basename(out_png))[0]
    h, w = sem.shape
    return {
        "image": {"id": stem, "file_name": stem + ".jpg", "height": h, "width": w},
        "annotation": {"image_id": stem, "file_name": stem + ".png", "segments_info": segments},
    }


def instance_record(inst_png: str, mapping: Dict[int, int]) -> Dict[str, Any]:
    """COCO instance annotations (RLE) of one image, ids assigned later at merge time."""
    from pycocotools import mask as mask_utils

    stem = os.path.splitext(os.path.basename(inst_png))[0]
    anns, shape = [], None
    for cls, mask in ade_instances(inst_png, mapping):
        shape = mask.shape
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {"image_id": stem, "category_id": cls, "segmentation": rle, "area": int(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0}
        )
    if shape is None:
        shape = read_png(inst_png).shape[:2]
    return {"image": {"id": stem, "file_name": stem + ".jpg", "height": shape[0], "width": shape[1]}, "annotations": anns}


def write_json_from_parts(parts: List[Dict[str, Any]], path: str, kind: str) -> None:
    """Assemble the final panoptic (``kind="panoptic"``) or instance JSON from per-image parts."""
    cats = ade20k_150_categories()
    if kind == "panoptic":
        payload = {
            "images": [p["image"] for p in parts],
            "annotations": [p["annotation"] for p in parts],
            "categories": [{k: c[k] for k in ("id", "name", "isthing", "color")} for c in cats],
        }
    else:
        anns = [dict(a, id=i + 1) for i, a in enumerate(a for p in parts for a in p["annotations"])]
        payload = {
            "images": [p["image"] for p in parts],
            "annotations": anns,
            "categories": [{"id": c["id"], "name": c["name"]} for c in cats if c["isthing"]],
        }
    atomic_write_json(payload, path)


def ade_command_line(
    argv: Optional[Sequence[str]], description: str
) -> Tuple[str, Dict[int, int], int]:
    """The command line of the panoptic and instance scripts: (ADEChallengeData2016 directory,
    instance-class mapping, worker processes)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS; one of the two is required)")
    parser.add_argument("--catid-mapping", help="ade20k_instance_catid_mapping.txt")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    ade = os.path.join(resolve_root(args.root), "ADEChallengeData2016")
    mapping = read_catid_mapping(
        args.catid_mapping or os.path.join(ade, "ade20k_instance_catid_mapping.txt")
    )
    return ade, mapping, args.workers


def part_path(parts_dir: str, png: str) -> str:
    """The per-image part file of ``png`` (its stem + ".json") in ``parts_dir``."""
    return os.path.join(parts_dir, os.path.splitext(os.path.basename(png))[0] + ".json")


def build_split_json(
    fn: Callable[[str], None],
    files: Sequence[str],
    parts_dir: str,
    out_json: str,
    kind: str,
    desc: str,
    workers: int = 1,
) -> int:
    """One split of a resumable conversion: ``fn(png)`` writes each image's part (images whose
    part exists are skipped), then the parts become ``out_json`` (``kind`` as in
    :func:`write_json_from_parts`) and are removed. A split whose JSON exists without parts was
    finished before and is skipped. Returns how many images ran."""
    if os.path.isfile(out_json) and not os.path.isdir(parts_dir):
        logger.info("%s exists, skipping it", out_json)
        return 0
    os.makedirs(parts_dir, exist_ok=True)
    done = run_per_image(fn, files, lambda f: os.path.isfile(part_path(parts_dir, f)), desc, workers)
    write_json_from_parts(merge_parts(part_path(parts_dir, f) for f in files), out_json, kind)
    shutil.rmtree(parts_dir)
    return done
