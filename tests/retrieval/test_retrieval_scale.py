"""Opening without loading, the streaming/parallel index build, and the index memory estimate."""
import builtins
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from retclip.retrieval.database import FeatureDatabase
from retclip.retrieval.fingerprint import EncoderFingerprint
from retclip.retrieval.index import IndexConfig, build_index
from retclip.retrieval.index_build import (
    build_database_index,
    estimate_index_bytes,
    save_cached_index,
    shard_slices,
    suggest_ivfpq_params,
)
from retclip.retrieval.labels import LABELS_FILE, LABELS_META
from retclip.retrieval.search import DatabaseRetriever

DIM = 32
FP = EncoderFingerprint("retclip-tiny-convnext", "random", DIM)
ROOT = Path(__file__).resolve().parents[2]
IVF = IndexConfig(type="ivfpq", nlist=16, pq_m=4, nprobe=4, train_size=1500, train_seed=3)


def _clustered(n, seed=0, centers=30):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, DIM)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def _database(path, n=2400, shards=5, classes=7):
    db = FeatureDatabase.create(path, FP, [f"class{i}" for i in range(classes)], dtype="float16")
    x = _clustered(n)
    labels = (np.arange(n) * 5 + 3) % classes
    for part in np.array_split(np.arange(n), shards):
        db.append(x[part], labels[part], [f"img{i // 4}" for i in part])
    return db, x, labels


def test_open_with_cached_ivfpq_reads_no_feature_shard(tmp_path, monkeypatch):
    db, x, labels = _database(tmp_path / "db")
    index = build_database_index(db, IVF)
    save_cached_index(index, db.path / "index", db, IVF)
    queries = torch.from_numpy(x[::97])
    expected = DatabaseRetriever(db, IVF).search(queries, 5)
    np.testing.assert_array_equal(expected.labels.numpy(), labels[expected.ids.numpy()])

    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    # Shards moved away: any read of one would fail, on top of being counted.
    os.rename(db.path / "shards", tmp_path / "shards_elsewhere")
    retriever = DatabaseRetriever(FeatureDatabase.open(db.path), IVF)
    got = retriever.search(queries, 5)
    assert not [f for f in opened if "/shards/" in f], opened
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.ids, expected.ids) and torch.equal(got.labels, expected.labels)


def test_old_database_gets_its_label_array_on_first_open(tmp_path, caplog):
    db, x, labels = _database(tmp_path / "db")
    for name in (LABELS_FILE, LABELS_META):
        (db.path / name).unlink(missing_ok=True)
    with caplog.at_level(logging.INFO, logger="retclip.retrieval.labels"):
        retriever = DatabaseRetriever(db, IndexConfig(type="flat", use_gpu=False))
    assert "building the label array" in caplog.text and "missing" in caplog.text
    stored = np.load(db.path / LABELS_FILE)
    assert stored.dtype == np.int32
    np.testing.assert_array_equal(stored, labels)
    # an append makes it stale: rewritten at the next open, with the new rows' labels
    db.append(x[:3], np.array([6, 6, 6]), ["new"] * 3)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="retclip.retrieval.labels"):
        DatabaseRetriever(db, IndexConfig(type="flat", use_gpu=False))
    assert "stale" in caplog.text
    np.testing.assert_array_equal(np.load(db.path / LABELS_FILE)[-3:], [6, 6, 6])
    assert retriever.image_ids[:5] == ["img0", "img0", "img0", "img0", "img1"]


def test_streaming_build_equals_one_in_memory_add(tmp_path):
    """The shard-by-shard build trains on the same seeded sample as an add of all rows."""
    import faiss

    db, _, _ = _database(tmp_path / "db")
    streamed = build_database_index(db, IVF)
    whole = build_index(IVF, DIM)
    whole.add(db.load_all().features)
    assert np.array_equal(
        faiss.serialize_index(streamed.index), faiss.serialize_index(whole.index)
    )


@pytest.mark.slow
def test_two_process_build_equals_one_process_build(tmp_path):
    """tools/build_index.py --workers 2 writes the same index file as --workers 1."""
    import faiss

    db, x, _ = _database(tmp_path / "db", n=3000, shards=7)
    opts = ["MODEL.RETCLIP.INDEX.TYPE", "ivfpq", "MODEL.RETCLIP.INDEX.IVF_NLIST", "16",
            "MODEL.RETCLIP.INDEX.PQ_M", "4", "MODEL.RETCLIP.INDEX.TRAIN_SIZE", "2000"]
    files = {}
    for workers in (1, 2):
        out = tmp_path / f"index{workers}"
        proc = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "build_index.py"), str(db.path), "--workers",
             str(workers), "--index-dir", str(out), *opts],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        assert summary["rows"] == 3000 and summary["workers"] == workers
        files[workers] = out / "ivfpq.faiss"
        meta = json.loads((out / "ivfpq.json").read_text())
        assert meta["database_content_hash"] == db.content_hash()
    one, two = files[1].read_bytes(), files[2].read_bytes()
    assert one == two  # same ids, codes and order in every list, same re-rank rows
    a, b = faiss.read_index(str(files[1])), faiss.read_index(str(files[2]))
    for index in (a, b):
        faiss.extract_index_ivf(index).nprobe = 4
    da, ia = a.search(x[:50], 10)
    db_, ib = b.search(x[:50], 10)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(da, db_)
    invlists = faiss.extract_index_ivf(b).invlists
    ids = np.concatenate([
        faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
        for i in range(invlists.nlist)
    ])
    assert sorted(ids.tolist()) == list(range(3000))


