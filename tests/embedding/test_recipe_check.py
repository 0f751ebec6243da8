"""The recipe rules in seconds: what a recipe records, how a database refuses another one (naming
each field, both values), the allow-mismatch warning, old manifests, and the weights hash."""

import dataclasses
import hashlib
import logging

import numpy as np
import open_clip
import pytest
import torch

from retclip.modeling.segment_embedding import ConvSegmentEmbedding, DatabaseRecipeCheck
from retclip.retrieval import FeatureDatabase, IndexConfig, RetrievalScorer
from retclip.retrieval.fingerprint import EmbeddingRecipe, sha256_state_dict
from retclip.retrieval.search import DatabaseRetriever

VOCAB = ["person", "car"]


@pytest.fixture(scope="module")
def embedding(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "tiny.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("retclip-tiny-convnext").state_dict(), path)
    return ConvSegmentEmbedding.from_names(
        "retclip-tiny-convnext", str(path), min_size=96, max_size=160
    )


def _database(path, recipe):
    db = FeatureDatabase.create(path, recipe, VOCAB, dtype="float32")
    db.append(np.eye(recipe.embed_dim, dtype=np.float32)[:2], np.array([0, 1]), ["a", "b"])
    return str(path)


def _scorer(path):
    return RetrievalScorer([DatabaseRetriever(path, IndexConfig())], top_k=1)


def test_recipe_records_the_settings_and_round_trips(embedding, tmp_path):
    recipe = embedding.recipe()
    assert recipe.resize == "shortest_edge(96, max=160)" and recipe.pad_multiple == 32
    assert recipe.dense_mode == "convnext" and recipe.feature_dtype == "float32"
    mean = open_clip.create_model("retclip-tiny-convnext").visual.preprocess_cfg["mean"]
    np.testing.assert_allclose(recipe.pixel_mean, np.array(mean) * 255)
    assert recipe.fingerprint == embedding.fingerprint
    db = FeatureDatabase.open(_database(tmp_path / "db", recipe))
    assert db.recipe == recipe and db.fingerprint == embedding.fingerprint


def test_weights_hash_is_of_the_weights_as_loaded(embedding):
    visual = embedding.backbone.clip_model.visual
    state = visual.state_dict()
    # Independent reference: hashlib over the same canonical serialisation, built with numpy.
    ref = hashlib.sha256()
    for name in sorted(state):
        arr = state[name].detach().cpu().numpy()
        ref.update(f"{name}|{state[name].dtype}|{tuple(arr.shape)}|".encode())
        ref.update(np.ascontiguousarray(arr).tobytes())
    assert embedding.recipe().weights_sha256 == ref.hexdigest()
    changed = {k: v.clone() for k, v in state.items()}
    first = sorted(changed)[0]
    changed[first].view(-1)[0] += 1e-3
    assert sha256_state_dict(changed) != ref.hexdigest()
    assert sha256_state_dict({k: v.clone() for k, v in state.items()}) == ref.hexdigest()


@pytest.mark.parametrize(
    "change",
    [
        {"resize": "shortest_edge(192, max=512)"},
        {"pixel_mean": (123.675, 116.28, 103.53), "pixel_std": (58.395, 57.12, 57.375)},
        {"weights_sha256": "0" * 64, "weights": "random"},
        {"window": 448, "stride": 224, "dense_mode": "value"},
    ],
)
def test_other_recipe_is_refused_naming_each_field(embedding, tmp_path, change, caplog):
    ours = embedding.recipe()
    path = _database(tmp_path / "db", dataclasses.replace(ours, **change))
    compared = [k for k in change if k != "weights"]  # provenance only: the hash decides
    with pytest.raises(ValueError) as err:
        DatabaseRecipeCheck(embedding, _scorer(path), allow_mismatch=False)()
    for field in compared:
        assert f"{field}: database {change[field]!r}, model {getattr(ours, field)!r}" in str(err.value)
    assert "weights:" not in str(err.value)
    with caplog.at_level(logging.WARNING):
        DatabaseRecipeCheck(embedding, _scorer(path), allow_mismatch=True)()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"{field}: database" in warned for field in compared)
    assert "ALLOW_RECIPE_MISMATCH" in warned


def test_weights_are_checked_only_once_final(embedding, tmp_path):
    path = _database(tmp_path / "db", dataclasses.replace(embedding.recipe(), weights_sha256="0" * 64))
    check = DatabaseRecipeCheck(embedding, _scorer(path), allow_mismatch=False)  # construction: ok
    with pytest.raises(ValueError, match="weights_sha256"):
        check()
    check.reset()
    with pytest.raises(ValueError, match="weights_sha256"):
        check()


def test_other_dimension_is_refused_even_when_allowed(embedding, tmp_path):
    other = dataclasses.replace(embedding.recipe(), embed_dim=16)
    db = FeatureDatabase.open(_database(tmp_path / "db", other))
    with pytest.raises(ValueError, match="embed_dim: database 16, model 32"):
        db.check_recipe(embedding.recipe(), allow_mismatch=True)


def test_old_manifest_warns_naming_what_is_missing(embedding, tmp_path, caplog):
    path = _database(tmp_path / "old", embedding.fingerprint)
    with caplog.at_level(logging.WARNING):
        DatabaseRecipeCheck(embedding, _scorer(path), allow_mismatch=False)()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "records no embedding recipe" in warned
    assert all(w in warned for w in ("resize", "mean/std", "padding", "pooling", "weights hash"))
    other = _database(tmp_path / "other", dataclasses.replace(embedding.fingerprint, model_name="RN50"))
    with pytest.raises(ValueError, match="RN50.*retclip-tiny-convnext|retclip-tiny-convnext.*RN50"):
        DatabaseRecipeCheck(embedding, _scorer(other), allow_mismatch=False)


def test_stored_recipe_missing_fields_is_an_error_naming_them():
    d = dataclasses.asdict(
        EmbeddingRecipe("m", "w", "h", 4, "r", (0, 0, 0), (1, 1, 1), 1, "convnext", 0, 0, "p", "float32")
    )
    del d["pooling"], d["pad_multiple"]
    with pytest.raises(ValueError, match=r"x/manifest.json: the embedding recipe lacks \['pad_multiple', 'pooling'\]"):
        EmbeddingRecipe.from_dict(d, "x/manifest.json")
