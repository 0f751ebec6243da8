"""Deterministic synthetic datasets in real COCO-panoptic format, for tests and for trying
RetCLIP end to end without downloading anything.

Each image has two or three stuff bands and a few textured "thing" shapes. Every class has its
own colour and stripe texture, so a model can learn them. Two class sets share some names and
not others: ``TRAIN_CLASSES`` (COCO-like ids, things first) and ``TEST_CLASSES`` (ADE-like
0-based ids with scattered thing ids), so seen/unseen logic can be tested. Files written:

    <root>/<split>/images/<n>.jpg           RGB JPEG
    <root>/<split>/panoptic/<n>.png         RGB-encoded segment ids (id = R + 256 G + 256^2 B)
    <root>/<split>/panoptic.json            COCO panoptic JSON (categories with isthing)
    <root>/<split>/semantic/<n>.png         contiguous class ids, 255 = ignore
    <root>/<split>/instances.json           COCO instance JSON (RLE masks) of the thing classes
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "TRAIN_CLASSES",
    "TEST_CLASSES",
    "SyntheticSplit",
    "make_synthetic_panoptic",
    "register_synthetic_panoptic",
    "make_and_register_synthetic",
]

# name (with synonyms), isthing, colour (RGB), stripe period in pixels
TRAIN_CLASSES: List[Dict[str, Any]] = [
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60], "period": 4},
    {"id": 3, "name": "car", "isthing": 1, "color": [0, 0, 142], "period": 6},
    {"id": 17, "name": "cat", "isthing": 1, "color": [255, 180, 0], "period": 3},
    {"id": 47, "name": "cup", "isthing": 1, "color": [120, 60, 200], "period": 5},
    {"id": 125, "name": "grass", "isthing": 0, "color": [40, 160, 40], "period": 7},
    {"id": 184, "name": "sky", "isthing": 0, "color": [110, 170, 240], "period": 0},
    {"id": 199, "name": "wall, brick wall", "isthing": 0, "color": [150, 110, 90], "period": 9},
]

TEST_CLASSES: List[Dict[str, Any]] = [
    {"id": 0, "name": "wall", "isthing": 0, "color": [150, 110, 90], "period": 9},
    {"id": 1, "name": "sky", "isthing": 0, "color": [110, 170, 240], "period": 0},
    {"id": 2, "name": "person, individual", "isthing": 1, "color": [220, 20, 60], "period": 4},
    {"id": 3, "name": "grass", "isthing": 0, "color": [40, 160, 40], "period": 7},
    {"id": 4, "name": "lamp", "isthing": 1, "color": [250, 240, 120], "period": 2},
    {"id": 5, "name": "car, auto", "isthing": 1, "color": [0, 0, 142], "period": 6},
    {"id": 6, "name": "mountain, mount", "isthing": 0, "color": [90, 90, 60], "period": 11},
    {"id": 7, "name": "sofa, couch", "isthing": 1, "color": [30, 120, 110], "period": 8},
]


@dataclass(frozen=True)
class SyntheticSplit:
    """Paths of one generated split and the categories it uses."""

    root: str
    image_dir: str
    panoptic_dir: str
    panoptic_json: str
    semantic_dir: str
    instances_json: str
    categories: Tuple[Dict[str, Any], ...]
    num_images: int


def _texture(cat: Dict[str, Any], h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(cat["color"], dtype=np.float32)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    period = cat.get("period", 0)
    if period:
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = ((xx + yy) // period) % 2
        img += (stripes[..., None] * 40.0 - 20.0)
    img += rng.normal(0.0, 6.0, size=img.shape)
    return img


def _encode_ids(ids: np.ndarray) -> np.ndarray:
    rgb = np.zeros(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = (ids // 256) % 256
    rgb[..., 2] = (ids // 256 // 256) % 256
    return rgb


def _bbox(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _shape_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    cy, cx = rng.integers(h // 5, h - h // 5), rng.integers(w // 6, w - w // 6)
    ry, rx = rng.integers(max(3, h // 10), max(4, h // 4)), rng.integers(max(3, w // 12), max(4, w // 5))
    yy, xx = np.mgrid[0:h, 0:w]
    if rng.random() < 0.5:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)


def _render(
    categories: Sequence[Dict[str, Any]], h: int, w: int, rng: np.random.Generator, allow_crowd: bool
) -> Tuple[np.ndarray, np.ndarray, List[Dict[str, Any]]]:
    """Returns image (h,w,3) uint8, segment id map (h,w) int64 and segment descriptions."""
    stuff = [c for c in categories if not c["isthing"]]
    things = [c for c in categories if c["isthing"]]
    image = np.zeros((h, w, 3), dtype=np.float32)
    seg_ids = np.zeros((h, w), dtype=np.int64)
    segments: List[Dict[str, Any]] = []
    next_id = int(rng.integers(1, 50))

    def add(mask: np.ndarray, cat: Dict[str, Any], iscrowd: int) -> None:
        nonlocal next_id
        if not mask.any():
            return
        next_id += int(rng.integers(1, 40)) * 257
        image[mask] = _texture(cat, h, w, rng)[mask]
        seg_ids[mask] = next_id
        segments.append({"id": next_id, "cat": cat, "iscrowd": iscrowd})

    n_bands = int(rng.integers(2, 4))
    cuts = np.sort(rng.choice(np.arange(h // 5, h - h // 5), size=n_bands - 1, replace=False))
    edges = [0, *cuts.tolist(), h]
    band_cats = rng.choice(len(stuff), size=n_bands, replace=n_bands > len(stuff))
    for i in range(n_bands):
        mask = np.zeros((h, w), dtype=bool)
        mask[edges[i] : edges[i + 1]] = True
        add(mask, stuff[band_cats[i]], 0)
    # A thin unlabeled strip (segment id 0 = void) tests the ignore handling.
    seg_ids[:, :2] = 0
    image[:, :2] = 0.0
    for _ in range(int(rng.integers(1, 4))):
        cat = things[int(rng.integers(len(things)))]
        iscrowd = int(allow_crowd and rng.random() < 0.15)
        add(_shape_mask(h, w, rng), cat, iscrowd)
    # Segments fully covered by later ones disappear: keep what is visible.
    visible = []
    for seg in segments:
        area = int((seg_ids == seg["id"]).sum())
        if area > 0:
            seg["area"] = area
            visible.append(seg)
    return np.clip(image, 0, 255).astype(np.uint8), seg_ids, visible


def _atomic_json(path: str, payload: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def make_synthetic_panoptic(
    root: str,
    split: str = "train",
    categories: Sequence[Dict[str, Any]] = TRAIN_CLASSES,
    num_images: int = 8,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
    allow_crowd: bool = True,
) -> SyntheticSplit:
    """Write one split of the synthetic dataset under ``root/split`` and return its paths.

    The output depends only on the arguments (same seed, same bytes).
    """
    from pycocotools import mask as mask_utils

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if height < 16 or width < 16:
        raise ValueError(f"images must be at least 16x16, got {height}x{width}")
    base = os.path.join(root, split)
    dirs = {k: os.path.join(base, k) for k in ("images", "panoptic", "semantic")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    contiguous = {c["id"]: i for i, c in enumerate(categories)}
    rng = np.random.default_rng(seed)
    images, pan_anns, inst_anns = [], [], []
    for index in range(num_images):
        image_id = index + 1
        stem = f"{split}_{index:05d}"
        image, seg_ids, segments = _render(categories, height, width, rng, allow_crowd)
        Image.fromarray(image).save(os.path.join(dirs["images"], stem + ".jpg"), quality=95)
        Image.fromarray(_encode_ids(seg_ids)).save(os.path.join(dirs["panoptic"], stem + ".png"))
        semantic = np.full((height, width), 255, dtype=np.uint8)
        segments_info = []
        for seg in segments:
            mask = seg_ids == seg["id"]
            semantic[mask] = contiguous[seg["cat"]["id"]]
            info = {
                "id": seg["id"],
                "category_id": seg["cat"]["id"],
                "iscrowd": seg["iscrowd"],
                "area": seg["area"],
                "bbox": _bbox(mask),
            }
            segments_info.append(info)
            if seg["cat"]["isthing"]:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                inst_anns.append(
                    {
                        "id": len(inst_anns) + 1,
                        "image_id": image_id,
                        "category_id": seg["cat"]["id"],
                        "segmentation": rle,
                        "area": seg["area"],
                        "bbox": info["bbox"],
                        "iscrowd": seg["iscrowd"],
                    }
                )
        Image.fromarray(semantic).save(os.path.join(dirs["semantic"], stem + ".png"))
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": height, "width": width})
        pan_anns.append({"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_info})
    cats = [{k: c[k] for k in ("id", "name", "isthing", "color")} for c in categories]
    cats = [dict(c, supercategory="synthetic") for c in cats]
    panoptic_json = os.path.join(base, "panoptic.json")
    instances_json = os.path.join(base, "instances.json")
    _atomic_json(panoptic_json, {"images": images, "annotations": pan_anns, "categories": cats})
    _atomic_json(
        instances_json,
        {"images": images, "annotations": inst_anns, "categories": [c for c in cats if c["isthing"]]},
    )
    return SyntheticSplit(
        root=base,
        image_dir=dirs["images"],
        panoptic_dir=dirs["panoptic"],
        panoptic_json=panoptic_json,
        semantic_dir=dirs["semantic"],
        instances_json=instances_json,
        categories=tuple(dict(c) for c in categories),
        num_images=num_images,
    )


def register_synthetic_panoptic(name: str, split: SyntheticSplit, evaluator_type: str = "coco_panoptic_seg") -> str:
    """Register a generated split with detectron2 under ``name`` (replacing an older one)."""
    from retclip.data.panoptic import register_panoptic_dataset  # compat steps before detectron2

    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_panoptic_dataset(
        name,
        categories=split.categories,
        image_root=split.image_dir,
        panoptic_root=split.panoptic_dir,
        panoptic_json=split.panoptic_json,
        sem_seg_root=split.semantic_dir,
        instances_json=split.instances_json,
        evaluator_type=evaluator_type,
    )
    return name


def make_and_register_synthetic(
    root: str, prefix: str = "synthetic", num_train: int = 8, num_test: int = 4, height: int = 96, width: int = 128, seed: int = 0
) -> Tuple[str, str]:
    """Generate and register a COCO-like train split and an ADE-like test split.

    Returns the registered names ``(prefix + "_train", prefix + "_test")``.
    """
    train = make_synthetic_panoptic(root, "train", TRAIN_CLASSES, num_train, height, width, seed)
    test = make_synthetic_panoptic(root, "test", TEST_CLASSES, num_test, height, width, seed + 1, allow_crowd=False)
    return (
        register_synthetic_panoptic(prefix + "_train", train, "coco_panoptic_seg"),
        register_synthetic_panoptic(prefix + "_test", test, "ade20k_panoptic_seg"),
    )