@pytest.mark.slow
def test_build_index_tool_reports_budget_and_bad_input(tmp_path):
    db, _, _ = _database(tmp_path / "db")
    tool = [sys.executable, str(ROOT / "tools" / "build_index.py"), str(db.path)]
    over = subprocess.run(
        tool + ["--max-index-memory", "10K", "MODEL.RETCLIP.INDEX.TYPE", "ivfpq"],
        capture_output=True, text=True, timeout=300,
    )
    assert over.returncode == 2 and "--max-index-memory 10K" in over.stderr
    exact = subprocess.run(tool + ["MODEL.RETCLIP.INDEX.TYPE", "exact"], capture_output=True,
                           text=True, timeout=300)
    assert exact.returncode == 2 and "'exact' is not cached" in exact.stderr
    bad_key = subprocess.run(tool + ["MODEL.RETCLIP.INDEX.NO_SUCH_KEY", "1"], capture_output=True,
                             text=True, timeout=300)
    assert bad_key.returncode == 2 and "NO_SUCH_KEY" in bad_key.stderr
    params = ["IVF_NLIST", "16", "PQ_M", "4", "IVF_NPROBE", "4", "TRAIN_SIZE", "1500", "TRAIN_SEED", "3"]
    built = subprocess.run(
        tool + ["MODEL.RETCLIP.INDEX.TYPE", "ivfpq"]
        + [v if i % 2 else f"MODEL.RETCLIP.INDEX.{v}" for i, v in enumerate(params)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    # the config was read in a child process: the building process never loaded torch
    assert summary["torch_loaded"] is False and summary["peak_rss_bytes"] > 0
    assert summary["rows"] == 2400 and Path(summary["index"]).is_file()
    # the model's retriever (same parameters) opens that index as valid: no rebuild
    from retclip.retrieval.index_build import cache_problem

    assert cache_problem(db.path / "index", FeatureDatabase.open(db.path), IVF) is None


def test_index_memory_estimate_matches_faiss_and_budget_rule(tmp_path):
    import faiss

    db, _, _ = _database(tmp_path / "db", n=4000, shards=2)
    config = IndexConfig(type="ivfpq", nlist=16, pq_m=8, train_size=4000)
    index = build_database_index(db, config)
    actual = faiss.serialize_index(index.index).nbytes
    estimate = estimate_index_bytes(config, 4000, DIM)
    assert abs(estimate - actual) / actual < 0.15, (estimate, actual)
    params = suggest_ivfpq_params(10**7, 768, 64 * 2**30)
    assert params == {"nlist": 16384, "pq_m": 96}  # 4*sqrt(1e7) = 12649 -> 2**14
    small = suggest_ivfpq_params(10**7, 768, int(15.2 * 2**30))
    assert small["pq_m"] == 64 and 10**7 * (2 * 768 + 64 + 8) < 15.2 * 2**30
    with pytest.raises(ValueError, match="need at least"):
        suggest_ivfpq_params(10**7, 768, 2**30)


def test_shard_slices_are_contiguous_and_balanced():
    rows = [100, 100, 100, 100, 100, 100]
    assert shard_slices(rows, 2) == [(0, 3), (3, 6)]
    assert shard_slices(rows, 4) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert shard_slices([5], 3) == [(0, 1)]
    with pytest.raises(ValueError):
        shard_slices(rows, 0)


_NO_TORCH = r"""
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, BlockTorch())
from pathlib import Path
from retclip.retrieval import DatabaseRetriever, FeatureDatabase, IndexConfig
from retclip.retrieval.index_build import build_database_index, save_cached_index

db = FeatureDatabase.open(sys.argv[1])
config = IndexConfig(type="ivfpq", nlist=16, pq_m=4, nprobe=4, train_size=1500, train_seed=3)
save_cached_index(build_database_index(db, config), db.path / "index", db, config)
retriever = DatabaseRetriever(FeatureDatabase.open(sys.argv[1]), config)
assert "torch" not in sys.modules
print("opened", len(retriever), "rows without torch")
"""


def test_index_build_and_open_run_without_torch(tmp_path):
    """tools/build_index.py's work and opening a database over its cached index import no torch
    (torch alone is ~0.5 GB resident: at 1M rows that is a third of the raw feature bytes)."""
    db, x, labels = _database(tmp_path / "db")
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(db.path)], capture_output=True, text=True,
        timeout=300, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode == 0, proc.stderr
    assert "opened 2400 rows without torch" in proc.stdout
    # the index that process built and cached is the one a torch process then searches
    got = DatabaseRetriever(FeatureDatabase.open(db.path), IVF).search(torch.from_numpy(x[:50]), 5)
    np.testing.assert_array_equal(got.labels.numpy(), labels[got.ids.numpy()])
    assert (got.ids[:, 0].numpy() == np.arange(50)).mean() > 0.9  # each row finds itself
