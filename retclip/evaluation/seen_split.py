"""Which classes of an evaluation dataset count as *seen* in training, for the metric split.

The rule is the one the model's ensemble uses (:func:`retclip.modeling.vocabulary.seen_class_mask`,
FC-CLIP's exact-synonym match), applied to the class lists in the two datasets' metadata, so the
seen/unseen PQ and mIoU describe the same split as the alpha/beta ensemble.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

from detectron2.data import MetadataCatalog

logger = logging.getLogger(__name__)

__all__ = ["seen_classes_for", "class_names_of"]


def class_names_of(dataset_name: str) -> List[str]:
    """All class names of a dataset, in contiguous order (``stuff_classes``, else ``thing_classes``)."""
    meta = MetadataCatalog.get(dataset_name)
    names = meta.get("stuff_classes") or meta.get("thing_classes")
    if not names:
        raise KeyError(f"dataset {dataset_name!r} has no stuff_classes/thing_classes in its metadata")
    return list(names)


def seen_classes_for(test_dataset: str, train_datasets: Sequence[str]) -> Optional[List[bool]]:
    """Per contiguous test class id: seen in training? ``None`` when there is no training set.

    The seen class names and counts are logged, so the split behind the numbers is inspectable.
    """
    if not train_datasets:
        return None
    from retclip.modeling.vocabulary import seen_class_mask

    train = [n for d in train_datasets for n in class_names_of(d)]
    test = class_names_of(test_dataset)
    seen = [bool(x) for x in seen_class_mask(train, test).tolist()]
    names = [n for n, s in zip(test, seen) if s]
    logger.info(
        "Seen classes of %s (synonym match with %s): %d of %d: %s",
        test_dataset,
        list(train_datasets),
        len(names),
        len(test),
        names,
    )
    return seen
