"""Building a database's index shard by shard, optionally filled by several processes and merged,
and the on-disk index cache that :class:`~retclip.retrieval.search.DatabaseRetriever` and
``tools/build_index.py`` share.

The build (:func:`build_database_index`):

1. IVF-PQ is trained on a seeded sample of at most ``IndexConfig.train_size`` rows
   (:func:`~retclip.retrieval.index.training_rows`), gathered shard by shard;
2. rows are added one shard at a time (peak memory: the index plus one shard);
3. with ``workers > 1`` the shards are cut into contiguous slices; each worker process loads the
   trained empty index, adds its slice and saves it; the parent merges the parts in slice order
   with FAISS ``merge_from`` (ids shifted by the slice's first row). Inverted lists then hold the
   same ids and codes in the same order as a one-process build: the saved index files are equal
   byte for byte (a test checks it).

The cache is ``<index_dir>/<type>.faiss`` plus ``<type>.json`` holding a fingerprint: sha256 of
the database content hash and the index build parameters, so an index built for other content or
other parameters is stale and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from retclip.utils.fileio import atomic_path, atomic_write_json

from .database import FeatureDatabase
from .index import FaissIndex, FeatureIndex, IndexConfig, build_index, training_rows

logger = logging.getLogger(__name__)

__all__ = [
    "build_database_index",
    "read_index_config",
    "cache_paths",
    "cache_problem",
    "estimate_index_bytes",
    "index_fingerprint",
    "parse_bytes",
    "save_cached_index",
    "shard_slices",
    "suggest_ivfpq_params",
]


# ---------------------------------------------------------------------------------- config
def _index_config_fields(config_file: str, opts: Sequence[str]) -> Dict[str, Any]:
    """Child process: the config's ``MODEL.RETCLIP.INDEX`` as IndexConfig fields, or the user's
    mistake as {"error": message}."""
    from dataclasses import asdict

    from retclip.config_file import load_config
    from retclip.utils.cli import UserError, describe_error

    try:
        cfg = load_config(config_file or None, list(opts), freeze=False)
    except (UserError, OSError) as e:
        return {"error": describe_error(e)}
    return asdict(IndexConfig.from_cfg(cfg))


def read_index_config(config_file: str, opts: Sequence[str] = ()) -> IndexConfig:
    """``IndexConfig.from_cfg(load_config(config_file, opts))``, read in a short-lived child
    process: the config reader imports detectron2 and torch (~0.6 GB resident), which an index
    build does not need, so the process that builds never holds them.

    Raises:
        UserError: the config file or an override is wrong (the message names it).
    """
    from concurrent.futures import ProcessPoolExecutor

    from retclip.utils.cli import UserError

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        fields = pool.submit(_index_config_fields, config_file, list(opts)).result()
    if "error" in fields:
        raise UserError(fields["error"])
    return IndexConfig(**fields)


# ---------------------------------------------------------------------------------- cache
def index_fingerprint(database: FeatureDatabase, config: IndexConfig) -> str:
    """sha256 of the database content and the index build parameters."""
    key = {"database": database.content_hash(), "index": config.build_params()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cache_paths(index_dir: Path, config: IndexConfig) -> Tuple[Path, Path]:
    """(index file, metadata JSON) of ``config.type`` under ``index_dir``."""
    return index_dir / f"{config.type}.faiss", index_dir / f"{config.type}.json"


def cache_problem(index_dir: Path, database: FeatureDatabase, config: IndexConfig) -> Optional[str]:
    """Why the cached index cannot be used (None when it can)."""
    path, meta_path = cache_paths(index_dir, config)
    if not path.is_file() or not meta_path.is_file():
        return f"index file {path} missing"
    try:
        saved = json.loads(meta_path.read_text()).get("fingerprint")
    except json.JSONDecodeError:
        return f"unreadable {meta_path}"
    if saved != index_fingerprint(database, config):
        return "stale: database or index parameters changed"
    return None


def save_cached_index(
    index: FaissIndex, index_dir: Path, database: FeatureDatabase, config: IndexConfig
) -> Path:
    """Write the index file (atomically), then its metadata (fingerprint and parameters)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    path, meta_path = cache_paths(index_dir, config)
    with atomic_path(path) as tmp:
        index.save(str(tmp))
    meta = {
        "fingerprint": index_fingerprint(database, config),
        **config.build_params(),
        "database_content_hash": database.content_hash(),
        "rows": index.ntotal,
    }
    atomic_write_json(meta_path, meta)
    return path


