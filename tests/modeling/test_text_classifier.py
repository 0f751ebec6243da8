"""Text classifier (templates, prompt ensembling, chunking, cache) and vocabulary rules."""

import pytest
import torch

from retclip.modeling.backbone.clip import CLIP
from retclip.modeling.text_classifier import (
    VILD_TEMPLATES,
    TextEmbeddingCache,
    build_prompts,
    encode_vocabulary,
)
from retclip.modeling.vocabulary import make_vocabulary, seen_class_mask, split_synonyms
from retclip.testing.synthetic import TEST_CLASSES, TRAIN_CLASSES


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return CLIP(model_name="retclip-tiny-convnext", pretrained="")


class CountingEncoder:
    """Wraps a backbone's prompt encoder and counts calls and prompts."""

    def __init__(self, backbone):
        self.backbone, self.calls, self.prompts = backbone, 0, 0

    def __call__(self, prompts):
        self.calls += 1
        self.prompts += len(prompts)
        return self.backbone.encode_prompts(prompts)


def test_vild_templates():
    assert len(VILD_TEMPLATES) == 14
    assert VILD_TEMPLATES[0] == "a photo of a {}."
    assert VILD_TEMPLATES[1] == "This is a photo of a {}"
    assert VILD_TEMPLATES[-1] == "There is a large {} in the scene."
    assert len(set(VILD_TEMPLATES)) == 14


def test_prompts_are_synonym_major():
    prompts, counts = build_prompts(["sofa, couch", "cat"])
    assert counts == [2, 1]
    assert len(prompts) == 3 * 14
    assert (
        prompts[0] == "a photo of a sofa." and prompts[13] == "There is a large sofa in the scene."
    )
    assert prompts[14] == "a photo of a couch." and prompts[28] == "a photo of a cat."


def test_split_synonyms_fcclip_rule():
    assert split_synonyms("sofa, couch") == ["sofa", "couch"]
    assert split_synonyms("sofa,couch") == ["sofa", "couch"]
    assert split_synonyms("traffic light") == ["traffic light"]
    with pytest.raises(ValueError, match="cat,,dog"):
        split_synonyms("cat,,dog")


def test_embeddings_equal_normalised_sum_of_unit_prompts(backbone):
    names = ["sofa, couch", "cat"]
    emb, counts = encode_vocabulary(backbone.encode_prompts, names, chunk_size=5)
    assert emb.shape == (3, 32) and counts == [2, 1]
    # Independent form: the direction of the sum of unit prompt vectors (mean then renormalise).
    for row, synonym in enumerate(["sofa", "couch", "cat"]):
        raw = torch.cat([backbone.encode_prompts([t.format(synonym)]) for t in VILD_TEMPLATES])
        unit = raw / raw.norm(dim=-1, keepdim=True)
        total = unit.sum(0)
        torch.testing.assert_close(emb[row], total / total.norm(), rtol=1e-5, atol=1e-5)


def test_chunk_size_does_not_change_embeddings(backbone):
    names = ["sofa, couch", "cat", "grass"]
    a, _ = encode_vocabulary(backbone.encode_prompts, names, chunk_size=128)
    b, _ = encode_vocabulary(backbone.encode_prompts, names, chunk_size=3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cache_encodes_each_vocabulary_once(backbone):
    counter = CountingEncoder(backbone)
    cache = TextEmbeddingCache(counter, max_entries=2)
    first, _ = cache.get(["cat", "dog"], torch.device("cpu"))
    calls = counter.calls
    second, _ = cache.get(["cat", "dog"], torch.device("cpu"))
    assert calls == 1 and counter.calls == 1 and second is first
    cache.get(["cat"], torch.device("cpu"))
    cache.get(["dog"], torch.device("cpu"))  # evicts ["cat", "dog"] (max 2 entries)
    cache.get(["cat", "dog"], torch.device("cpu"))
    assert counter.calls == 4
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize(
    "num_classes",
    [pytest.param(100, id="100"), pytest.param(1000, id="1000", marks=pytest.mark.slow)],
)
def test_large_vocabulary_is_encoded_in_chunks(backbone, num_classes):
    names = [f"class {i}" for i in range(num_classes)]
    counter = CountingEncoder(backbone)
    emb, counts = encode_vocabulary(counter, names)
    assert emb.shape == (num_classes, 32) and counts == [1] * num_classes
    assert counter.prompts == 14 * num_classes and counter.calls == -(-14 * num_classes // 128)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(num_classes))
    # the last, partial chunk is placed like the others
    last = names[-1]
    ref, _ = encode_vocabulary(backbone.encode_prompts, [last])
    torch.testing.assert_close(emb[-1], ref[0], rtol=1e-5, atol=1e-5)


def test_seen_mask_on_synthetic_classes():
    train = [c["name"] for c in TRAIN_CLASSES]
    test = [c["name"] for c in TEST_CLASSES]
    # by hand: wall (via "wall, brick wall"), sky, person, grass, car are COCO-like; lamp,
    # mountain, sofa are not.
    expected = [True, True, True, True, False, True, False, False]
    assert seen_class_mask(train, test).tolist() == expected
    assert seen_class_mask(train, test).dtype == torch.bool


def test_seen_mask_is_case_sensitive_and_synonym_exact():
    assert seen_class_mask(
        ["Wall", "tv, television"], ["wall", "television set", "tv"]
    ).tolist() == [
        False,
        False,
        True,
    ]


def test_vocabulary_errors_name_the_problem():
    with pytest.raises(ValueError, match="empty"):
        make_vocabulary([])
    with pytest.raises(ValueError, match="'cat'"):
        make_vocabulary(["cat", "dog", "cat"])
    with pytest.raises(ValueError, match="2 classes"):
        make_vocabulary(["cat", "dog"], seen=[True])
    vocab = make_vocabulary(["cat", "dog", "cat"], allow_duplicates=True)
    assert len(vocab) == 3


def test_vocabulary_logs_seen_list(caplog):
    with caplog.at_level("INFO", logger="retclip.modeling.vocabulary"):
        vocab = make_vocabulary(["cat", "lamp"], train_classes=["cat, kitty"], source="mine")
    assert vocab.seen.tolist() == [True, False]
    assert "1 of 2 classes seen" in caplog.text and "'cat'" in caplog.text
