#!/usr/bin/env python
"""Memory of building and of opening a large database's IVF-PQ index, and its recall.

    python benchmarks/bench_database_scale.py --vectors 1000000 [--dim 768] [--workdir DIR]

Writes a synthetic float16 database of N rows (clustered: 2000 centres plus noise in a 64-dim
subspace and a little isotropic noise, so that neighbours are meaningful as with CLIP features),
then runs each phase in its own child process so their peaks do not mix:

* build: ``build_database_index`` (train on the seeded sample, add shard by shard) + save;
* open: ``DatabaseRetriever`` over the cached index (memory-mapped) and the label array;
* search: the same plus a search of held-out queries; recall@10 against exact search
  (computed in a third child, streaming the shards).

Peak RSS is each child's VmHWM from /proc/self/status. Reported twice: absolute, and above the
child's RSS after its imports. The build and open phases import only the retrieval package (no
torch, no detectron2: as ``tools/build_index.py``'s build and ``inspect_database.py`` run); the
search phase imports torch for its results (~0.5 GB resident whatever the database size), as the
model's process has it anyway. Ratios are to the raw feature bytes (N x dim x 2). Targets (issue 16): open <= 0.25x,
build <= 1.5x.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retclip.utils.memory import process_memory_bytes  # noqa: E402  (no torch, no detectron2)


def _config(args):
    from retclip.retrieval import IndexConfig

    return IndexConfig(type="ivfpq", nlist=args.nlist, pq_m=args.pq_m, nprobe=args.nprobe,
                       train_size=args.train_size, rerank_factor=args.rerank, mmap=True)


def _make(args, root: Path) -> None:
    import numpy as np

    from retclip.retrieval import EncoderFingerprint, FeatureDatabase

    rng = np.random.default_rng(0)
    d = args.dim
    centres = rng.standard_normal((2000, d)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((d, 64)))[0].T.astype(np.float32)

    def sample(n):
        c = centres[rng.integers(0, len(centres), n)]
        sub = rng.standard_normal((n, 64)).astype(np.float32) @ basis * 0.6
        return c + sub + 0.05 * rng.standard_normal((n, d)).astype(np.float32)

    db = FeatureDatabase.create(root / "db", EncoderFingerprint("synthetic", "random", d),
                                [f"class{i}" for i in range(100)], dtype="float16")
    for start in range(0, args.vectors, args.shard_rows):
        n = min(args.shard_rows, args.vectors - start)
        db.append(sample(n), rng.integers(0, 100, n), [f"i{start + j}" for j in range(n)])
    np.save(root / "queries.npy", sample(args.queries))


def _phase(args, root: Path) -> dict:
    import faiss
    import numpy as np

    from retclip.retrieval import DatabaseRetriever, FeatureDatabase
    from retclip.retrieval.index_build import build_database_index, save_cached_index

    faiss.omp_set_num_threads(1)
    db = FeatureDatabase.open(root / "db")
    base = process_memory_bytes("VmRSS")
    start = time.perf_counter()
    out = {}
    if args.phase == "build":
        index = build_database_index(db, _config(args))
        save_cached_index(index, db.path / "index", db, _config(args))
    elif args.phase == "truth":
        q = np.load(root / "queries.npy")
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        best_d = np.full((len(q), 10), -np.inf, np.float32)
        best_i = np.zeros((len(q), 10), np.int64)
        offset = 0
        for shard in db.iter_shards():
            s, i = faiss.knn(q, shard.features.astype(np.float32), 10, faiss.METRIC_INNER_PRODUCT)
            d_all = np.concatenate([best_d, s], 1)
            i_all = np.concatenate([best_i, i + offset], 1)
            top = np.argsort(-d_all, axis=1)[:, :10]
            best_d, best_i = np.take_along_axis(d_all, top, 1), np.take_along_axis(i_all, top, 1)
            offset += len(shard)
        np.save(root / "truth.npy", best_i)
    else:
        retriever = DatabaseRetriever(db, _config(args))
        if args.phase == "search":
            import torch  # the search phase only: results are torch tensors

            torch.set_num_threads(1)
            queries = torch.from_numpy(np.load(root / "queries.npy"))
            truth = np.load(root / "truth.npy")
            out["recall_at_10"] = {}
            for factor in sorted({args.rerank, 50}):  # re-rank pool: factor * k candidates
                retriever.index.index.k_factor = float(factor)
                ids = retriever.search(queries, 10).ids.numpy()
                out["recall_at_10"][factor] = float(np.mean(
                    [len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]))
                if factor == args.rerank:  # the peak line reports the configured factor
                    out["peak_configured"] = process_memory_bytes("VmHWM")
    peak = out.pop("peak_configured", None) or process_memory_bytes("VmHWM")
    out.update(seconds=time.perf_counter() - start, baseline=base, peak=peak,
               torch="torch" in sys.modules)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--shard-rows", type=int, default=50_000)
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--pq-m", type=int, default=64)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--train-size", type=int, default=100_000)
    p.add_argument("--rerank", type=int, default=10, help="INDEX.RERANK_FACTOR")
    p.add_argument("--phases", default="build,truth,open,search",
                   help="phases to run (a rerun on the same --workdir can skip the build)")
    p.add_argument("--workdir", default="")
    p.add_argument("--phase", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    import retclip  # noqa: F401

    if args.phase:
        print(json.dumps(_phase(args, Path(args.workdir))))
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale_"))
    raw = args.vectors * args.dim * 2
    t0 = time.perf_counter()
    if not (root / "db" / "manifest.json").is_file():
        _make(args, root)
    print(f"database: {args.vectors} x {args.dim} float16 = {raw / 2**30:.2f} GiB raw at {root} "
          f"(written in {time.perf_counter() - t0:.0f} s)")
    results = {}
    for phase in args.phases.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--workdir", str(root), "--phase", phase]
        if not (root / "truth.npy").is_file() and phase == "search":
            sys.exit("the search phase needs the truth phase's truth.npy in --workdir")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"phase {phase} failed:\n{proc.stderr[-3000:]}")
        results[phase] = r = json.loads(proc.stdout.strip().splitlines()[-1])
        grown = r["peak"] - r["baseline"]
        print(f"{phase:7s} {r['seconds']:7.1f} s  peak RSS {r['peak'] / 2**30:5.2f} GiB "
              f"({r['peak'] / raw:.2f}x raw); above imports {grown / 2**30:5.2f} GiB "
              f"({grown / raw:.3f}x raw); torch {'imported' if r['torch'] else 'not imported'}")
    index_bytes = (root / "db" / "index" / "ivfpq.faiss").stat().st_size
    print(f"index file {index_bytes / 2**30:.2f} GiB ({index_bytes / raw:.2f}x raw); "
          f"nlist {args.nlist}, pq_m {args.pq_m}, nprobe {args.nprobe}, "
          f"train sample {min(args.train_size, args.vectors)}")
    for factor, recall in results.get("search", {}).get("recall_at_10", {}).items():
        print(f"recall@10 vs exact search, {args.queries} held-out queries, re-rank {factor} x k "
              f"candidates: {recall:.3f}")
    print("targets: open <= 0.25x raw, build <= 1.5x raw (above-imports figures scale with N)")


if __name__ == "__main__":
    main()
