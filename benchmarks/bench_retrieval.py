"""Benchmark the retrieval index backends: build time, search time, memory, recall@k vs exact.

Data: clustered synthetic features (``--clusters`` random unit centres, each point a centre plus
isotropic Gaussian noise, L2-normalised), so that nearest neighbours are structured as CLIP
segment features are (many segments per class) and recall is meaningful; uniformly random
vectors in 768 dims have nearly equidistant neighbours. Queries come from the same distribution.

Usage::

    python benchmarks/bench_retrieval.py                     # 200,000 x 768, 250 queries
    python benchmarks/bench_retrieval.py --num 20000         # quick run

Prints one markdown table; the numbers depend on the machine and its load (say which).
"""
import argparse
import os
import time
from typing import Dict, List

import numpy as np
import torch

from retclip.retrieval.index import IndexConfig, build_index


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def clustered(num: int, num_queries: int, dim: int, clusters: int, noise: float, seed: int):
    """(num, dim) database and (num_queries, dim) queries around the same unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def sample(n: int) -> np.ndarray:
        x = centres[rng.integers(0, clusters, n)]
        x += (noise / np.sqrt(dim)) * rng.standard_normal((n, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return sample(num), sample(num_queries)


def index_bytes(index) -> int:
    if hasattr(index, "features"):  # exact torch index
        return index.features.element_size() * index.features.nelement()
    import faiss

    return int(faiss.serialize_index(index.index).nbytes)


def print_row(r: Dict[str, object]) -> None:
    print(f"| {r['index']} | {r['build_s']:.2f} | {r['search_s']:.4f} | {r['recall']:.3f} | "
          f"{r['size_mb']:.1f} | {r['rss_mb']:.1f} |", flush=True)


def run(args: argparse.Namespace) -> List[Dict[str, object]]:
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    data, queries_np = clustered(args.num, args.queries, args.dim, args.clusters, args.noise,
                                 args.seed)
    queries = torch.from_numpy(queries_np)
    rows = []
    truth = None
    for kind in args.types:
        config = IndexConfig(type=kind, nlist=args.nlist, pq_m=args.pq_m, nprobe=args.nprobe,
                             rerank_factor=args.rerank_factor, use_gpu=False)
        rss0 = _rss_bytes()
        start = time.perf_counter()
        index = build_index(config, args.dim)
        index.add(data)
        build_s = time.perf_counter() - start
        rss_delta = _rss_bytes() - rss0
        index.search(queries[:8], args.k)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _, ids = index.search(queries, args.k)
            times.append(time.perf_counter() - start)
        if kind == "exact":
            truth = ids
        recall = float("nan")
        if truth is not None:
            hits = [len(set(a) & set(b)) for a, b in zip(ids.tolist(), truth.tolist())]
            recall = sum(hits) / (args.k * len(hits))
        rows.append({"index": kind, "build_s": build_s, "search_s": float(np.median(times)),
                     "recall": recall, "size_mb": index_bytes(index) / 2**20,
                     "rss_mb": rss_delta / 2**20})
        print_row(rows[-1])
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=200_000, help="database vectors")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=250, help="one image's FC-CLIP queries")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.8, help="noise norm relative to a centre")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, default=8)
    parser.add_argument("--pq-m", dest="pq_m", type=int, default=64)
    parser.add_argument("--rerank-factor", dest="rerank_factor", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--types", nargs="+", default=["exact", "flat", "hnsw", "ivfpq"])
    args = parser.parse_args()
    if args.types[0] != "exact":
        args.types = ["exact"] + [t for t in args.types if t != "exact"]
    print(f"# {args.num} x {args.dim} clustered ({args.clusters} centres, noise {args.noise}), "
          f"{args.queries} queries, k={args.k}, {args.threads} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    print(f"| index | build s | search s ({args.queries} q) | recall@{args.k} | index MB "
          "| RSS delta MB |")
    print("|---|---|---|---|---|---|", flush=True)
    run(args)
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")

if __name__ == "__main__":
    main()
