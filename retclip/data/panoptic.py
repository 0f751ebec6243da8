"""Registration of COCO-panoptic-format datasets (COCO, ADE20k-150, the synthetic test sets).

Every panoptic dataset RetCLIP evaluates on is described the same way, FC-CLIP's way: all classes
are "stuff" classes for semantic segmentation (``stuff_classes`` lists every class, in contiguous
order), the thing subset keeps its own ``thing_classes``, and both dataset-id -> contiguous-id maps
are in the metadata. One loader and one registration function serve all of them.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from retclip.utils.errors import BadFileError

logger = logging.getLogger(__name__)

__all__ = ["register_panoptic_dataset", "load_panoptic_json", "panoptic_metadata", "check_paths_exist"]


def check_paths_exist(dataset_name: str, paths: Dict[str, Optional[str]], hint: Optional[str]) -> None:
    """Raise FileNotFoundError naming the first missing file or folder and how to make it.

    Args:
        paths: what each path is ("panoptic_json", ...) -> path; ``None`` entries are skipped.
        hint: the command or script that creates the files (shown in the error), or ``None``.
    """
    for what, path in paths.items():
        if path is not None and not os.path.exists(path):
            how = f"; create it with {hint}" if hint else ""
            raise FileNotFoundError(f"dataset {dataset_name!r}: {what} not found at {path}{how}")


def panoptic_metadata(categories: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Detectron2 metadata for a list of COCO-style categories (dicts with id, name, isthing).

    Names keep their comma-separated synonyms ("building, edifice"): the text classifier splits
    them. Contiguous ids follow the order of ``categories``.
    """
    if not categories:
        raise ValueError("panoptic_metadata: the category list is empty")
    seen_ids = set()
    for cat in categories:
        for key in ("id", "name", "isthing"):
            if key not in cat:
                raise KeyError(f"category {cat!r} has no {key!r}")
        if cat["id"] in seen_ids:
            raise ValueError(f"category id {cat['id']} appears twice")
        seen_ids.add(cat["id"])
    stuff_classes = [c["name"] for c in categories]
    stuff_colors = [list(c.get("color", [0, 0, 0])) for c in categories]
    stuff_map = {c["id"]: i for i, c in enumerate(categories)}
    things = [(i, c) for i, c in enumerate(categories) if c["isthing"]]
    return {
        "stuff_classes": stuff_classes,
        "stuff_colors": stuff_colors,
        "stuff_dataset_id_to_contiguous_id": stuff_map,
        "thing_classes": [c["name"] for _, c in things],
        "thing_colors": [list(c.get("color", [0, 0, 0])) for _, c in things],
        # Things keep the contiguous id of the full class list, as FC-CLIP's ADE registration
        # does, so panoptic category ids and semantic ids agree.
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in things},
    }


def load_panoptic_json(
    json_file: str, image_dir: str, gt_dir: str, semseg_dir: Optional[str], meta: Dict[str, Any]
) -> List[Dict[str, Any]]:
    """Read a COCO panoptic JSON into detectron2 dataset dicts.

    Category ids in ``segments_info`` become contiguous ids; ``isthing`` is kept. A segment whose
    category is not in the metadata is an error naming the image and the id.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"panoptic annotation file not found: {json_file}")
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise BadFileError(f"panoptic annotation file {json_file} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise BadFileError(f"panoptic annotation file {json_file} has no 'annotations' list")
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    images = {img["id"]: img for img in data.get("images", [])}
    dicts = []
    for number, ann in enumerate(data["annotations"]):
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise BadFileError(
                    f"panoptic annotation file {json_file}: annotation #{number} "
                    f"({ann.get('file_name', 'no file_name')}) has no {key!r}"
                )
        image_id = ann["image_id"]
        if image_id not in images:
            raise BadFileError(
                f"{json_file}: annotation {ann['file_name']} refers to image id {image_id!r} "
                "absent from 'images'"
            )
        img = images[image_id]
        segments = []
        for seg in ann["segments_info"]:
            cat = seg["category_id"]
            if cat not in stuff_map:
                raise BadFileError(
                    f"{json_file}: image {ann['file_name']} has segment {seg['id']} with category id {cat}, "
                    f"which is not among the dataset's {len(stuff_map)} categories"
                )
            seg = dict(seg)
            seg["isthing"] = cat in thing_map
            seg["category_id"] = thing_map[cat] if seg["isthing"] else stuff_map[cat]
            segments.append(seg)
        record = {
            "file_name": os.path.join(image_dir, img["file_name"]),
            "image_id": image_id,
            "height": img.get("height"),
            "width": img.get("width"),
            "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
            "segments_info": segments,
        }
        if semseg_dir is not None:
            record["sem_seg_file_name"] = os.path.join(semseg_dir, ann["file_name"])
        dicts.append(record)
    if not dicts:
        raise ValueError(f"{json_file} holds no annotations")
    return dicts


def register_panoptic_dataset(
    name: str,
    *,
    categories: Sequence[Dict[str, Any]],
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: Optional[str] = None,
    instances_json: Optional[str] = None,
    evaluator_type: str = "coco_panoptic_seg",
    label_divisor: int = 1000,
    ignore_label: int = 255,
    prepare_hint: Optional[str] = None,
    before_load: Optional[Callable[[], None]] = None,
    **extra_metadata: Any,
) -> None:
    """Register a COCO-panoptic-format dataset under ``name`` (lazy: files are read on first use).

    Args:
        categories: COCO-style category dicts (id, name with comma-separated synonyms, isthing,
            optional color); their order defines contiguous ids.
        image_root, panoptic_root, panoptic_json: images, RGB-encoded id PNGs and their JSON.
        sem_seg_root: semantic PNGs with contiguous ids and ``ignore_label`` (for mIoU).
        instances_json: COCO instance JSON of the thing classes (for mask AP).
        evaluator_type: "coco_panoptic_seg" or "ade20k_panoptic_seg" (both get PQ, AP and mIoU).
        prepare_hint: how to create missing files (named in the FileNotFoundError on first use).
        before_load: called before the files are read (e.g. to generate a synthetic dataset).
    """
    meta = panoptic_metadata(categories)
    paths = {
        "image folder": image_root,
        "panoptic PNG folder": panoptic_root,
        "panoptic JSON": panoptic_json,
        "semantic label folder": sem_seg_root,
    }

    def load() -> List[Dict[str, Any]]:
        if before_load is not None:
            before_load()
        check_paths_exist(name, paths, prepare_hint)
        return load_panoptic_json(panoptic_json, image_root, panoptic_root, sem_seg_root, meta)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type=evaluator_type,
        ignore_label=ignore_label,
        label_divisor=label_divisor,
        **meta,
        **extra_metadata,
    )
