"""Editing finished databases: add images/classes by building and merging, remove classes,
merge two databases, and a thumbnail grid of one class's segments for people to look at."""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
from PIL import Image

from retclip.retrieval import FeatureDatabase
from retclip.retrieval.provenance import row_provenance, row_thumbnail
from retclip.retrieval.safedir import DatabaseLock, exchange_directories
from retclip.utils.fileio import atomic_write_bytes

from .report import image_paths, read_json_record

logger = logging.getLogger(__name__)

__all__ = ["add_to_database", "class_thumbnails", "repair_database"]


def add_to_database(cfg, db_dir: str, *, progress: bool = True) -> FeatureDatabase:
    """Add a source's images (and any new classes) to the database at ``db_dir``.

    The images are built into ``<db_dir>.add`` (resumable like any build, skipping images the
    database already holds) and merged with the database into ``<db_dir>.merged``, which then
    takes ``db_dir``'s place in one atomic exchange. ``db_dir`` stays locked throughout, so no
    builder writes there meanwhile; a failure at any step leaves ``db_dir`` as it was. A
    database from another encoder is refused before any work. Single process; run
    tools/build_database.py for a large distributed addition and merge.
    """
    from .factory import build_database_builder
    from .sources import build_source

    db_dir = str(Path(db_dir).expanduser())
    existing = FeatureDatabase.open(db_dir)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATABASE_BUILD.OUTPUT_DIR = db_dir + ".add"
    cfg.freeze()
    with DatabaseLock(db_dir):
        builder = build_database_builder(cfg, progress=progress)
        if builder.encoder.fingerprint != existing.fingerprint:
            raise ValueError(
                f"cannot add to {db_dir}: it was built with encoder {existing.fingerprint}, this "
                f"config uses {builder.encoder.fingerprint}"
            )
        existing.check_recipe(builder.encoder.recipe())
        present = existing.image_ids() | set(image_paths(db_dir))
        builder.build(build_source(cfg), exclude_ids=present)
        added = FeatureDatabase.open(
            cfg.DATABASE_BUILD.OUTPUT_DIR, expected_fingerprint=existing.fingerprint
        )
        merged_dir = db_dir + ".merged"
        if os.path.exists(merged_dir):
            shutil.rmtree(merged_dir)  # a previous add stopped before its exchange
        existing.merge(added, merged_dir)
        # Keep the build records of both (image paths for thumbnails), the new ones renamed.
        for src, tag in ((Path(db_dir) / "build", "part"), (added.path / "build", "part_add")):
            if src.is_dir():
                dst = Path(merged_dir) / "build"
                dst.mkdir(exist_ok=True)
                for f in src.glob("part*.json"):
                    shutil.copy2(f, dst / (tag + f.name[len("part") :]))
        exchange_directories(merged_dir, db_dir)
        shutil.rmtree(merged_dir)  # now the old content
        shutil.rmtree(added.path)
    return FeatureDatabase.open(db_dir)


def _missing_chunks(record_dir: Path, shards: Set[str]) -> List[str]:
    """Chunks of the build (total from the chunk records) whose shard is not on disk."""
    from .builder import chunk_prefix

    totals = {read_json_record(p).get("num_chunks", 0) for p in record_dir.glob("part[0-9]*.json")}
    missing = [c for c in range(max(totals | {0})) if chunk_prefix(c) + "-000000" not in shards]
    if not missing:
        return []
    return [
        f"the build is incomplete: {len(missing)} of {max(totals)} chunks have no shard "
        f"(first {chunk_prefix(missing[0])}); rerun tools/build_database.py with its config"
    ]


def repair_database(db_dir: str) -> FeatureDatabase:
    """List the complete shards of a build stopped before its manifest was refreshed.

    Under the folder's lock: reads every shard on disk and checks that each chunk of the build
    (their number is in the chunk records) has one; a corrupt shard or a missing chunk is an
    error naming it (rerun the build, which rebuilds missing chunks). Then removes writes cut by
    a kill and rewrites the manifest from the shards.
    """
    from .builder import RECORD_DIR

    db = FeatureDatabase.open(db_dir)
    with DatabaseLock(db.path):
        problems = [p for p in db.verify() if "is not in the manifest" not in p]
        on_disk = {p.stem for p in (db.path / "shards").glob("*.safetensors")}
        for name in sorted(on_disk - set(db.shard_names)):
            try:
                db.read_shard(name, verify=False)
            except ValueError as e:
                problems.append(str(e))
        if "settings" in db.manifest["build_args"]:  # a builder's chunk shards, not merged ones
            problems += _missing_chunks(db.path / RECORD_DIR, on_disk)
        if problems:
            raise ValueError(f"cannot repair {db.path}: " + "; ".join(problems[:10]))
        db.refresh_manifest(remove_partial_writes=True)
    return FeatureDatabase.open(db.path)


def class_thumbnails(
    db: FeatureDatabase,
    class_name: str,
    output: str,
    *,
    max_items: int = 16,
    size: int = 96,
    paths: Optional[Dict[str, str]] = None,
) -> int:
    """Write a PNG grid of one class's segments, each a crop of its source image around its box
    with its mask outlined and a caption (class, image, detector score); returns the crop count.

    Args:
        db: the database; class_name: a class's first name (case-insensitive).
        output: PNG path (written atomically). max_items: at most this many crops, in database order.
        size: width of each cell in pixels.
        paths: image id -> image path for shards without provenance (default: the build records).
    """
    names = [n.lower() for n in db.class_names]
    if class_name.lower() not in names:
        raise KeyError(f"class {class_name!r} is not in {db.path}; classes: {db.class_names}")
    label = names.index(class_name.lower())
    paths = image_paths(str(db.path)) if paths is None else paths
    shown = db.class_names[label].split(",")[0]
    cells: List[np.ndarray] = []
    for shard in db.iter_shards():
        for row in np.flatnonzero(shard.labels == label):
            if len(cells) >= max_items:
                break
            prov = row_provenance(shard, int(row), paths.get(shard.image_ids[row]))
            caption = [shown, str(prov["image_id"])[: size // 6], f"score {float(shard.scores[row]):.2f}"]
            cell = row_thumbnail(prov, caption, size)
            if cell is not None:
                cells.append(cell)
        if len(cells) >= max_items:
            break
    cols = max(1, math.ceil(math.sqrt(len(cells))))
    rows = max(1, math.ceil(len(cells) / cols))
    height = max((c.shape[0] for c in cells), default=size)
    grid = Image.new("RGB", (cols * (size + 4), rows * (height + 4)), (255, 255, 255))
    for i, cell in enumerate(cells):
        grid.paste(Image.fromarray(cell), ((i % cols) * (size + 4), (i // cols) * (height + 4)))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output, buffer.getvalue())
    return len(cells)
