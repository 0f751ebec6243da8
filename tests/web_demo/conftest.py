"""The tiny example (bundled photos -> database with the tiny models) and its models, once per
session: the demo tests all run on it."""
import pytest
import torch

from retclip.config_file import load_config
from retclip.web_demo.tiny_example import (
    TINY_MAX_SIZE,
    TINY_MIN_SIZE,
    TINY_MODEL_CONFIG,
    model_overrides,
    prepare_tiny_example,
)

#: Classes of the example database, with wall as stuff.
VOCABULARY = "cat, cup, table, person, wall:stuff"


@pytest.fixture(scope="session")
def tiny_example(tmp_path_factory):
    return prepare_tiny_example(str(tmp_path_factory.mktemp("tiny_example")))


def overrides(example, database=True):
    opts = model_overrides(example["clip"]) + ["MODEL.WEIGHTS", example["weights"]]
    if database:
        opts += ["MODEL.RETCLIP.DATABASE", example["database"]]
    return opts


def build_tiny_model(example, meta_architecture="RetCLIP", database=True):
    """The example's tiny model with its checkpoint loaded (FCCLIP: same weights, no retrieval)."""
    from detectron2.modeling import build_model

    from retclip.checkpoint import RetCLIPCheckpointer

    cfg = load_config(
        str(TINY_MODEL_CONFIG),
        overrides(example, database) + ["MODEL.META_ARCHITECTURE", meta_architecture],
        freeze=False,
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    RetCLIPCheckpointer(model).load(example["weights"])
    return model


@pytest.fixture(scope="session")
def tiny_retclip(tiny_example):
    return build_tiny_model(tiny_example)


SIZES = (TINY_MIN_SIZE, TINY_MAX_SIZE)
