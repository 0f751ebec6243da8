#!/usr/bin/env python
"""Build (ahead of time) the cached FAISS index of a RetCLIP feature database.

    # the index the model config asks for (MODEL.RETCLIP.INDEX.*), filled by 8 processes
    python tools/build_index.py /data/db/openimages --config-file configs/.../model.yaml \\
        --workers 8 MODEL.RETCLIP.INDEX.TYPE ivfpq
    # check the configured index against a memory budget; suggests IVF_NLIST / PQ_M if over
    python tools/build_index.py DB --max-index-memory 4G MODEL.RETCLIP.INDEX.TYPE ivfpq

IVF-PQ is trained on a seeded sample of at most MODEL.RETCLIP.INDEX.TRAIN_SIZE rows and filled
shard by shard; with --workers N, N processes each fill a contiguous slice of shards and the parts
are merged in order (the same index as one process would build). The index goes to
<database>/index/<type>.faiss with the database content hash and parameters beside it, where the
model finds it (a stale index is rebuilt at open). The config is read in a short-lived child
process, so the building process holds neither detectron2 nor torch (~0.6 GB resident). Prints a
JSON summary, with the build's peak resident memory.
"""
import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import retclip  # noqa: E402,F401  (light: the detectron2-facing modules, imported after parsing, apply the compat steps)
from retclip.utils.cli import UserError, run_tool  # noqa: E402
from retclip.utils.memory import process_memory_bytes  # noqa: E402


def _index_config(args):
    from retclip.retrieval.index_build import read_index_config

    return read_index_config(args.config_file, list(args.opts))


def _check_budget(config, rows: int, dim: int, budget_text: str) -> dict:
    from retclip.retrieval.index_build import (
        describe_params,
        estimate_index_bytes,
        parse_bytes,
        suggest_ivfpq_params,
    )

    try:
        budget = parse_bytes(budget_text)
    except ValueError as e:
        raise UserError(f"--max-index-memory: {e}") from e
    need = estimate_index_bytes(config, rows, dim)
    if need <= budget:
        return {"estimated_bytes": need, "budget_bytes": budget}
    hint = ""
    if config.type == "ivfpq":
        try:
            hint = "; fits with " + describe_params(suggest_ivfpq_params(rows, dim, budget))
        except ValueError as e:
            hint = f"; {e}"
    raise UserError(
        f"the {config.type} index of {rows} rows x {dim} needs about {need / 2**30:.2f} GiB, over "
        f"--max-index-memory {budget_text}{hint}"
    )


def main(argv) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("database", help="feature database directory")
    p.add_argument("--config-file", default="", help="model config (MODEL.RETCLIP.INDEX.*)")
    p.add_argument("--workers", type=int, default=1, help="processes filling the index (ivfpq)")
    p.add_argument("--max-index-memory", default="", help="budget, e.g. 4G: fail early if over")
    p.add_argument("--index-dir", default="", help="where to write (default <database>/index)")
    p.add_argument("opts", nargs="*", default=[], help="KEY VALUE config overrides")
    args = p.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its "no AVX2 build" probing

    from pathlib import Path

    from retclip.retrieval import FeatureDatabase
    from retclip.retrieval.index_build import build_database_index, save_cached_index
    from retclip.retrieval.labels import open_label_array

    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    try:
        db = FeatureDatabase.open(args.database)
    except ValueError as e:
        raise UserError(str(e)) from e
    config = _index_config(args)
    if config.type not in ("hnsw", "ivfpq"):
        raise UserError(
            f"MODEL.RETCLIP.INDEX.TYPE {config.type!r} is not cached (built at open in seconds); "
            "build_index.py builds 'hnsw' or 'ivfpq'"
        )
    if len(db) == 0:
        raise UserError(f"feature database {db.path} is empty: nothing to index")
    summary = {"database": str(db.path), "rows": len(db), **config.build_params()}
    if args.max_index_memory:
        summary.update(_check_budget(config, len(db), db.embed_dim, args.max_index_memory))
    start = time.perf_counter()
    try:
        index = build_database_index(db, config, workers=args.workers)
    except ValueError as e:
        raise UserError(str(e)) from e
    index_dir = Path(args.index_dir) if args.index_dir else db.path / "index"
    path = save_cached_index(index, index_dir, db, config)
    open_label_array(db)  # written now if missing, so the first open reads no shard
    summary.update({"index": str(path), "index_bytes": path.stat().st_size,
                    "seconds": round(time.perf_counter() - start, 2), "workers": args.workers,
                    "peak_rss_bytes": process_memory_bytes("VmHWM"), "torch_loaded": "torch" in sys.modules})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
