"""Registration of COCO panoptic and ADE20k-150 under FC-CLIP's dataset names.

Everything lives under one root, ``$DETECTRON2_DATASETS`` (``~`` expanded), as in detectron2.
Nothing is read relative to the working directory: when the variable is unset, the datasets are
still registered (so configs naming them load), but using one is an error that says the variable
is unset; the error for a missing file says which root was used. Registration only records paths: the files are read on first
``DatasetCatalog.get``, where a missing file raises FileNotFoundError naming it and the
``datasets/prepare_*.py`` script that makes it. See ``datasets/README.md`` for the layout.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg

from .categories import ade20k_150_categories, coco_panoptic_categories
from .panoptic import check_paths_exist, panoptic_metadata, register_panoptic_dataset

logger = logging.getLogger(__name__)

__all__ = ["datasets_root", "register_builtin_datasets", "BUILTIN_DATASET_NAMES"]

_README = "datasets/README.md"

# name -> (image dir, panoptic PNG dir, panoptic JSON, semantic dir, instance JSON)
_COCO_PANOPTIC = {
    "openvocab_coco_2017_train_panoptic_with_sem_seg": (
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_semseg_train2017",
        "coco/annotations/instances_train2017.json",
    ),
    "openvocab_coco_2017_val_panoptic_with_sem_seg": (
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_semseg_val2017",
        "coco/annotations/instances_val2017.json",
    ),
}
_ADE_SPLITS = {"train": "training", "val": "validation"}

BUILTIN_DATASET_NAMES: Tuple[str, ...] = tuple(_COCO_PANOPTIC) + tuple(
    f"openvocab_ade20k_{kind}_{split}"
    for kind in ("panoptic", "sem_seg", "instance")
    for split in _ADE_SPLITS
)


#: Stands for the root in registered paths while DETECTRON2_DATASETS is unset (never opened).
UNSET_ROOT = "$DETECTRON2_DATASETS"


def datasets_root() -> Tuple[Optional[str], str]:
    """The absolute dataset root (None when DETECTRON2_DATASETS is unset) and a phrase saying
    where it came from (for error messages)."""
    env = os.environ.get("DETECTRON2_DATASETS")
    if env:
        return os.path.abspath(os.path.expanduser(env)), f"DETECTRON2_DATASETS={env!r}"
    return None, "DETECTRON2_DATASETS is unset"


def _root_is_set(root: str, dataset_name: str) -> Callable[[], None]:
    """A check run before a dataset's files are read: refuse the placeholder root."""

    def check() -> None:
        if root == UNSET_ROOT:
            raise FileNotFoundError(
                f"dataset {dataset_name!r} needs DETECTRON2_DATASETS, which is unset: set it to the "
                f"folder that holds coco/ and ADEChallengeData2016/ (layout in {_README}); nothing is "
                "read from the current folder"
            )

    return check


def _hint(script: str, origin: str) -> str:
    return f"python datasets/{script} (dataset root: {origin}; layout in {_README})"


def _register_coco_panoptic(root: str, origin: str) -> None:
    categories = coco_panoptic_categories()
    for name, (images, pan, pan_json, sem, inst) in _COCO_PANOPTIC.items():
        register_panoptic_dataset(
            name,
            categories=categories,
            image_root=os.path.join(root, images),
            panoptic_root=os.path.join(root, pan),
            panoptic_json=os.path.join(root, pan_json),
            sem_seg_root=os.path.join(root, sem),
            instances_json=os.path.join(root, inst),
            evaluator_type="coco_panoptic_seg",
            prepare_hint=_hint("prepare_coco_semantic_annos_from_panoptic_annos.py", origin),
            before_load=_root_is_set(root, name),
        )


