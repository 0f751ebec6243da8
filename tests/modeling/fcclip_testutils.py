"""Builders shared by the FC-CLIP tests: tiny models from configs/tests and metadata-only datasets."""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import torch
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from retclip.config import load_config
from retclip.testing.synthetic import TEST_CLASSES, TRAIN_CLASSES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIGS = {
    "convnext": os.path.join(REPO, "configs", "tests", "tiny_fcclip_convnext.yaml"),
    "resnet": os.path.join(REPO, "configs", "tests", "tiny_fcclip_resnet.yaml"),
}
TRAIN_NAME, TEST_NAME = "fcclip_tests_meta_train", "fcclip_tests_meta_test"
#: State-dict key lists of the released bytedance/fc-clip checkpoints (see fcclip-facts §1).
TSV_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def released_rows(tsv_name: str, prefix: str = "") -> List[Tuple[str, str, str]]:
    """(key without ``prefix``, shape, dtype) of the keys starting with ``prefix``, in file order."""
    rows = []
    with open(os.path.join(TSV_DIR, tsv_name)) as f:
        for line in f:
            key, shape, dtype = line.rstrip("\n").split("\t")
            if key.startswith(prefix):
                rows.append((key[len(prefix) :], shape, dtype))
    return rows


def feature_shapes(channels: List[int]) -> Dict[str, ShapeSpec]:
    """Backbone output shapes res2..res5 (strides 4..32) with the given channels."""
    return {f"res{i + 2}": ShapeSpec(channels=c, stride=4 * 2**i) for i, c in enumerate(channels)}


def register_metadata() -> None:
    """Metadata-only datasets with the synthetic class sets (names, things), idempotent."""
    for name, cats in ((TRAIN_NAME, TRAIN_CLASSES), (TEST_NAME, TEST_CLASSES)):
        meta = MetadataCatalog.get(name)
        if hasattr(meta, "stuff_classes"):
            continue
        meta.set(
            stuff_classes=[c["name"] for c in cats],
            thing_classes=[c["name"] for c in cats if c["isthing"]],
            thing_dataset_id_to_contiguous_id={
                c["id"]: i for i, c in enumerate(cats) if c["isthing"]
            },
        )


def tiny_cfg(kind: str):
    cfg = load_config(TINY_CONFIGS[kind], freeze=False)
    cfg.DATASETS.TRAIN = (TRAIN_NAME,)
    cfg.DATASETS.TEST = (TEST_NAME,)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def build_tiny(kind: str, seed: int = 0):
    register_metadata()
    torch.manual_seed(seed)
    return build_model(tiny_cfg(kind))


def image(h: int, w: int, seed: int = 0) -> Dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
        "height": h,
        "width": w,
    }


def synthetic_train_classes() -> List[str]:
    return [c["name"] for c in TRAIN_CLASSES]


def synthetic_test_classes() -> List[str]:
    return [c["name"] for c in TEST_CLASSES]
