"""The tiny open_clip architectures build with random weights, use the real BPE tokenizer and
mirror the module layout of the real backbones that the FC-CLIP code relies on."""
import open_clip
import pytest
import torch

from retclip.testing.clip_configs import TINY_CLIP_MODELS


@pytest.mark.parametrize("name", TINY_CLIP_MODELS)
def test_tiny_model_builds_and_encodes_quickly(name):
    model = open_clip.create_model(name, pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer(name)
    tokens = tokenizer(["a photo of a cat.", "a photo of a sofa."])
    with torch.no_grad():
        text = model.encode_text(tokens)
        image = model.encode_image(torch.randn(1, 3, 64, 64))
    assert text.shape == (2, 32) and image.shape == (1, 32)
    assert torch.isfinite(text).all() and torch.isfinite(image).all()
    # The real tokenizer: 49408 tokens, start/end tokens of OpenAI's BPE.
    assert tokens.shape == (2, 77) and int(tokens[0, 0]) == 49406


def test_layouts_match_the_real_backbones():
    convnext = open_clip.create_model("retclip-tiny-convnext").visual
    assert hasattr(convnext.trunk, "stem") and len(convnext.trunk.stages) == 4
    assert hasattr(convnext.trunk.head, "norm") and hasattr(convnext.head, "mlp")
    resnet = open_clip.create_model("retclip-tiny-resnet").visual
    assert all(hasattr(resnet, f"layer{i}") for i in range(1, 5)) and hasattr(resnet, "attnpool")
    vit = open_clip.create_model("retclip-tiny-vit").visual
    assert vit.patch_size == (16, 16) and len(vit.transformer.resblocks) == 2