def _register_ade20k(root: str, origin: str) -> None:
    categories = ade20k_150_categories()
    ade = os.path.join(root, "ADEChallengeData2016")
    for split, dirname in _ADE_SPLITS.items():
        image_root = os.path.join(ade, "images", dirname)
        sem_root = os.path.join(ade, "annotations_detectron2", dirname)
        inst_json = os.path.join(ade, f"ade20k_instance_{split}.json")
        register_panoptic_dataset(
            f"openvocab_ade20k_panoptic_{split}",
            categories=categories,
            image_root=image_root,
            panoptic_root=os.path.join(ade, f"ade20k_panoptic_{split}"),
            panoptic_json=os.path.join(ade, f"ade20k_panoptic_{split}.json"),
            sem_seg_root=sem_root,
            instances_json=inst_json,
            evaluator_type="ade20k_panoptic_seg",
            prepare_hint=_hint("prepare_ade20k_pan_seg.py", origin),
            before_load=_root_is_set(root, f"openvocab_ade20k_panoptic_{split}"),
        )
        sem_name, inst_name = f"openvocab_ade20k_sem_seg_{split}", f"openvocab_ade20k_instance_{split}"
        _register_ade_sem_seg(sem_name, image_root, sem_root, categories, origin, _root_is_set(root, sem_name))
        _register_ade_instance(inst_name, image_root, inst_json, categories, origin, _root_is_set(root, inst_name))


def _register_ade_sem_seg(
    name: str, image_root: str, gt_root: str, categories: List[Dict[str, Any]], origin: str,
    before_load: Callable[[], None],
) -> None:
    def load() -> List[Dict[str, Any]]:
        before_load()
        hint = _hint("prepare_ade20k_sem_seg.py", origin)
        check_paths_exist(name, {"image folder": image_root, "semantic label folder": gt_root}, hint)
        return load_sem_seg(gt_root, image_root, gt_ext="png", image_ext="jpg")

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        stuff_classes=[c["name"] for c in categories],
        stuff_colors=[c["color"] for c in categories],
        image_root=image_root,
        sem_seg_root=gt_root,
        evaluator_type="sem_seg",
        ignore_label=255,
    )


def _register_ade_instance(
    name: str, image_root: str, json_file: str, categories: List[Dict[str, Any]], origin: str,
    before_load: Callable[[], None],
) -> None:
    things = [c for c in categories if c["isthing"]]

    def load() -> List[Dict[str, Any]]:
        before_load()
        hint = _hint("prepare_ade20k_ins_seg.py", origin)
        check_paths_exist(name, {"image folder": image_root, "instance JSON": json_file}, hint)
        # No dataset name: load_coco_json would overwrite the metadata with the JSON's names.
        dicts = load_coco_json(json_file, image_root, None)
        for record in dicts:
            for ann in record.get("annotations", []):
                if ann["category_id"] not in id_map:
                    raise KeyError(
                        f"{json_file}: image {record['file_name']} has category id "
                        f"{ann['category_id']}, which is not one of the 100 ADE20k thing ids"
                    )
                ann["category_id"] = id_map[ann["category_id"]]
        return dicts

    id_map = {c["id"]: i for i, c in enumerate(things)}
    DatasetCatalog.register(name, load)
    meta = panoptic_metadata(things)
    MetadataCatalog.get(name).set(
        thing_classes=meta["thing_classes"],
        thing_colors=meta["thing_colors"],
        # Thing ids (scattered in 0..149) -> 0..99, the order load_coco_json also uses.
        thing_dataset_id_to_contiguous_id=id_map,
        image_root=image_root,
        json_file=json_file,
        evaluator_type="coco",
    )


def register_builtin_datasets(root: Optional[str] = None) -> str:
    """(Re-)register every built-in dataset under ``root`` (default: :func:`datasets_root`).

    Returns the absolute root used (:data:`UNSET_ROOT` while DETECTRON2_DATASETS is unset). Safe
    to call again, e.g. after changing DETECTRON2_DATASETS.
    """
    if root is None:
        found, origin = datasets_root()
        root = UNSET_ROOT if found is None else found
    else:
        root, origin = os.path.abspath(os.path.expanduser(root)), f"root={root!r}"
    for name in BUILTIN_DATASET_NAMES:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    _register_coco_panoptic(root, origin)
    _register_ade20k(root, origin)
    return root


register_builtin_datasets()
