"""Index backends against a NumPy brute-force reference; k > N; empty DB; index cache."""
import logging

import numpy as np
import pytest
import torch

from retclip.retrieval.database import FeatureDatabase
from retclip.retrieval.fingerprint import EncoderFingerprint
from retclip.retrieval.index import INDEX_TYPES, IndexConfig, build_index
from retclip.retrieval.search import DatabaseRetriever, concat_queries

DIM = 32
FP = EncoderFingerprint("retclip-tiny-convnext", "random", DIM)


def _clustered(n, seed=0, centers=40):
    """Points near random cluster centres, so the top-10 is well separated and recall meaningful."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, DIM)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(x, q, k):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qn.astype(np.float64) @ x.astype(np.float64).T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data():
    return _clustered(5000), _clustered(50, seed=1)


@pytest.mark.parametrize("kind", ["exact", "flat"])
def test_exact_backends_match_numpy(data, kind):
    x, q = data
    index = build_index(IndexConfig(type=kind), DIM)
    index.add(torch.from_numpy(x[:2000]))
    index.add(x[2000:])
    scores, ids = index.search(torch.from_numpy(q), 10)
    ref_s, ref_i = _reference(x, q, 10)
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64
    assert (ids.numpy() == ref_i).mean() > 0.99  # ties in float32 may swap a pair
    np.testing.assert_allclose(scores.numpy(), ref_s, atol=1e-5)


@pytest.mark.parametrize("kind,extra", [("hnsw", {}), ("ivfpq", {"nlist": 64, "pq_m": 4})])
def test_approximate_backends_recall(data, kind, extra):
    x, q = data
    index = build_index(IndexConfig(type=kind, **extra), DIM)
    index.add(x)
    scores, ids = index.search(q, 10)
    _, ref_i = _reference(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.numpy(), ref_i)])
    assert recall >= 0.9, recall
    # scores are cosines of the returned ids (HNSW stores raw vectors; IVF-PQ re-ranks on
    # float16 rows, the databases' storage precision: about 1e-3 off)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    exact = np.einsum("nd,nkd->nk", qn, x[ids.numpy()])
    np.testing.assert_allclose(scores.numpy(), exact, atol=1e-4 if kind == "hnsw" else 2e-3)


@pytest.mark.parametrize("kind", ["exact", "flat", "hnsw"])
def test_k_larger_than_database(kind):
    x = _clustered(5)
    index = build_index(IndexConfig(type=kind), DIM)
    index.add(x)
    scores, ids = index.search(x[:2], 8)
    assert scores.shape == (2, 8) and ids.shape == (2, 8)
    assert (ids[:, 5:] == -1).all() and torch.isneginf(scores[:, 5:]).all()
    assert sorted(ids[0, :5].tolist()) == [0, 1, 2, 3, 4]
    assert ids[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_registry_errors_and_bad_queries():
    with pytest.raises(KeyError, match="valid: \\['exact', 'flat', 'hnsw', 'ivfpq'\\]"):
        build_index(IndexConfig(type="annoy"), DIM)
    assert "builder(config: IndexConfig, dim: int)" in type(INDEX_TYPES).__doc__
    index = build_index(IndexConfig(type="exact"), DIM)
    with pytest.raises(ValueError, match="empty"):
        index.search(torch.randn(2, DIM), 3)
    index.add(_clustered(10))
    with pytest.raises(ValueError, match=r"queries must have shape \(N, 32\)"):
        index.search(torch.randn(2, 8), 3)
    with pytest.raises(ValueError, match="pq_m=7 must divide"):
        build_index(IndexConfig(type="ivfpq", pq_m=7), DIM).add(_clustered(300))


def test_index_config_from_cfg():
    from detectron2.config import get_cfg

    from retclip.config import add_retclip_config

    cfg = get_cfg()
    add_retclip_config(cfg)
    cfg.MODEL.RETCLIP.INDEX.TYPE = "hnsw"
    cfg.MODEL.RETCLIP.INDEX.HNSW_EF_SEARCH = 64
    ic = IndexConfig.from_cfg(cfg)
    got = (ic.type, ic.ef_search, ic.ef_construction, ic.nlist, ic.pq_m, ic.rerank_factor)
    assert got == ("hnsw", 64, 80, 1024, 64, 10)


def _database(path, n=600):
    db = FeatureDatabase.create(path, FP, ["a", "b", "c"], dtype="float32")
    x = _clustered(n, seed=2)
    db.append(x, np.arange(n) % 3, [str(i) for i in range(n)])
    return db, x


def test_empty_database_fails_at_search_setup(tmp_path):
    db = FeatureDatabase.create(tmp_path / "db", FP, ["a"])  # creating an empty DB is fine
    with pytest.raises(ValueError, match="is empty"):
        DatabaseRetriever(db, IndexConfig())


def test_retriever_labels_and_batches(tmp_path):
    db, x = _database(tmp_path / "db")
    retriever = DatabaseRetriever(db, IndexConfig(type="exact"), encoder=FP)
    q1, q2 = torch.from_numpy(x[:3]), torch.from_numpy(x[10:15])
    queries, sizes = concat_queries([q1, q2])
    assert sizes == [3, 5]
    parts = retriever.search_batch([q1, q2], 4)
    assert [p.ids.shape[0] for p in parts] == [3, 5]
    alone = retriever.search(q2, 4)
    assert torch.equal(parts[1].ids, alone.ids)
    assert torch.equal(alone.labels, alone.ids % 3)  # row i has label i % 3
    big = retriever.search(q1, 700)
    assert (big.labels[:, 600:] == -1).all()
    with pytest.raises(ValueError, match="other|uses"):
        DatabaseRetriever(db, IndexConfig(), encoder=EncoderFingerprint("ViT-B-16", "openai", DIM))


def test_index_cache_missing_stale_and_loaded(tmp_path, caplog):
    db, x = _database(tmp_path / "db")
    config = IndexConfig(type="hnsw")
    with caplog.at_level(logging.INFO, logger="retclip.retrieval.search"):
        first = DatabaseRetriever(db, config)
    assert "rebuilt hnsw index" in caplog.text and "missing" in caplog.text
    index_file = tmp_path / "db" / "index" / "hnsw.faiss"
    assert index_file.is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="retclip.retrieval.search"):
        second = DatabaseRetriever(db, config)
    assert "loaded hnsw index" in caplog.text and "rebuilt" not in caplog.text
    q = torch.from_numpy(x[:5])
    assert torch.equal(first.search(q, 5).ids, second.search(q, 5).ids)
    # a database change makes the saved index stale
    db.append(_clustered(10, seed=9), np.zeros(10, dtype=np.int64), ["new"] * 10)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="retclip.retrieval.search"):
        third = DatabaseRetriever(db, config)
    assert "stale" in caplog.text and len(third) == 610
    # a deleted index file is rebuilt, and the log says so
    index_file.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="retclip.retrieval.search"):
        DatabaseRetriever(db, config)
    assert "rebuilt hnsw index" in caplog.text and "missing" in caplog.text
    # an unreadable index file too
    index_file.write_bytes(b"garbage")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="retclip.retrieval.search"):
        DatabaseRetriever(db, config)
    assert "unreadable" in caplog.text
