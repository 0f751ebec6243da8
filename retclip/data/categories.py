"""Class names (with synonyms) and category facts of the datasets RetCLIP registers.

The names live in data files inside the package (``retclip/data/class_names/``), read with
``importlib.resources`` so nothing depends on the current directory:

- ``<dataset>.txt``: one class a line, ``<dataset id>:<synonym>,<synonym>,...`` (FC-CLIP's format,
  minus its ``invalid_class_id`` filler lines);
- ``<dataset>_categories.json``: ``[{"id", "isthing", "color"}, ...]`` in contiguous order.

A synonym list is kept as one comma-separated name ("sofa,couch"), which is how the text
classifier and :func:`retclip.modeling.vocabulary.split_synonyms` expect it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Dict, List, Tuple

__all__ = ["read_class_names", "read_categories", "coco_panoptic_categories", "ade20k_150_categories"]

_PACKAGE = "retclip.data.class_names"


def _read_text(filename: str) -> str:
    path = resources.files(_PACKAGE).joinpath(filename)
    if not path.is_file():
        raise FileNotFoundError(f"class-name file {filename!r} is missing from the package {_PACKAGE}")
    return path.read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def read_class_names(filename: str) -> Tuple[Tuple[int, str], ...]:
    """Parse an ``id:syn1,syn2`` file shipped in the package.

    Returns:
        ``((dataset_id, "syn1,syn2"), ...)`` in file order.
    Raises:
        ValueError: naming the file and line when a line is malformed or an id repeats.
    """
    out: List[Tuple[int, str]] = []
    seen = set()
    for lineno, line in enumerate(_read_text(filename).splitlines(), 1):
        if not line.strip():
            continue
        head, sep, names = line.partition(":")
        if not sep or not head.strip().isdigit() or not names.strip():
            raise ValueError(f"{filename}:{lineno}: expected 'id:name,synonym,...', got {line!r}")
        cid = int(head)
        if cid in seen:
            raise ValueError(f"{filename}:{lineno}: id {cid} appears twice")
        seen.add(cid)
        out.append((cid, ",".join(s.strip() for s in names.split(","))))
    return tuple(out)


@lru_cache(maxsize=None)
def read_categories(names_file: str, categories_file: str) -> Tuple[Dict[str, Any], ...]:
    """Join a names file with its ``*_categories.json`` (id, isthing, color) into category dicts."""
    names = dict(read_class_names(names_file))
    cats = json.loads(_read_text(categories_file))
    out = []
    for cat in cats:
        if cat["id"] not in names:
            raise KeyError(f"{categories_file}: category id {cat['id']} has no name in {names_file}")
        out.append(
            {
                "id": cat["id"],
                "name": names[cat["id"]],
                "isthing": int(cat["isthing"]),
                "color": cat["color"],
            }
        )
    if len(out) != len(names):
        extra = sorted(set(names) - {c["id"] for c in cats})
        raise KeyError(f"{names_file}: ids {extra} have no entry in {categories_file}")
    return tuple(out)


def coco_panoptic_categories() -> List[Dict[str, Any]]:
    """The 133 COCO panoptic categories (80 things, ids 1..90, then 53 stuff, ids 92..200), with
    FC-CLIP's prompt-engineered synonyms."""
    return [dict(c) for c in read_categories("coco_panoptic.txt", "coco_panoptic_categories.json")]


def ade20k_150_categories() -> List[Dict[str, Any]]:
    """The 150 ADE20k (SceneParsing) categories, dataset ids 0..149 = contiguous ids, 100 things
    and 50 stuff, with the prompt-engineered synonyms of OpenSeg that ODISE and FC-CLIP use (they
    decide which classes count as seen: 64 of 150 against COCO)."""
    return [dict(c) for c in read_categories("ade20k_150.txt", "ade20k_150_categories.json")]
