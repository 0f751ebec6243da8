"""Label matching: synonyms first, then CLIP text cosine; fallback database; report file."""
import json
import logging

import open_clip
import pytest
import torch

from retclip.retrieval.label_matching import match_labels

# Hand-made 3-d "text embeddings" with chosen cosines to "tv": television 0.97 (match),
# "monitor" 0.92 (near miss), "giraffe" 0.0 (nothing).
_EMB = {
    "tv": [1.0, 0.0, 0.0],
    "television receiver": [0.97, (1 - 0.97**2) ** 0.5, 0.0],
    "monitor": [0.92, 0.0, (1 - 0.92**2) ** 0.5],
}


def hand_embed(texts):
    return torch.tensor([_EMB[t] if t in _EMB else _other(t) for t in texts])


def _other(text):
    # distinct directions orthogonal to the first axis, one per text
    g = torch.Generator().manual_seed(sum(map(ord, text)))
    v = torch.randn(3, generator=g)
    v[0] = 0.0
    return v.tolist()


TEST_VOCAB = ["tv", "person, individual", "Cat", "giraffe"]


def test_synonym_then_clip_then_missing(tmp_path, caplog):
    db = ["person", "cat, kitty", "television receiver", "monitor", "lamp"]
    report = tmp_path / "report.json"
    with caplog.at_level(logging.INFO, logger="retclip.retrieval.label_matching"):
        m = match_labels(TEST_VOCAB, [db], hand_embed, report_path=report)
    assert m.mappings[0].tolist() == [1, 2, 0, -1, -1]
    assert m.has_retrieval.tolist() == [True, True, True, False]
    assert m.missing == ["giraffe"]
    assert m.unmatched_db == [["monitor", "lamp"]]  # database classes no test class matches
    assert [(x.db_name, x.method) for x in m.matches] == [
        ("person", "synonym"), ("cat", "synonym"), ("television receiver", "clip")]
    assert m.matches[2].cosine == pytest.approx(0.97, abs=1e-5)
    assert [(x.db_name, x.test_name) for x in m.near_misses] == [("monitor", "tv")]
    assert m.near_misses[0].cosine == pytest.approx(0.92, abs=1e-5)
    saved = json.loads(report.read_text())
    assert saved["missing_test_classes"] == ["giraffe"]
    assert len(saved["matches"]) == 3 and len(saved["near_misses"]) == 1
    assert "near miss db0 'monitor' ~ 'tv'" in caplog.text
    assert "'television receiver' -> 'tv' (clip, cosine 0.97" in caplog.text


def test_fallback_covers_only_missing_classes():
    primary = ["person", "tv"]
    fallback = ["Person", "giraffe, camelopard", "tv", "zebra"]
    m = match_labels(TEST_VOCAB, [primary, fallback], embed_texts=None)
    assert m.mappings[0].tolist() == [1, 0]
    # "Person" and "tv" are already covered by the primary database: not taken from the fallback
    assert m.mappings[1].tolist() == [-1, 3, -1, -1]
    assert m.source == [0, 0, -1, 1]
    assert m.missing == ["Cat"]
    assert m.unmatched_db[1] == ["Person", "tv", "zebra"]


def test_threshold_arguments_checked():
    with pytest.raises(ValueError, match="near_miss <= threshold"):
        match_labels(TEST_VOCAB, [["tv"]], hand_embed, threshold=0.9, near_miss=0.95)
    with pytest.raises(ValueError, match="returned shape"):
        match_labels(["a"], [["b"]], lambda texts: torch.zeros(1, 4))


def test_with_tiny_open_clip_text_tower():
    model = open_clip.create_model("retclip-tiny-convnext").eval()
    tokenizer = open_clip.get_tokenizer("retclip-tiny-convnext")

    @torch.no_grad()
    def embed(texts):
        return model.encode_text(tokenizer(texts))

    with torch.no_grad():
        e = torch.nn.functional.normalize(model.encode_text(tokenizer(["sofa", "couch"])), dim=-1)
    cosine = float(e[0] @ e[1])
    m = match_labels(["sofa"], [["couch"]], embed, threshold=cosine - 1e-4,
                     near_miss=cosine - 2e-4)
    assert m.mappings[0].tolist() == [0]
    assert m.matches[0].method == "clip" and m.matches[0].cosine == pytest.approx(cosine, abs=1e-5)
    strict = match_labels(["sofa"], [["couch"]], embed, threshold=min(1.0, cosine + 1e-3),
                          near_miss=max(0.0, cosine - 1e-3))
    assert strict.mappings[0].tolist() == [-1] and len(strict.near_misses) == 1
