"""Registers the tiny open_clip architectures shipped in ``retclip/testing/model_configs``.

Tests (``tests/conftest.py``) and testing helpers import this module; other users never see these
names in ``open_clip.list_models()``, except that a config naming one of them (the tiny configs
under ``configs/tests``) registers it on demand through :func:`register_if_testing_model`.

They mirror the real backbones' module layout (a timm ConvNeXt trunk with an MLP head, an OpenAI
ModifiedResNet with attention pooling, a ViT) at a few thousand parameters, with open_clip's real
BPE tokenizer, so every code path of the real models runs in tests in well under a second.
"""
from importlib import resources
from typing import List

import open_clip

#: Architectures registered with open_clip by importing this module.
TINY_CLIP_MODELS: List[str] = ["retclip-tiny-convnext", "retclip-tiny-resnet", "retclip-tiny-vit"]


def register_tiny_clip_models() -> None:
    """Add the tiny architectures to open_clip's registry (idempotent)."""
    known = set(open_clip.list_models())
    folder = resources.files("retclip.testing") / "model_configs"
    for name in TINY_CLIP_MODELS:
        if name not in known:
            with resources.as_file(folder / f"{name}.json") as path:
                open_clip.add_model_config(path)


def register_if_testing_model(name: str) -> bool:
    """Register the tiny architectures if ``name`` is one of them; says whether it was."""
    if name not in TINY_CLIP_MODELS:
        return False
    register_tiny_clip_models()
    return True


register_tiny_clip_models()