# ---------------------------------------------------------------------------------- build
def shard_slices(row_counts: Sequence[int], workers: int) -> List[Tuple[int, int]]:
    """Cut shards into at most ``workers`` contiguous ranges [first, end) of similar row counts."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    total = sum(row_counts)
    bounds, start, acc = [], 0, 0
    for i, rows in enumerate(row_counts):
        acc += rows
        target = total * (len(bounds) + 1) / workers
        if acc >= target and len(bounds) < workers - 1 and i + 1 < len(row_counts):
            bounds.append((start, i + 1))
            start = i + 1
    bounds.append((start, len(row_counts)))
    return [b for b in bounds if b[1] > b[0]]


def _gather_rows(database: FeatureDatabase, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted global numbers) of the database, read one shard at a time."""
    out = np.empty((rows.shape[0], database.embed_dim), dtype=np.float32)
    start, filled = 0, 0
    for entry in database.manifest["shards"]:
        end = start + int(entry["rows"])
        lo, hi = np.searchsorted(rows, [start, end])
        if hi > lo:
            shard = database.read_shard(entry["name"])
            out[filled : filled + hi - lo] = shard.features[rows[lo:hi] - start]
            filled += hi - lo
        start = end
    return out


#: Rows gathered from consecutive shards before one ``add`` (builder shards hold a few hundred
#: rows; adding them one by one would copy a growing exact index once per shard).
ADD_BLOCK_ROWS = 65536


def _add_shards(index: FeatureIndex, database: FeatureDatabase, names: Sequence[str]) -> None:
    """Add the shards' rows in order, in blocks of about ADD_BLOCK_ROWS (memory: one block)."""
    block: List[np.ndarray] = []

    def flush() -> None:
        if block:
            index.add(np.concatenate(block) if len(block) > 1 else block[0])
            block.clear()

    for name in names:
        features = database.read_shard(name).features
        if block and sum(b.shape[0] for b in block) + features.shape[0] > ADD_BLOCK_ROWS:
            flush()
        block.append(features)
    flush()


def _add_slice_worker(
    db_path: str, names: List[str], config: IndexConfig, trained: str, out: str
) -> None:
    """Worker process: the trained empty index plus one contiguous slice of shards, saved."""
    database = FeatureDatabase.open(db_path)
    index = build_index(config, database.embed_dim)
    index.load(trained)
    rows = {e["name"]: int(e["rows"]) for e in database.manifest["shards"]}
    index.reserve(sum(rows[n] for n in names))
    _add_shards(index, database, names)
    index.save(out)


def _fill_in_parallel(
    index: FaissIndex, database: FeatureDatabase, config: IndexConfig, workers: int
) -> None:
    entries = database.manifest["shards"]
    slices = shard_slices([int(e["rows"]) for e in entries], workers)
    starts = np.cumsum([0] + [int(e["rows"]) for e in entries])
    plain = replace(config, mmap=False)  # workers and the merge write into what they load
    with tempfile.TemporaryDirectory(dir=database.path, prefix=".index_build.") as scratch:
        trained = os.path.join(scratch, "trained.faiss")
        index.save(trained)
        ctx = multiprocessing.get_context("spawn")
        procs, outs = [], []
        for i, (first, end) in enumerate(slices):
            out = os.path.join(scratch, f"part{i:04d}.faiss")
            names = [e["name"] for e in entries[first:end]]
            p = ctx.Process(
                target=_add_slice_worker, args=(str(database.path), names, plain, trained, out)
            )
            p.start()
            procs.append(p)
            outs.append(out)
        failed = []
        for i, p in enumerate(procs):
            p.join()
            if p.exitcode != 0:
                failed.append(i)
        if failed:
            raise RuntimeError(f"index build workers {failed} failed (exit codes in the log above)")
        index.reserve(len(database))
        for (first, _), out in zip(slices, outs):
            part = build_index(plain, database.embed_dim)
            part.load(out)
            index.merge_from(part, int(starts[first]))
            del part
            os.unlink(out)


