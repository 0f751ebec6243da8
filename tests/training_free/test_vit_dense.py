"""Dense CLIP ViT features: checked against open_clip's own forward and torch's attention."""

import pytest
import torch

from retclip.modeling.vit_dense import (
    DenseCLIPViT,
    clip_input_size,
    mask_pool_dense,
    pool_normalised,
    window_starts,
)

TINY = "retclip-tiny-vit"  # patch 16, pretraining grid 4 x 4, embed 32


@pytest.fixture(scope="module")
def dense_value():
    torch.manual_seed(0)
    return DenseCLIPViT(model_name=TINY, dense_mode="value")


def _tokens_mode(reference: DenseCLIPViT, **kwargs) -> DenseCLIPViT:
    """Same weights as ``reference``, other settings."""
    model = DenseCLIPViT(model_name=TINY, **kwargs)
    model.clip_model.load_state_dict(reference.clip_model.state_dict())
    return model


def test_tokens_mode_equals_open_clip_patch_tokens(dense_value):
    model = _tokens_mode(dense_value, dense_mode="tokens")
    x = torch.randn(2, 3, 64, 64)
    visual = model.clip_model.visual
    visual.output_tokens = True
    try:
        _, tokens = visual(x)  # after ln_post, before proj
    finally:
        visual.output_tokens = False
    expected = (tokens @ visual.proj).transpose(1, 2).reshape(2, -1, 4, 4)
    got = model(x)
    assert got.shape == (2, 32, 4, 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_value_mode_equals_self_only_attention(dense_value):
    x = torch.randn(1, 3, 64, 64)
    visual = dense_value.clip_model.visual
    with torch.no_grad():
        # the second-to-last block's output (class token first), computed by open_clip
        out = visual.forward_intermediates(
            x,
            indices=[len(visual.transformer.resblocks) - 2],
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        pre = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], 1)
        block = visual.transformer.resblocks[-1]
        y = block.ln_1(pre)
        length = y.shape[1]
        only_self = ~torch.eye(length, dtype=torch.bool)  # True = may not attend
        attended = block.attn(y, y, y, attn_mask=only_self, need_weights=False)[0]
        expected = visual.ln_post(block.ls_1(attended))[:, 1:] @ visual.proj
    expected = expected.transpose(1, 2).reshape(1, -1, 4, 4)
    torch.testing.assert_close(dense_value(x), expected, rtol=1e-4, atol=1e-5)


def test_value_and_tokens_differ_and_are_finite(dense_value):
    tokens = _tokens_mode(dense_value, dense_mode="tokens")
    x = torch.randn(1, 3, 48, 80)
    a, b = dense_value(x), tokens(x)
    assert a.shape == b.shape == (1, 32, 3, 5)
    assert torch.isfinite(a).all() and not torch.allclose(a, b)


def test_positional_embedding_interpolation(dense_value):
    pos = dense_value.clip_model.visual.positional_embedding
    assert dense_value.positional_embedding((4, 4)) is pos
    saved = pos.detach().clone()
    with torch.no_grad():
        pos[1:] = torch.arange(pos.shape[1], dtype=pos.dtype)  # same vector at every position
    dense_value._pos_cache.clear()
    try:
        out = dense_value.positional_embedding((3, 7))
        assert out.shape == (1 + 21, pos.shape[1])
        torch.testing.assert_close(out[1:], pos[1:2].expand(21, -1))  # bicubic keeps constants
        torch.testing.assert_close(out[0], pos[0])
    finally:
        with torch.no_grad():
            pos.copy_(saved)
        dense_value._pos_cache.clear()


def test_sliding_windows_stitch_crop_forwards(dense_value):
    x = torch.randn(1, 3, 64, 96)
    # one window covering the image: same as no window
    full = _tokens_mode(dense_value, window=96, stride=32)
    torch.testing.assert_close(full(x), dense_value(x))
    # non-overlapping 32 px windows: each 2x2 block of the grid is that crop's own forward
    tiled = _tokens_mode(dense_value, window=32, stride=32)
    got = tiled(x)
    for y0 in (0, 32):
        for x0 in (0, 32, 64):
            crop = dense_value(x[:, :, y0 : y0 + 32, x0 : x0 + 32])
            torch.testing.assert_close(
                got[:, :, y0 // 16 : y0 // 16 + 2, x0 // 16 : x0 // 16 + 2], crop
            )
    # overlapping windows (48 px, stride 16) on a 64 px wide image: column 1 is seen by two
    overlap = _tokens_mode(dense_value, window=48, stride=16)
    x2 = torch.randn(1, 3, 48, 64)
    left, right = dense_value(x2[..., :48]), dense_value(x2[..., 16:])
    got = overlap(x2)
    torch.testing.assert_close(got[..., 0], left[..., 0])
    torch.testing.assert_close(got[..., 1], (left[..., 1] + right[..., 0]) / 2)
    torch.testing.assert_close(got[..., 3], right[..., 2])


def test_mask_pool_dense_equals_pixel_average():
    torch.manual_seed(1)
    feats = torch.randn(5, 3, 4)
    masks = torch.rand(3, 48, 64) > 0.7
    masks[2] = False
    masks[2, 20, 30] = True  # one pixel: smaller than a patch, still pooled
    pixel_feats = feats.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)  # 5 x 48 x 64
    expected = torch.stack([pixel_feats[:, m].mean(1) for m in masks])
    torch.testing.assert_close(mask_pool_dense(feats, masks), expected, rtol=1e-5, atol=1e-6)
    normed = pool_normalised(feats, masks)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(3))
    empty = mask_pool_dense(feats, torch.zeros(2, 48, 64, dtype=torch.bool))
    assert torch.equal(empty, torch.zeros(2, 5))
    assert mask_pool_dense(feats, torch.zeros(0, 48, 64, dtype=torch.bool)).shape == (0, 5)


def test_text_tower_matches_embedding_dim(dense_value):
    text = dense_value.encode_prompts(["a photo of a cat.", "a photo of a sky."])
    assert text.shape == (2, dense_value.embed_dim)
    assert dense_value.fingerprint.model_name == f"{TINY}+dense-value"
    assert dense_value.fingerprint.weights == "random"


def test_window_helpers():
    assert window_starts(96, 32, 32) == [0, 32, 64]
    assert window_starts(100, 48, 32) == [0, 32, 52]
    assert window_starts(40, 48, 16) == [0]
    assert clip_input_size(96, 128, 0, 16) == (96, 128)
    assert clip_input_size(96, 128, 448, 16) == (448, 592)  # 597.3 rounds to 37 patches
    assert clip_input_size(5, 7, 0, 16) == (16, 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="VisionTransformer"):
        DenseCLIPViT(model_name="retclip-tiny-resnet")
    with pytest.raises(ValueError, match="dense_mode"):
        DenseCLIPViT(model_name=TINY, dense_mode="qq")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DenseCLIPViT(model_name=TINY, window=40, stride=16)
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        DenseCLIPViT(model_name="no-such-vit")
    with pytest.raises(FileNotFoundError, match="CLIP_PRETRAINED_WEIGHTS"):
        DenseCLIPViT(model_name=TINY, pretrained="/nonexistent/vit.pt")
    model = DenseCLIPViT(model_name=TINY)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        model(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match="mask_pool_dense"):
        mask_pool_dense(torch.zeros(2, 3, 3), torch.zeros(3, 3, dtype=torch.bool))
