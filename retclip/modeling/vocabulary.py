"""Class vocabularies: synonyms, seen/unseen split and thing ids, from names or dataset metadata.

A class name carries its synonyms separated by commas ("person, child, girl"), as in FC-CLIP's
``*_with_prompt_eng.txt`` files. FC-CLIP decides that a test class is *seen* when any of its
synonyms equals (case-sensitively) a synonym of a training class; the evaluation reuses
:func:`seen_class_mask` so the seen/unseen split of the metrics is the one the ensemble used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, FrozenSet, List, Optional, Sequence, Tuple

import torch

logger = logging.getLogger(__name__)


def split_synonyms(class_name: str) -> List[str]:
    """Synonyms of one class name, FC-CLIP's rule: ``", "`` becomes ``","``, then split on ``","``.

    Raises:
        ValueError: when the name is not a string or yields an empty synonym (e.g. "cat,,dog").
    """
    if not isinstance(class_name, str):
        raise ValueError(
            f"class name must be a str, got {type(class_name).__name__}: {class_name!r}"
        )
    synonyms = class_name.replace(", ", ",").split(",")
    if any(not s.strip() for s in synonyms):
        raise ValueError(f"class name {class_name!r} has an empty synonym (check its commas)")
    return synonyms


def seen_class_mask(train_classes: Sequence[str], test_classes: Sequence[str]) -> torch.Tensor:
    """Which test classes were seen in training (FC-CLIP's category-overlapping rule).

    Args:
        train_classes: training class names, synonyms comma-separated.
        test_classes: test class names, synonyms comma-separated (K of them).
    Returns:
        Bool tensor (K,): True when a synonym of the test class equals a training synonym
        (exact, case-sensitive string match after the comma split).
    """
    train_synonyms = {s for name in train_classes for s in split_synonyms(name)}
    seen = [not train_synonyms.isdisjoint(split_synonyms(name)) for name in test_classes]
    return torch.tensor(seen, dtype=torch.bool)


def class_names_from_metadata(metadata: Any) -> List[str]:
    """The class names a dataset is evaluated with: ``stuff_classes``, else ``thing_classes``.

    Panoptic datasets list every class (things included) in ``stuff_classes``, as FC-CLIP expects.

    Raises:
        KeyError: naming the dataset when its metadata has neither list.
    """
    for key in ("stuff_classes", "thing_classes"):
        names = getattr(metadata, key, None) if hasattr(metadata, key) else None
        if names:
            return list(names)
    name = getattr(metadata, "name", "<unnamed>")
    raise KeyError(
        f"dataset {name!r} has no 'stuff_classes' or 'thing_classes' in its MetadataCatalog entry; "
        "register the dataset (or call model.set_vocabulary(class_names)) before inference"
    )


def thing_ids_from_metadata(metadata: Any) -> FrozenSet[int]:
    """Contiguous ids of thing classes (values of ``thing_dataset_id_to_contiguous_id``)."""
    if not hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
        return frozenset()
    return frozenset(int(v) for v in metadata.thing_dataset_id_to_contiguous_id.values())


@dataclass(frozen=True)
class Vocabulary:
    """The classes a model scores at inference.

    Attributes:
        class_names: K names, synonyms comma-separated (the cache key of text embeddings).
        seen: bool tensor (K,), True for classes seen in training (ensemble weight alpha,
            else beta).
        thing_ids: contiguous ids of thing classes (panoptic: stuff segments of one class merge;
            instance output keeps only things when panoptic is on).
    """

    class_names: Tuple[str, ...]
    seen: torch.Tensor
    thing_ids: FrozenSet[int]

    def __len__(self) -> int:
        return len(self.class_names)


def thing_ids_of(
    class_names: Sequence[str], thing_classes: Optional[Sequence[str]]
) -> Optional[List[int]]:
    """Contiguous ids of ``thing_classes`` within ``class_names`` (None stays None: all things).

    Raises:
        ValueError: a thing class is not in ``class_names``.
    """
    if thing_classes is None:
        return None
    unknown = [t for t in thing_classes if t not in class_names]
    if unknown:
        raise ValueError(f"thing_classes {unknown} are not in class_names")
    return [class_names.index(t) for t in thing_classes]


def make_vocabulary(
    class_names: Sequence[str],
    *,
    train_classes: Optional[Sequence[str]] = None,
    seen: Optional[Sequence[bool]] = None,
    thing_ids: Optional[Sequence[int]] = None,
    allow_duplicates: bool = False,
    source: str = "custom vocabulary",
) -> Vocabulary:
    """Check a vocabulary and decide its seen classes.

    Args:
        class_names: K class names with comma-separated synonyms.
        train_classes: training class names; used for the seen mask when ``seen`` is None.
        seen: explicit seen flags (K,); when both are None every class counts as unseen.
        thing_ids: contiguous ids of thing classes; None means every class is a thing.
        allow_duplicates: dataset vocabularies may repeat a name (logged); user ones may not.
        source: where the names come from, for messages (e.g. a dataset name).
    Raises:
        ValueError: empty vocabulary, empty synonym, duplicate names, or a ``seen``/``thing_ids``
            that does not fit K.
    """
    names = tuple(class_names) if not isinstance(class_names, str) else None
    if names is None:
        raise ValueError(f"{source}: class_names must be a list of names, got a single str")
    if len(names) == 0:
        raise ValueError(f"{source}: the vocabulary is empty; give at least one class name")
    for name in names:
        split_synonyms(name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        message = (
            f"{source}: duplicate class names {duplicates} (the first of each wins argmax ties)"
        )
        if not allow_duplicates:
            raise ValueError(message + "; remove or rename them")
        logger.warning(message)
    if seen is not None:
        mask = torch.as_tensor(list(seen), dtype=torch.bool)
        if mask.shape != (len(names),):
            raise ValueError(f"{source}: seen has {mask.numel()} flags for {len(names)} classes")
    elif train_classes is not None:
        mask = seen_class_mask(train_classes, names)
    else:
        mask = torch.zeros(len(names), dtype=torch.bool)
    things = (
        frozenset(range(len(names))) if thing_ids is None else frozenset(int(i) for i in thing_ids)
    )
    bad = sorted(i for i in things if not 0 <= i < len(names))
    if bad:
        raise ValueError(f"{source}: thing ids {bad} are outside 0..{len(names) - 1}")
    seen_names = [n for n, s in zip(names, mask.tolist()) if s]
    logger.info(
        "%s: %d of %d classes seen in training: %s", source, len(seen_names), len(names), seen_names
    )
    return Vocabulary(class_names=names, seen=mask, thing_ids=things)


def vocabulary_from_metadata(test_metadata: Any, train_classes: Sequence[str]) -> Vocabulary:
    """FC-CLIP's default vocabulary: the test dataset's classes, seen by the training classes."""
    return make_vocabulary(
        class_names_from_metadata(test_metadata),
        train_classes=train_classes,
        thing_ids=sorted(thing_ids_from_metadata(test_metadata)),
        allow_duplicates=True,
        source=f"dataset {getattr(test_metadata, 'name', '<unnamed>')!r}",
    )
