"""Every shipped (model config, database config) pair makes database rows equal to the model's
retrieval keys.

Pairs are discovered from the files: a database config serves the model config it names
(``DATABASE_BUILD.MODEL_CONFIG``) and every model config whose ``MODEL.RETCLIP.DATABASE`` or
``FALLBACK_DATABASE`` is that database's folder name. For each pair the embedding settings are
compared at the config level (fast); the tiny pairs, and under ``slow`` one real-size conv and one
real-size ViT pair (random weights, real resize and mean/std), are run end to end: the builder
writes a database from ground-truth masks of a synthetic image, the model computes its keys for
the same image (through detectron2's test mapper) and masks, and the cosines must be >= 0.99999.
"""

import functools
import logging
from pathlib import Path
from typing import List, Tuple

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from detectron2.data import DatasetMapper
from detectron2.modeling import build_model

from retclip.database_builder import build_database_builder, build_source, setup_build_config
from retclip.database_builder.factory import read_database_config
from retclip.proposals import GroundTruthProposals
from retclip.retrieval import FeatureDatabase
from retclip.utils.cli import UserError
from retclip.config_file import load_config

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIRS = ("retclip", "training_free", "tests")
MIN_COSINE = 0.99999

#: The config keys a segment embedding depends on, per family (an independent list: the test
#: does not ask the code under test which keys matter).
CONV_KEYS = (
    "MODEL.FC_CLIP.CLIP_MODEL_NAME", "MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS", "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST", "MODEL.MASK_FORMER.SIZE_DIVISIBILITY", "MODEL.PIXEL_MEAN",
    "MODEL.PIXEL_STD",
)
VIT_KEYS = (
    "MODEL.TRAINING_FREE.CLIP_MODEL_NAME", "MODEL.TRAINING_FREE.CLIP_PRETRAINED_WEIGHTS",
    "MODEL.TRAINING_FREE.DENSE_MODE", "MODEL.TRAINING_FREE.CLIP_SHORT_SIDE",
    "MODEL.TRAINING_FREE.SLIDE_WINDOW", "MODEL.TRAINING_FREE.SLIDE_STRIDE", "MODEL.PIXEL_MEAN",
    "MODEL.PIXEL_STD",
)


def _configs(folder: str) -> List[Path]:
    return sorted(p for p in (ROOT / "configs" / folder).glob("*.yaml") if not p.name.startswith("Base-"))


@functools.lru_cache(maxsize=None)
def model_cfg(path: str, *opts: str):
    return load_config(path, opts)


def _databases_named(cfg) -> set:
    rc = cfg.MODEL.RETCLIP
    return {Path(p).name for p in (rc.DATABASE, rc.FALLBACK_DATABASE) if p}


def discover_pairs() -> List[Tuple[Path, Path]]:
    pairs = []
    models = [m for d in MODEL_DIRS for m in _configs(d)]
    for db in _configs("database"):
        data, served = read_database_config(str(db))
        pairs.append((Path(served), db))
        name = Path(data["DATABASE_BUILD"].get("OUTPUT_DIR", "")).name
        pairs += [(m, db) for m in models if name and name in _databases_named(model_cfg(str(m)))]
    return sorted(set(pairs))


PAIRS = discover_pairs()


def _family(cfg) -> str:
    return "vit" if cfg.MODEL.META_ARCHITECTURE == "TrainingFreeRetCLIP" else "conv"


def _settings(cfg) -> dict:
    keys = VIT_KEYS if _family(cfg) == "vit" else CONV_KEYS
    return {k: functools.reduce(getattr, k.split("."), cfg) for k in keys}


def _pair_id(pair) -> str:
    return f"{pair[0].parent.name}/{pair[0].stem}+{pair[1].stem}"


def test_pairs_cover_every_database_and_every_model_that_searches_one():
    databases = {db for _, db in PAIRS}
    assert databases == set(_configs("database"))
    for m in (m for d in MODEL_DIRS for m in _configs(d)):
        if _databases_named(model_cfg(str(m))):
            assert any(pm == m for pm, _ in PAIRS), f"{m} names a database no config builds"


@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_pair_has_one_embedding_recipe(pair):
    model_config, db_config = pair
    built = setup_build_config(str(db_config))
    served = model_cfg(str(model_config))
    assert _family(built) == _family(served)
    assert _settings(built) == _settings(served)


def test_database_config_setting_a_model_key_is_refused(tmp_path):
    path = tmp_path / "db.yaml"
    path.write_text(
        f"_BASE_: {ROOT / 'configs/database/tiny_test.yaml'}\nINPUT:\n  MIN_SIZE_TEST: 192\n"
    )
    with pytest.raises(UserError, match=r"db.yaml sets \['INPUT'\].*DATABASE_BUILD.MODEL_CONFIG"):
        setup_build_config(str(path))


def test_model_config_resolves_relative_to_the_file_that_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the CWD must not matter
    cfg = setup_build_config(str(ROOT / "configs/database/tiny_test.yaml"))
    assert cfg.DATABASE_BUILD.MODEL_CONFIG == str(ROOT / "configs/tests/tiny_retclip_convnext.yaml")
    assert cfg.INPUT.MIN_SIZE_TEST == model_cfg(cfg.DATABASE_BUILD.MODEL_CONFIG).INPUT.MIN_SIZE_TEST


# ------------------------------------------------------------------------ end to end
def _padded_logits(masks: torch.Tensor, resized, padded) -> torch.Tensor:
    """Reference mask logits in the model's padded frame, written out here: +-1, bilinear to the
    resized image, -1 padding."""
    x = F.interpolate(masks.float()[None] * 2 - 1, size=tuple(resized), mode="bilinear",
                      align_corners=False)
    return F.pad(x, (0, padded[1] - resized[1], 0, padded[0] - resized[0]), value=-1.0)


