"""Text classifier (templates, prompt ensembling, batching, caches) and vocabulary rules."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from retclip.modeling.backbone.clip import CLIP
from retclip.modeling.text_classifier import (
    VILD_TEMPLATES,
    TextEmbeddingCache,
    build_prompts,
    encode_vocabulary,
)
from retclip.modeling.text_encoder import CLIPTextEncoder
from retclip.utils.array_cache import cache_root
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
    emb, counts = encode_vocabulary(backbone.encode_prompts, names)
    assert emb.shape == (3, 32) and counts == [2, 1]
    # Independent form: the direction of the sum of unit prompt vectors (mean then renormalise).
    for row, synonym in enumerate(["sofa", "couch", "cat"]):
        raw = torch.cat([backbone.encode_prompts([t.format(synonym)]) for t in VILD_TEMPLATES])
        unit = raw / raw.norm(dim=-1, keepdim=True)
        total = unit.sum(0)
        torch.testing.assert_close(emb[row], total / total.norm(), rtol=1e-5, atol=1e-5)


def test_batch_size_does_not_change_embeddings(backbone):
    names = ["sofa, couch", "cat", "grass"]
    small = CLIPTextEncoder(backbone.clip_model, backbone.text_tokenizer, "tiny", batch_size=3)
    a, _ = encode_vocabulary(backbone.text_encoder, names, persistent=False)
    b, _ = encode_vocabulary(small, names, persistent=False)
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
def test_large_vocabulary_is_encoded_in_batches(backbone, num_classes):
    names = [f"class {i}" for i in range(num_classes)]
    batches = []
    hook = backbone.clip_model.transformer.register_forward_pre_hook(
        lambda module, args: batches.append(args[0].shape[0])
    )
    try:
        emb, counts = encode_vocabulary(backbone.text_encoder, names, persistent=False)
    finally:
        hook.remove()
    assert emb.shape == (num_classes, 32) and counts == [1] * num_classes
    assert sum(batches) == 14 * num_classes and len(batches) == -(-14 * num_classes // 128)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(num_classes))
    # the last, partial chunk is placed like the others
    last = names[-1]
    ref, _ = encode_vocabulary(backbone.encode_prompts, [last])
    torch.testing.assert_close(emb[-1], ref[0], rtol=1e-5, atol=1e-5)


def fresh_backbone():
    """A second model instance with the same random weights as the ``backbone`` fixture."""
    torch.manual_seed(0)
    return CLIP(model_name="retclip-tiny-convnext", pretrained="")


class TowerCalls:
    """Counts forward calls of a CLIP's text transformer (every text path runs it)."""

    def __init__(self, backbone):
        self.n = 0
        self._handle = backbone.clip_model.transformer.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.n += 1

    def remove(self):
        self._handle.remove()


def encode_counting(backbone, names):
    calls = TowerCalls(backbone)
    try:
        emb, _ = TextEmbeddingCache(backbone.text_encoder).get(names, torch.device("cpu"))
    finally:
        calls.remove()
    return emb, calls.n


def test_suite_never_writes_to_the_user_cache():
    assert cache_root().resolve() != (Path.home() / ".cache" / "retclip").resolve()


def test_cache_root_defaults_to_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RETCLIP_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("RETCLIP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "retclip"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "retclip"


def test_second_model_instance_makes_no_text_tower_call(backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("RETCLIP_CACHE", str(tmp_path))
    names = ["sofa, couch", "cat"]
    first, calls = encode_counting(backbone, names)
    assert calls == 1 and len(list((tmp_path / "text_embeddings").glob("*.npy"))) == 1
    ref, _ = encode_vocabulary(backbone.encode_prompts, names)  # no weights digest: no disk
    torch.testing.assert_close(first, ref, rtol=1e-5, atol=1e-5)
    second, calls = encode_counting(fresh_backbone(), names)
    assert calls == 0 and torch.equal(first, second)
    _, calls = encode_counting(fresh_backbone(), ["sofa, couch"])  # other prompts: a miss
    assert calls == 1


def test_other_text_weights_miss_the_cache(backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("RETCLIP_CACHE", str(tmp_path))
    first, _ = encode_counting(backbone, ["cat"])
    other = fresh_backbone()
    state = other.clip_model.state_dict()
    state["text_projection"] += torch.randn(state["text_projection"].shape)
    other.clip_model.load_state_dict(state)
    second, calls = encode_counting(other, ["cat"])
    assert calls == 1 and not torch.allclose(first, second)
    assert len(list((tmp_path / "text_embeddings").glob("*.npy"))) == 2


def _corrupt_bytes(path):
    path.write_bytes(b"\x93NUMPY garbage")


def _pickled_object(path):
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _wrong_shape(path):
    np.save(path, np.zeros((7, 32), dtype=np.float32))


@pytest.mark.parametrize("corrupt", [_corrupt_bytes, _pickled_object, _wrong_shape])
def test_corrupt_entry_is_recomputed_with_warning(
    backbone, monkeypatch, tmp_path, caplog, corrupt
):
    monkeypatch.setenv("RETCLIP_CACHE", str(tmp_path))
    names = ["lamp, light", "sky"]
    good, _ = encode_counting(backbone, names)
    (path,) = (tmp_path / "text_embeddings").glob("*.npy")
    corrupt(path)
    with caplog.at_level(logging.WARNING):
        again, calls = encode_counting(fresh_backbone(), names)
    assert calls == 1 and "recomputing" in caplog.text and str(path) in caplog.text
    torch.testing.assert_close(again, good)
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), good.numpy())  # rewritten


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
