"""What the demo reads from its command line: the vocabulary, the image list, the output names.

Kept apart from :mod:`retclip.demo` (which needs detectron2 and a model) so that a mistake in the
arguments is reported in a second, before anything heavy is imported or built.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from retclip.utils.cli import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "VocabularyError",
    "parse_vocabulary",
    "list_images",
    "output_stems",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: A --vocabulary value ending like this is a file name, never a one-class list.
_FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".lst")


class VocabularyError(UserError, ValueError):
    """A --vocabulary that names no class, a class twice, or a missing file."""


def _looks_like_path(spec: str) -> bool:
    return (os.sep in spec or "/" in spec or spec.strip().lower().endswith(_FILE_SUFFIXES)
            or spec.strip().startswith("~"))


def _entries_from_file(path: Path) -> List[List[str]]:
    """One class per line ("sofa,couch" or FC-CLIP's "12:sofa,couch"); '#' starts a comment."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if ":" in line and line.split(":", 1)[0].strip().isdigit():
                line = line.split(":", 1)[1]
            entries.append(line.split(","))
    return entries


def _clean(synonyms: Sequence[str]) -> List[str]:
    """Strip, collapse inner whitespace, drop empty and repeated (case-folded) synonyms."""
    out: List[str] = []
    for s in synonyms:
        s = " ".join(s.split())
        if s and s.casefold() not in {o.casefold() for o in out}:
            out.append(s)
    return out


def _check_unique(classes: List[List[str]], where: str) -> None:
    """Refuse a name that two classes share, after case folding and synonym merging."""
    owner: Dict[str, int] = {}
    clashes = []
    for i, synonyms in enumerate(classes):
        for s in synonyms:
            j = owner.setdefault(s.casefold(), i)
            if j != i:
                clashes.append(f"{s!r} in {', '.join(classes[j])!r} and {', '.join(synonyms)!r}")
    if clashes:
        raise VocabularyError(f"{where} names a class twice (ignoring case): {'; '.join(clashes)}")


def parse_vocabulary(spec: str) -> List[str]:
    """Classes from "cat, sofa;couch, lamp" (',' between classes, ';' between synonyms) or from
    a file with one class per line ("sofa,couch" or FC-CLIP's "12:sofa,couch").

    A value that looks like a path (a '/' or a .txt/.csv suffix) must be an existing file; any
    other value is a list. Returns each class as "synonym, synonym" (the model's class-name form).

    Raises:
        VocabularyError: a missing file, no class at all, or a name shared by two classes (after
            case folding; "cat, Cat" and "cat;kitty, kitty" both are).
    """
    path = Path(spec.strip()).expanduser()
    if path.is_file():
        where = f"--vocabulary file {path}"
        entries = _entries_from_file(path)
    elif _looks_like_path(spec):
        kind = "is a folder" if path.is_dir() else "does not exist"
        raise VocabularyError(
            f"--vocabulary {spec}: this looks like a file name but {path} {kind} (give an existing "
            "file, or classes separated by commas)"
        )
    else:
        where = f"--vocabulary {spec!r}"
        entries = [c.split(";") for c in spec.split(",")]
    classes = [c for c in (_clean(e) for e in entries) if c]
    if not classes:
        raise VocabularyError(f"{where} names no class")
    _check_unique(classes, where)
    return [", ".join(c) for c in classes]


def list_images(inputs: Sequence[str]) -> List[Path]:
    """Image files from paths and folders (folders: their images, sorted, not recursive).

    A file given twice is listed once. Raises FileNotFoundError naming a missing input, or when
    no image is found.
    """
    files: List[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    if not unique:
        raise FileNotFoundError(f"--input {' '.join(inputs)}: no images found "
                                f"(extensions {', '.join(IMAGE_EXTENSIONS)})")
    return unique


def output_stems(images: Sequence[Path]) -> Dict[Path, str]:
    """Per image, the output name stem: its path relative to the images' common folder, without
    the suffix ("a/x.jpg" and "b/x.jpg" -> "a/x", "b/x"), so outputs of two inputs never collide.
    Two files that differ only in suffix keep it ("x.jpg", "x.png" -> "x_jpg", "x_png").
    """
    resolved = [Path(p).resolve() for p in images]
    if not resolved:
        return {}
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    relative: List[Tuple[Path, Path]] = [(p, p.relative_to(root)) for p in resolved]
    stems = [str(r.with_suffix("")) for _, r in relative]
    out: Dict[Path, str] = {}
    for (p, r), stem in zip(relative, stems):
        if stems.count(stem) > 1:
            stem = f"{stem}_{r.suffix.lstrip('.')}"
        out[p] = stem
    return out
