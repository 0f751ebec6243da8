"""Array-job builds: each job builds its own part, and one command joins the parts.

Job ``k`` of ``n`` (``DATABASE_BUILD.ARRAY_JOB.SHARD_ID/NUM_SHARDS``) builds the chunks ``c`` with
``c % n == k`` into ``OUTPUT_DIR/parts/part-<k>-of-<n>``, a complete database of its own that
resumes like any build: a job killed and rerun touches only its own part. Shards are named by the
global chunk number (``part<c>-000000``), so :func:`finalize_parts` joins the parts by linking
every shard into ``OUTPUT_DIR/shards`` and listing them in name order: the rows come out in chunk
order whatever order the jobs finished in, byte for byte the shards a single build writes.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import List, Tuple

from retclip.retrieval import FeatureDatabase
from retclip.retrieval.labels import write_label_array
from retclip.utils.fileio import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["PARTS_DIR", "finalize_parts", "part_chunks", "part_dir"]

PARTS_DIR = "parts"
_PART_RE = re.compile(r"^part-(\d{5})-of-(\d{5})$")


def part_chunks(num_chunks: int, shard_id: int, num_shards: int) -> List[int]:
    """Global chunk numbers of array job ``shard_id`` of ``num_shards``, in order."""
    return list(range(shard_id, num_chunks, num_shards))


def part_dir(output_dir: str, shard_id: int, num_shards: int) -> str:
    """Directory of one job's part; ``output_dir`` itself when there is one job."""
    if num_shards == 1:
        return output_dir
    return os.path.join(output_dir, PARTS_DIR, f"part-{shard_id:05d}-of-{num_shards:05d}")


def _parts(output_dir: Path) -> List[Tuple[int, Path]]:
    folder = output_dir / PARTS_DIR
    found = sorted(p for p in folder.iterdir() if _PART_RE.match(p.name)) if folder.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no parts to join under {folder} (part-<k>-of-<n> directories)")
    counts = {int(_PART_RE.match(p.name).group(2)) for p in found}
    if len(counts) != 1:
        raise ValueError(f"{folder} mixes parts of different job counts {sorted(counts)}")
    n = counts.pop()
    have = {int(_PART_RE.match(p.name).group(1)): p for p in found}
    missing = [k for k in range(n) if k not in have]
    unfinished = [str(p) for p in have.values() if not (p / "build" / "report.json").is_file()]
    if missing or unfinished:
        raise ValueError(
            f"cannot join {folder}: parts {missing} of {n} missing, unfinished (no build report): "
            f"{unfinished}; rerun those array jobs"
        )
    return sorted(have.items())


def _link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same file system), else copy it atomically."""
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def finalize_parts(output_dir: str, *, keep_parts: bool = True) -> FeatureDatabase:
    """Join the finished parts under ``output_dir/parts`` into the database at ``output_dir``.

    Raises:
        ValueError: a part is missing or unfinished, parts disagree on encoder, vocabulary or
            dtype, or ``output_dir`` already holds a database with rows.
    """
    out = Path(output_dir).expanduser()
    parts = [(k, FeatureDatabase.open(p)) for k, p in _parts(out)]
    first = parts[0][1]
    for k, db in parts[1:]:
        key = (db.fingerprint, db.vocabulary, db.dtype)
        if key != (first.fingerprint, first.vocabulary, first.dtype):
            raise ValueError(
                f"part {db.path} has another encoder, vocabulary or dtype than {first.path}"
            )
    if (out / "manifest.json").is_file() and len(FeatureDatabase.open(out)) > 0:
        raise ValueError(
            f"{out} already holds a joined database; remove its manifest to join again"
        )
    manifest = first.manifest
    final = FeatureDatabase.create(
        out, first.fingerprint, first.vocabulary, source=manifest["source"],
        build_args={**manifest["build_args"], "joined_parts": len(parts)}, dtype=first.dtype,
        exist_ok=True,
    )
    (out / "build").mkdir(exist_ok=True)
    for _, db in parts:
        for name in db.shard_names:
            file = f"{name}.safetensors"
            _link(db.path / "shards" / file, out / "shards" / file)
        for record in (db.path / "build").glob("part*.json"):
            _link(record, out / "build" / record.name)
    final.refresh_manifest()  # every shard on disk, in name (= chunk) order, hashes checked
    write_label_array(final)
    from .report import read_chunk_records, write_build_report

    records = read_chunk_records(str(out))
    num_chunks = max(r["chunk"] for r in records) + 1 if records else 0
    source = SimpleNamespace(name=manifest["source"], report={})
    write_build_report(out, source, num_chunks=num_chunks)
    if not keep_parts:
        shutil.rmtree(out / PARTS_DIR)
    logger.info("joined %d parts into %s: %d rows", len(parts), out, len(final))
    return FeatureDatabase.open(out)