def build_database_index(
    database: FeatureDatabase, config: IndexConfig, *, workers: int = 1
) -> FeatureIndex:
    """The index of ``config`` over all rows of ``database`` (row i = id i), built shard by shard.

    Args:
        workers: processes filling the index in parallel (each a contiguous slice of shards);
            1 adds in this process. Needs an index type that can merge (``ivfpq``).
    """
    start = time.perf_counter()
    index = build_index(config, database.embed_dim)
    names = database.shard_names
    if isinstance(index, FaissIndex) and config.type == "ivfpq":
        rows = training_rows(len(database), config.train_size, config.train_seed)
        index.train(_gather_rows(database, rows))
        logger.info("trained ivfpq on %d of %d rows in %.1f s", len(rows), len(database),
                    time.perf_counter() - start)
        if workers > 1:
            _fill_in_parallel(index, database, config, workers)
        else:
            index.reserve(len(database))
            _add_shards(index, database, names)
    else:
        if workers > 1:
            raise ValueError(
                f"index type {config.type!r} is filled by one process; only 'ivfpq' can be "
                "filled in parallel and merged"
            )
        _add_shards(index, database, names)
    logger.info("built %s index over %d rows of %s in %.1f s", config.type, index.ntotal,
                database.path, time.perf_counter() - start)
    return index


# ---------------------------------------------------------------------------------- budget
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """'4G', '512M', '1.5T' or a plain number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read {text!r} as a size; use e.g. 4G, 512M or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def estimate_index_bytes(config: IndexConfig, num_rows: int, dim: int) -> int:
    """Bytes the built index takes in RAM (and on disk), from the FAISS storage formulas."""
    if config.type == "ivfpq":
        per_row = config.pq_m + 8 + 2 * dim  # PQ code + id + float16 re-rank row
        return num_rows * per_row + config.nlist * dim * 4 + 256 * dim * 4
    if config.type == "hnsw":
        return num_rows * (4 * dim + 2 * 4 * config.hnsw_m)
    return num_rows * 4 * dim  # exact / flat: float32 rows


def suggest_ivfpq_params(num_rows: int, dim: int, budget: int) -> Dict[str, int]:
    """nlist and pq_m for ``num_rows`` rows within ``budget`` bytes.

    nlist: the power of two nearest 4 * sqrt(N) (the FAISS wiki's 4-16 sqrt(N) range), at least
    64 and at most N / 39 (FAISS wants 39 training rows per list). pq_m: the largest of
    96, 64, 48, 32, 16, 8 that divides dim and fits; the float16 re-rank rows (2 * dim bytes per
    row) must fit in any case.

    Raises:
        ValueError: the budget cannot hold even the re-rank rows; names the bytes needed.
    """
    nlist = 2 ** int(round(np.log2(max(4 * np.sqrt(max(num_rows, 1)), 1))))
    nlist = int(max(1, min(max(nlist, 64), max(num_rows // 39, 1))))
    for pq_m in (96, 64, 48, 32, 16, 8):
        if dim % pq_m:
            continue
        config = IndexConfig(type="ivfpq", nlist=nlist, pq_m=pq_m)
        if estimate_index_bytes(config, num_rows, dim) <= budget:
            return {"nlist": nlist, "pq_m": pq_m}
    need = estimate_index_bytes(IndexConfig(type="ivfpq", nlist=nlist, pq_m=8), num_rows, dim)
    raise ValueError(
        f"{num_rows} rows of dim {dim} need at least {need / 2**30:.2f} GiB for an IVF-PQ index "
        f"with float16 re-ranking; the budget is {budget / 2**30:.2f} GiB"
    )


def describe_params(params: Dict[str, Any]) -> str:
    """Config overrides (KEY VALUE) for suggested parameters."""
    keys = {"nlist": "MODEL.RETCLIP.INDEX.IVF_NLIST", "pq_m": "MODEL.RETCLIP.INDEX.PQ_M"}
    return " ".join(f"{keys[k]} {v}" for k, v in params.items())
