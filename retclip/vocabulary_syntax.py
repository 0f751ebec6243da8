"""The ``:stuff`` suffix of demo vocabularies: "cat, sky:stuff, floor;flooring:stuff".

A class entry ending in ``:stuff`` is a stuff class (amorphous, one segment per class: sky,
floor, wall); every other entry is a thing (countable, one segment per instance). ``:thing`` is
accepted and changes nothing. The suffix ends the whole entry, after its synonyms.
"""
from __future__ import annotations

import re
from typing import List, Sequence, Tuple

__all__ = ["KIND_SUFFIXES", "split_kinds"]

KIND_SUFFIXES = ("stuff", "thing")
_SUFFIX_RE = re.compile(r"\s*:\s*([A-Za-z]+)\s*$")


def split_kinds(entries: Sequence[str]) -> Tuple[List[str], List[bool]]:
    """Class entries (synonyms comma-joined, as :func:`retclip.demo.parse_vocabulary` returns
    them) -> (class names without the suffix, is-thing flags).

    Raises:
        ValueError: an unknown suffix (":stufff"), a suffix inside an entry, or a class named
            twice once suffixes are removed.
    """
    names: List[str] = []
    things: List[bool] = []
    for entry in entries:
        kind = "thing"
        match = _SUFFIX_RE.search(entry)
        if match is not None:
            kind = match.group(1).lower()
            if kind not in KIND_SUFFIXES:
                raise ValueError(f"class {entry!r}: unknown suffix ':{match.group(1)}'; valid: "
                                 f"{[':' + k for k in KIND_SUFFIXES]}")
            entry = entry[: match.start()]
        if ":" in entry:
            raise ValueError(f"class {entry!r}: ':stuff' must end the class entry, after its synonyms "
                             "(\"floor;flooring:stuff\")")
        name = entry.strip().rstrip(",").strip()
        if not name:
            raise ValueError("a class entry is empty once its ':stuff' suffix is removed")
        names.append(name)
        things.append(kind == "thing")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"the vocabulary names these classes twice: {twice}")
    return names, things
