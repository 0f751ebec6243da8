"""Retrieval helps where it should: unseen classes that the text classifier cannot tell apart are
separated by a database holding their features, and seen classes do not get worse, at the
paper's alpha/beta/gamma. Runs the real database, index, label matching, scoring and ensemble."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retclip.ensemble import arithmetic_ensemble
from retclip.retrieval import DatabaseRetriever, EncoderFingerprint, FeatureDatabase, IndexConfig, RetrievalScorer

NAMES = ["person", "car", "wall", "lamp", "sofa, couch", "mountain"]
SEEN = torch.tensor([True, True, True, False, False, False])
DIM = 32


def _segments(centers, per_class, noise, generator):
    labels = torch.arange(len(NAMES)).repeat_interleave(per_class)
    feats = centers[labels] + noise * torch.randn(len(labels), DIM, generator=generator)
    return F.normalize(feats, dim=-1), labels


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(len(NAMES), DIM, generator=g), dim=-1)
    # The text classifier cannot tell the unseen classes apart: they share one text embedding.
    text = centers.clone()
    text[3:] = F.normalize(centers[3:].sum(0), dim=-1)
    fingerprint = EncoderFingerprint("toy-clip", "random", DIM)
    path = tmp_path_factory.mktemp("db") / "toy"
    db = FeatureDatabase.create(path, fingerprint, NAMES, source="toy", dtype="float32")
    feats, labels = _segments(centers, 30, 0.12, g)
    db.append(feats.numpy(), labels.numpy(), [f"img{i // 5}" for i in range(len(labels))])
    head = RetrievalScorer(
        [DatabaseRetriever(path, IndexConfig(type="flat"), encoder=fingerprint)],
        top_k=10, aggregation="max", rank_offset=2.0, embed_texts=None,
        match_threshold=0.95, near_miss=0.9,
    )
    queries, truth = _segments(centers, 40, 0.12, g)
    return centers, text, head, queries, truth


def _classify(queries, centers, text, head, gamma):
    void = torch.full((len(queries), 1), -5.0)
    clip_logits = torch.cat([100 * queries @ text.T, void], 1)
    iv_text = text.clone()  # trained on seen classes only: no better than CLIP on unseen ones
    in_vocab_logits = torch.cat([10 * queries @ iv_text.T, void], 1)
    retrieved = head(queries, NAMES)
    probs = arithmetic_ensemble(
        in_vocab_logits, clip_logits, retrieved.scores if gamma > 0 else None, SEEN, 0.4, 0.7, gamma,
        retrieval_available=retrieved.available if gamma > 0 else None,
    )
    return probs[:, :-1].argmax(1), retrieved


def test_retrieval_separates_unseen_classes_that_text_cannot(setup):
    centers, text, head, queries, truth = setup
    clip_only, _ = _classify(queries, centers, text, head, gamma=0.0)
    retclip, retrieved = _classify(queries, centers, text, head, gamma=0.3)
    assert bool(retrieved.available.all())
    unseen = ~SEEN[truth]
    acc_clip = (clip_only[unseen] == truth[unseen]).float().mean().item()
    acc_ret = (retclip[unseen] == truth[unseen]).float().mean().item()
    assert acc_clip < 0.5  # ties resolve to one class: about 1/3
    assert acc_ret >= 0.9 and acc_ret >= acc_clip + 0.4


def test_seen_classes_do_not_get_worse(setup):
    centers, text, head, queries, truth = setup
    clip_only, _ = _classify(queries, centers, text, head, gamma=0.0)
    retclip, _ = _classify(queries, centers, text, head, gamma=0.3)
    seen = SEEN[truth]
    acc_clip = (clip_only[seen] == truth[seen]).float().mean().item()
    acc_ret = (retclip[seen] == truth[seen]).float().mean().item()
    assert acc_clip > 0.9 and acc_ret >= acc_clip - 0.02


def test_classes_missing_from_the_database_fall_back_to_clip(setup, tmp_path):
    centers, text, _, queries, truth = setup
    fingerprint = EncoderFingerprint("toy-clip", "random", DIM)
    db = FeatureDatabase.create(tmp_path / "partial", fingerprint, ["person", "lamp"], dtype="float32")
    g = torch.Generator().manual_seed(3)
    feats = F.normalize(centers[[0, 3]].repeat_interleave(5, 0) + 0.3 * torch.randn(10, DIM, generator=g), dim=-1)
    db.append(feats.numpy(), np.repeat([0, 1], 5), [f"i{i}" for i in range(10)])
    head = RetrievalScorer(
        [DatabaseRetriever(tmp_path / "partial", IndexConfig(type="exact"), encoder=fingerprint)],
        top_k=5, aggregation="max", rank_offset=2.0, embed_texts=None,
        match_threshold=0.95, near_miss=0.9,
    )
    out = head(queries, NAMES)
    assert out.available.tolist() == [True, False, False, True, False, False]
    assert torch.all(out.scores[:, ~out.available] == 0)