def _model_keys(model, cfg, record: dict, masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The model's retrieval keys of ``masks`` on the image of ``record`` (unit norm), and the
    valid flags, through detectron2's test mapper (what tools/train_net.py --eval-only uses)."""
    x = DatasetMapper(cfg, is_train=False)(dict(record))
    with torch.no_grad():
        if _family(cfg) == "vit":
            keys = model.segment_embeddings(x["image"].float(), masks)
            return F.normalize(keys, dim=-1), masks.flatten(1).any(1)
        images = model._preprocess([x])
        dense = model.backbone(images.tensor)["clip_vis_dense"]
        logits = _padded_logits(masks, images.image_sizes[0], images.tensor.shape[-2:])
        keys, valid = model._clip_embeddings(dense, logits)
    return F.normalize(keys[0].float(), dim=-1), valid[0]


def _model_opts(cfg, weights: str) -> List[str]:
    """Model-side overrides that do not touch the embedding: no database, ground-truth proposals
    (offline), CPU, and the same CLIP weights as the build."""
    if _family(cfg) == "vit":
        return ["MODEL.TRAINING_FREE.CLIP_PRETRAINED_WEIGHTS", weights, "MODEL.TRAINING_FREE.MODE",
                "clip", "MODEL.TRAINING_FREE.PROPOSALS", "ground_truth", "MODEL.RETCLIP.DATABASE", "",
                "MODEL.RETCLIP.FALLBACK_DATABASE", "", "MODEL.DEVICE", "cpu"]
    return ["MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS", weights, "MODEL.RETCLIP.DATABASE", "",
            "MODEL.RETCLIP.FALLBACK_DATABASE", "", "MODEL.DEVICE", "cpu",
            "DATASETS.TEST", "('retclip_synthetic_test',)"]


def run_pair(model_config: Path, db_config: Path, weights: str, tmp_path) -> np.ndarray:
    """Build a one-image database with ``db_config`` and compare its rows with the keys of the
    model of ``model_config``; returns the per-row cosines (asserting everything else)."""
    served = model_cfg(str(model_config))
    family_key = "TRAINING_FREE" if _family(served) == "vit" else "FC_CLIP"
    build_opts = [f"MODEL.{family_key}.CLIP_PRETRAINED_WEIGHTS", weights,
                  "DATABASE_BUILD.OUTPUT_DIR", str(tmp_path / "db"),
                  "DATABASE_BUILD.PROPOSALS", "ground_truth", "DATABASE_BUILD.SOURCE.TYPE",
                  "dataset", "DATABASE_BUILD.SOURCE.DATASET", "retclip_synthetic_test",
                  "DATABASE_BUILD.SOURCE.MAX_IMAGES", "1", "DATABASE_BUILD.DTYPE", "float32",
                  "MODEL.DEVICE", "cpu"]
    build_cfg = setup_build_config(str(db_config), build_opts)
    torch.manual_seed(0)  # random weights ("" above) are then the same on both sides
    builder = build_database_builder(build_cfg, progress=False)
    source = build_source(build_cfg)
    builder.build(source)
    db = FeatureDatabase.open(tmp_path / "db")
    rows = db.load_all()

    cfg = model_cfg(str(model_config), *_model_opts(served, weights))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert db.recipe == model.segment_embedding.recipe()  # weights hash included
    record = next(iter(source.records()))
    image = np.asarray(Image.open(record.path).convert("RGB"))
    props = GroundTruthProposals()(image, source.dataset_classes, record.dataset_dict)
    keys, valid = _model_keys(model, cfg, record.dataset_dict, props.masks)
    assert len(rows) == int(valid.sum()) > 0
    assert np.array_equal(rows.labels, props.labels[valid].numpy())
    cosines = (torch.from_numpy(rows.features.astype(np.float32)) * keys[valid]).sum(1).numpy()
    logger.info("%s + %s: %d rows, min cosine %.8f", model_config.name, db_config.name,
                len(rows), cosines.min())
    return cosines


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Saved tiny CLIP weights, so the build and the model load the same ones."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    out = {}
    for name in ("retclip-tiny-convnext", "retclip-tiny-vit"):
        torch.manual_seed(0)
        out[name] = str(folder / f"{name}.pt")
        torch.save(open_clip.create_model(name).state_dict(), out[name])
    return out


TINY_PAIRS = [p for p in PAIRS if p[1].stem.startswith("tiny_")]


@pytest.mark.parametrize("pair", TINY_PAIRS, ids=_pair_id)
def test_tiny_pair_rows_equal_model_keys(pair, tiny_weights, tmp_path):
    served = model_cfg(str(pair[0]))
    name = (served.MODEL.TRAINING_FREE.CLIP_MODEL_NAME if _family(served) == "vit"
            else served.MODEL.FC_CLIP.CLIP_MODEL_NAME)
    cosines = run_pair(pair[0], pair[1], tiny_weights[name], tmp_path)
    assert cosines.min() >= MIN_COSINE, cosines


def _first_real(family: str):
    return next(p for p in PAIRS if not p[1].stem.startswith("tiny_")
                and _family(model_cfg(str(p[0]))) == family)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["conv", "vit"])
def test_real_size_pair_rows_equal_model_keys(family, tmp_path):
    """Released-size CLIP (random weights: "" below) with the real resize, mean/std and windows."""
    model_config, db_config = _first_real(family)
    cosines = run_pair(model_config, db_config, "", tmp_path)
    assert cosines.min() >= MIN_COSINE, (model_config.name, db_config.name, cosines)
