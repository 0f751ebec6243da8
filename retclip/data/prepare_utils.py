"""Shared machinery of the ``datasets/prepare_*.py`` scripts: dataset root, atomic writes,
resumable per-image conversion with progress, and merging per-image JSON parts.

A conversion runs a function per image; each image writes its outputs atomically (temporary file
+ rename) and, when it contributes to a JSON, a small "part" file last. An image whose part (or
output, for PNG-only conversions) exists is skipped, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import json
import logging
import os
from multiprocessing import Pool
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "resolve_root",
    "atomic_save_png",
    "atomic_write_json",
    "run_per_image",
    "merge_parts",
    "rgb2id",
    "id2rgb",
]


def resolve_root(root: Optional[str]) -> str:
    """``--root`` if given, else ``$DETECTRON2_DATASETS`` (``~`` expanded); never the current folder.

    Raises:
        UserError: neither is set.
    """
    chosen = root or os.environ.get("DETECTRON2_DATASETS")
    if not chosen:
        from retclip.utils.cli import UserError

        raise UserError("no dataset root: pass --root or set DETECTRON2_DATASETS (nothing is read "
                        "from the current folder)")
    return os.path.abspath(os.path.expanduser(chosen))


def atomic_save_png(array: np.ndarray, path: str) -> None:
    """Save a uint8 array as PNG via a temporary file and a rename (never a half-written PNG)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)


def atomic_write_json(payload: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def read_png(path: str) -> np.ndarray:
    """Read a PNG, with an error that names it when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode {path}: {e}") from e


def run_per_image(
    fn: Callable[[Any], None], items: Sequence[Any], done: Callable[[Any], bool], desc: str, workers: int = 1
) -> int:
    """Call ``fn(item)`` for every item not ``done(item)``, with a tqdm bar; returns how many ran."""
    from tqdm import tqdm

    todo = [it for it in items if not done(it)]
    skipped = len(items) - len(todo)
    if skipped:
        logger.info("%s: %d of %d already done, skipping them", desc, skipped, len(items))
    if workers > 1 and len(todo) > 1:
        with Pool(workers) as pool:
            for _ in tqdm(pool.imap_unordered(fn, todo, chunksize=8), total=len(todo), desc=desc):
                pass
    else:
        for it in tqdm(todo, desc=desc):
            fn(it)
    return len(todo)


def merge_parts(part_paths: Iterable[str]) -> List[Dict[str, Any]]:
    """Read per-image JSON parts in the given order."""
    out = []
    for path in part_paths:
        with open(path) as f:
            out.append(json.load(f))
    return out
