"""Shared fixtures: tiny random Grounding DINO (+ processor) and tiny SAM, built once per session.
The builders live in retclip/proposals/testing.py so other test folders can reuse them."""

import numpy as np
import pytest

from retclip.proposals.testing import build_tiny_grounding_dino, build_tiny_sam


@pytest.fixture(scope="session")
def tiny_gdino():
    return build_tiny_grounding_dino()


@pytest.fixture(scope="session")
def tiny_gdino_short_prompts():
    """max_text_len 12: a few class names already need several prompt chunks."""
    return build_tiny_grounding_dino(max_text_len=12)


@pytest.fixture(scope="session")
def tiny_sam():
    return build_tiny_sam()


@pytest.fixture()
def noise_image():
    return (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
