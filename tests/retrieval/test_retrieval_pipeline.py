"""RetrievalScorer end to end: two databases, label matching, search, per-class scores."""
import numpy as np
import pytest
import torch

from retclip.retrieval import EncoderFingerprint, FeatureDatabase, IndexConfig
from retclip.retrieval.pipeline import RetrievalConfig, RetrievalScorer

DIM = 16
FP = EncoderFingerprint("retclip-tiny-resnet", "random", DIM)
CENTRES = torch.nn.functional.normalize(
    torch.randn(4, DIM, generator=torch.Generator().manual_seed(0)), dim=1
)


def _db(path, vocab, centre_ids, n=20):
    db = FeatureDatabase.create(path, FP, vocab, dtype="float32")
    g = torch.Generator().manual_seed(len(vocab))
    labels = np.arange(n) % len(centre_ids)
    x = CENTRES[[centre_ids[i] for i in labels]] + 0.05 * torch.randn(n, DIM, generator=g)
    db.append(x.numpy(), labels, [str(i) for i in range(n)])
    return db


def test_scorer_primary_and_fallback(tmp_path):
    # test classes: cat (centre 0), dog (1), zebra (2, fallback only), lamp (3, in no database)
    _db(tmp_path / "ade", ["cat", "dog"], [0, 1])
    _db(tmp_path / "oi", ["zebra", "Cat"], [2, 0])
    cfg = RetrievalConfig(database=str(tmp_path / "ade"), fallback_database=str(tmp_path / "oi"),
                          top_k=5)
    scorer = RetrievalScorer(cfg, FP, ["cat", "dog", "zebra", "lamp"])
    assert scorer.has_retrieval.tolist() == [True, True, True, False]
    s_ret = scorer.score(CENTRES)
    assert s_ret.shape == (4, 4)
    assert s_ret.argmax(1)[:2].tolist() == [0, 1]
    # min-max is relative: the primary database's nearest neighbour of a zebra still scores 1
    # (a dog), while the fallback gives zebra its 1
    assert s_ret[2, 1] == 1.0 and s_ret[2, 2] == 1.0
    # nearest neighbour of each centre is of its own class: max aggregation gives exactly 1
    assert torch.allclose(s_ret[[0, 1, 2], [0, 1, 2]], torch.ones(3))
    assert (s_ret[:, 3] == 0).all()  # lamp: no database
    parts = scorer.score_batch([CENTRES[:1], CENTRES[1:]])
    assert torch.equal(torch.cat(parts), s_ret)
    _, votes = scorer.score(CENTRES[:1], return_votes=True)
    assert set(votes[0][0]) == {0}  # primary database: all 5 neighbours of centre 0 are cats


def test_scorer_rejects_other_encoder_and_missing_db(tmp_path):
    _db(tmp_path / "ade", ["cat"], [0])
    cfg = RetrievalConfig(database=str(tmp_path / "ade"))
    with pytest.raises(ValueError, match="retclip-tiny-resnet/random"):
        RetrievalScorer(cfg, EncoderFingerprint("RN50", "openai", DIM), ["cat"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RetrievalScorer(RetrievalConfig(database=str(tmp_path / "nowhere")), FP, ["cat"])
    with pytest.raises(ValueError, match="valid"):
        RetrievalConfig(aggregation="softmax")


def test_config_from_cfg():
    from detectron2.config import get_cfg

    from retclip.config import add_retclip_config

    cfg = get_cfg()
    add_retclip_config(cfg)
    cfg.MODEL.RETCLIP.TOP_K = 7
    cfg.MODEL.RETCLIP.AGGREGATION = "rank_vote"
    rc = RetrievalConfig.from_cfg(cfg)
    assert (rc.top_k, rc.aggregation, rc.rank_offset, rc.label_match_threshold) == (
        7, "rank_vote", 2.0, 0.95)
    assert isinstance(rc.index, IndexConfig) and rc.index.type == "exact"
