"""A model refuses a database embedded another way than its keys, naming each differing field
with both values; MODEL.RETCLIP.ALLOW_RECIPE_MISMATCH turns the refusal into a warning.

End to end through the builder and the tiny RetCLIP model (slow on shared cores: four builds and
a dozen model builds); test_recipe_check.py covers the same rules in seconds."""

import logging
import re
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from detectron2.modeling import build_model

from retclip.database_builder import run_build
from retclip.retrieval import EncoderFingerprint, FeatureDatabase
from retclip.config_file import load_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BUILD_CONFIG = str(ROOT / "configs/database/tiny_test.yaml")
MODEL_CONFIG = str(ROOT / "configs/tests/tiny_retclip_convnext.yaml")


def _weights(folder: Path, seed: int) -> str:
    torch.manual_seed(seed)
    path = folder / f"tiny_convnext_{seed}.pt"
    torch.save(open_clip.create_model("retclip-tiny-convnext").state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
    """One-image databases: the model's own recipe, and one per changed setting."""
    root = tmp_path_factory.mktemp("recipes")
    weights, other_weights = _weights(root, 0), _weights(root, 1)
    variants = {
        "same": [],
        "resolution": ["INPUT.MIN_SIZE_TEST", "128"],
        "mean_std": ["MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]",
                     "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]"],
        "weights": ["MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS", other_weights],
    }
    out = {}
    for name, opts in variants.items():
        out[name] = str(root / name)
        run_build(BUILD_CONFIG, ["MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS", weights,
                                 "DATABASE_BUILD.OUTPUT_DIR", out[name],
                                 "DATABASE_BUILD.SOURCE.DATASET", "retclip_synthetic_test",
                                 "DATABASE_BUILD.SOURCE.MAX_IMAGES", "1", *opts], progress=False)
    return weights, out


def _model(weights: str, database: str, allow: bool = False):
    cfg = load_config(MODEL_CONFIG, ["MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS", weights, "MODEL.DEVICE", "cpu",
                                     "MODEL.RETCLIP.DATABASE", database,
                                     "MODEL.RETCLIP.ALLOW_RECIPE_MISMATCH", str(allow),
                                     "DATASETS.TRAIN", "('retclip_synthetic_train',)",
                                     "DATASETS.TEST", "('retclip_synthetic_test',)"], freeze=False)
    return build_model(cfg).eval()


def _forward(model):
    with torch.no_grad():
        return model([{"image": torch.zeros(3, 64, 96, dtype=torch.uint8)}])


def test_database_with_the_models_recipe_is_accepted(databases):
    weights, dbs = databases
    model = _model(weights, dbs["same"])
    assert FeatureDatabase.open(dbs["same"]).recipe == model.segment_embedding.recipe()
    assert "sem_seg" in _forward(model)[0]


@pytest.mark.parametrize(
    "variant, fields",
    [
        ("resolution", [r"resize: database 'shortest_edge\(128, max=160\)', model 'shortest_edge\(96, max=160\)'"]),
        ("mean_std", [r"pixel_mean: database \(123.675, 116.28, 103.53\)", "pixel_std: database"]),
    ],
)
def test_other_preprocessing_is_refused_at_construction_naming_fields(databases, variant, fields):
    weights, dbs = databases
    with pytest.raises(ValueError) as err:
        _model(weights, dbs[variant])
    message = str(err.value)
    for pattern in fields:
        assert re.search(pattern, message), message
    assert "weights_sha256" not in message  # the weights are the same
    assert "ALLOW_RECIPE_MISMATCH" in message


def test_other_weights_are_refused_before_the_first_search(databases):
    weights, dbs = databases
    model = _model(weights, dbs["weights"])  # the weights hash is checked once weights are final
    with pytest.raises(ValueError, match=r"weights_sha256: database '[0-9a-f]{64}', model '[0-9a-f]{64}'"):
        _forward(model)


def test_loading_other_weights_is_checked_again(databases, tmp_path):
    weights, dbs = databases
    model = _model(weights, dbs["same"])
    _forward(model)
    key = "backbone.clip_model.visual.head.mlp.fc2.weight"
    other = dict(model.state_dict())
    assert key in other
    other[key] = other[key] + 1.0
    model.load_state_dict(other)
    with pytest.raises(ValueError, match="weights_sha256"):
        _forward(model)


@pytest.mark.parametrize("variant", ["resolution", "mean_std", "weights"])
def test_allow_mismatch_turns_the_refusal_into_a_warning(databases, variant, caplog):
    weights, dbs = databases
    with caplog.at_level(logging.WARNING):
        model = _model(weights, dbs[variant], allow=True)
        assert "sem_seg" in _forward(model)[0]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "another recipe" in warned and "ALLOW_RECIPE_MISMATCH" in warned
    field = {"resolution": "resize", "mean_std": "pixel_mean", "weights": "weights_sha256"}[variant]
    assert f"{field}: database" in warned


def test_manifest_without_recipe_warns_naming_what_is_missing(databases, tmp_path, caplog):
    weights, dbs = databases
    old = FeatureDatabase.create(
        tmp_path / "old", EncoderFingerprint.from_open_clip("retclip-tiny-convnext", weights, 32),
        FeatureDatabase.open(dbs["same"]).vocabulary, dtype="float32",
    )
    old.append(np.eye(32, dtype=np.float32)[:2], np.array([0, 1]), ["a", "b"])
    with caplog.at_level(logging.WARNING):
        _forward(_model(weights, str(tmp_path / "old")))
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "records no embedding recipe" in warned
    for what in ("resize", "mean/std", "padding", "pooling", "weights hash"):
        assert what in warned
