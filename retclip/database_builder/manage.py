"""Editing finished databases: add images/classes by building and merging, remove classes,
merge two databases, and a thumbnail grid of one class's segments for people to look at."""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image

from retclip.retrieval import FeatureDatabase
from retclip.utils.image_io import ImageReadError, read_image

from .report import image_paths

logger = logging.getLogger(__name__)

__all__ = ["add_to_database", "class_thumbnails"]


def add_to_database(cfg, db_dir: str, *, progress: bool = True) -> FeatureDatabase:
    """Add a source's images (and any new classes) to the database at ``db_dir``.

    The images are built into ``<db_dir>.add`` (resumable like any build, skipping images the
    database already holds), merged with the database into ``<db_dir>.merged``, which then
    replaces ``db_dir``. A database from another encoder is refused before any work.
    Single process; run tools/build_database.py for a large distributed addition and merge.
    """
    from .factory import build_database_builder
    from .sources import build_source

    db_dir = str(Path(db_dir).expanduser())
    existing = FeatureDatabase.open(db_dir)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATABASE_BUILD.OUTPUT_DIR = db_dir + ".add"
    cfg.freeze()
    builder = build_database_builder(cfg, progress=progress)
    if builder.encoder.fingerprint != existing.fingerprint:
        raise ValueError(
            f"cannot add to {db_dir}: it was built with encoder {existing.fingerprint}, this config uses "
            f"{builder.encoder.fingerprint}"
        )
    existing.check_recipe(builder.encoder.recipe())
    present = existing.image_ids() | set(image_paths(db_dir))
    builder.build(build_source(cfg), exclude_ids=present)
    added = FeatureDatabase.open(
        cfg.DATABASE_BUILD.OUTPUT_DIR, expected_fingerprint=existing.fingerprint
    )
    merged_dir = db_dir + ".merged"
    if os.path.exists(merged_dir):
        shutil.rmtree(merged_dir)
    existing.merge(added, merged_dir)
    # Keep the build records of both (image paths for thumbnails), the new ones under their own names.
    for src, tag in ((Path(db_dir) / "build", "part"), (Path(added.path) / "build", "part_add")):
        if src.is_dir():
            dst = Path(merged_dir) / "build"
            dst.mkdir(exist_ok=True)
            for f in src.glob("part*.json"):
                shutil.copy2(f, dst / (tag + f.name[len("part") :]))
    old = db_dir + ".old"
    os.rename(db_dir, old)
    os.rename(merged_dir, db_dir)
    shutil.rmtree(old)
    shutil.rmtree(added.path)
    return FeatureDatabase.open(db_dir)


def class_thumbnails(
    db: FeatureDatabase,
    class_name: str,
    output: str,
    *,
    max_items: int = 16,
    size: int = 96,
    paths: Optional[Dict[str, str]] = None,
) -> int:
    """Write a PNG grid of crops (stored boxes) of one class's segments; returns the crop count.

    Args:
        db: the database; class_name: a class's first name (case-insensitive).
        output: PNG path. max_items: at most this many crops, in database order.
        size: side of each square cell in pixels.
        paths: image id -> image path (default: the database's build records).
    """
    names = [n.lower() for n in db.class_names]
    if class_name.lower() not in names:
        raise KeyError(f"class {class_name!r} is not in {db.path}; classes: {db.class_names}")
    label = names.index(class_name.lower())
    paths = image_paths(str(db.path)) if paths is None else paths
    crops = []
    for shard in db.iter_shards():
        for row in np.flatnonzero(shard.labels == label):
            if len(crops) >= max_items:
                break
            box = shard.boxes[row]
            path = paths.get(shard.image_ids[row])
            if path is None or not np.isfinite(box).all():
                continue
            try:
                crop = Image.fromarray(read_image(path)).crop(tuple(int(round(v)) for v in box))
            except ImageReadError as e:
                logger.warning("thumbnail: cannot read %s: %s", path, e)
                continue
            crop.thumbnail((size, size))
            crops.append(crop)
    cols = max(1, math.ceil(math.sqrt(len(crops))))
    rows = max(1, math.ceil(len(crops) / cols))
    grid = Image.new("RGB", (cols * size, rows * size), (255, 255, 255))
    for i, crop in enumerate(crops):
        grid.paste(crop, ((i % cols) * size, (i // cols) * size))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    grid.save(output)
    return len(crops)
