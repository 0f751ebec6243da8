"""Datasets (COCO panoptic, ADE20k-150, synthetic), class names and training mappers."""
from retclip import compat as _compat

_compat.apply_all()  # before detectron2 is first imported

from .builtin import BUILTIN_DATASET_NAMES, datasets_root, register_builtin_datasets
from .categories import ade20k_150_categories, coco_panoptic_categories, read_class_names
from .mappers import DATASET_MAPPER_REGISTRY, build_dataset_mapper
from .panoptic import load_panoptic_json, panoptic_metadata, register_panoptic_dataset
from .synthetic_datasets import (
    SYNTHETIC_TEST,
    SYNTHETIC_TRAIN,
    ensure_dataset_files,
    register_synthetic_datasets,
)

__all__ = [
    "BUILTIN_DATASET_NAMES",
    "DATASET_MAPPER_REGISTRY",
    "SYNTHETIC_TEST",
    "SYNTHETIC_TRAIN",
    "ade20k_150_categories",
    "build_dataset_mapper",
    "coco_panoptic_categories",
    "datasets_root",
    "ensure_dataset_files",
    "load_panoptic_json",
    "panoptic_metadata",
    "read_class_names",
    "register_builtin_datasets",
    "register_panoptic_dataset",
    "register_synthetic_datasets",
]
