"""The synthetic datasets ``retclip_synthetic_train`` / ``retclip_synthetic_test``, by name.

They let anyone run ``tools/train_net.py`` with no download: a COCO-like training split and an
ADE-like test split (see :mod:`retclip.testing.synthetic`). Registration records paths only; the
files are generated on first use into ``$RETCLIP_SYNTHETIC_DIR`` (default
``~/.cache/retclip/synthetic``), in a sub-folder named after the generation parameters, written
to a temporary folder and renamed into place so concurrent or killed runs never see half a
dataset. Generation is deterministic (fixed seed), so every run sees the same bytes.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Dict, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .panoptic import register_panoptic_dataset

logger = logging.getLogger(__name__)

__all__ = ["SYNTHETIC_TRAIN", "SYNTHETIC_TEST", "register_synthetic_datasets", "ensure_dataset_files"]

SYNTHETIC_TRAIN = "retclip_synthetic_train"
SYNTHETIC_TEST = "retclip_synthetic_test"

#: Generation parameters; the cache folder name encodes them.
_PARAMS = {"num_train": 16, "num_test": 6, "height": 96, "width": 128, "seed": 0}

#: dataset name -> callable that makes its files exist (used by evaluators before reading them).
_ENSURE: Dict[str, "_Generator"] = {}


def _default_root() -> str:
    base = os.environ.get("RETCLIP_SYNTHETIC_DIR") or os.path.join("~", ".cache", "retclip", "synthetic")
    return os.path.abspath(os.path.expanduser(base))


class _Generator:
    """Generates both splits once into ``folder`` (atomically)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self) -> None:
        if os.path.isfile(os.path.join(self.folder, "DONE")):
            return
        from retclip.testing.synthetic import TEST_CLASSES, TRAIN_CLASSES, make_synthetic_panoptic

        parent = os.path.dirname(self.folder)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
        logger.info("Generating the synthetic datasets into %s", self.folder)
        p = _PARAMS
        make_synthetic_panoptic(tmp, "train", TRAIN_CLASSES, p["num_train"], p["height"], p["width"], p["seed"])
        make_synthetic_panoptic(
            tmp, "test", TEST_CLASSES, p["num_test"], p["height"], p["width"], p["seed"] + 1, allow_crowd=False
        )
        with open(os.path.join(tmp, "DONE"), "w") as f:
            f.write("ok\n")
        try:
            os.rename(tmp, self.folder)
        except OSError:
            # Another process finished first (the folder exists): keep its copy.
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.isfile(os.path.join(self.folder, "DONE")):
                raise


def ensure_dataset_files(dataset_name: str) -> None:
    """Make the files of a generated dataset exist; a no-op for datasets read from disk."""
    generator = _ENSURE.get(dataset_name)
    if generator is not None:
        generator()


def register_synthetic_datasets(root: Optional[str] = None) -> str:
    """(Re-)register the two synthetic datasets with files under ``root``; returns their folder."""
    from retclip.testing.synthetic import TEST_CLASSES, TRAIN_CLASSES

    p = _PARAMS
    tag = f"v1_n{p['num_train']}-{p['num_test']}_{p['height']}x{p['width']}_s{p['seed']}"
    folder = os.path.join(os.path.abspath(os.path.expanduser(root)) if root else _default_root(), tag)
    generator = _Generator(folder)
    for name, split, cats, etype in (
        (SYNTHETIC_TRAIN, "train", TRAIN_CLASSES, "coco_panoptic_seg"),
        (SYNTHETIC_TEST, "test", TEST_CLASSES, "ade20k_panoptic_seg"),
    ):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        base = os.path.join(folder, split)
        register_panoptic_dataset(
            name,
            categories=[{k: c[k] for k in ("id", "name", "isthing", "color")} for c in cats],
            image_root=os.path.join(base, "images"),
            panoptic_root=os.path.join(base, "panoptic"),
            panoptic_json=os.path.join(base, "panoptic.json"),
            sem_seg_root=os.path.join(base, "semantic"),
            instances_json=os.path.join(base, "instances.json"),
            evaluator_type=etype,
            before_load=generator,
        )
        _ENSURE[name] = generator
    return folder


register_synthetic_datasets()
