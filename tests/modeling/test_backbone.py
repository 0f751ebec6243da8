"""The frozen CLIP backbone: features, channels from modules, freezing, text tower, CLIP heads."""

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from retclip.modeling.backbone.clip import CLIP


@pytest.fixture(scope="module")
def convnext():
    torch.manual_seed(0)
    return CLIP(model_name="retclip-tiny-convnext", pretrained="")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return CLIP(model_name="retclip-tiny-resnet", pretrained="")


@pytest.mark.parametrize("kind", ["convnext", "resnet"])
def test_features_match_declared_shapes(kind, request):
    backbone = request.getfixturevalue(kind)
    feats = backbone(torch.randn(2, 3, 64, 96))
    shapes = backbone.output_shape()
    assert set(feats) == {"stem", "res2", "res3", "res4", "res5", "clip_vis_dense"}
    for name, f in feats.items():
        assert f.shape[1] == shapes[name].channels, name
        if name != "stem":
            assert f.shape[-2:] == (64 // shapes[name].stride, 96 // shapes[name].stride), name
    assert torch.equal(feats["clip_vis_dense"], feats["res5"])


def test_channels_come_from_modules(convnext, resnet):
    # convnext_atto dims 40/80/160/320; ModifiedResNet width 16 -> bottleneck outputs 64..512.
    assert [convnext.output_shape()[f"res{i}"].channels for i in range(2, 6)] == [40, 80, 160, 320]
    assert [resnet.output_shape()[f"res{i}"].channels for i in range(2, 6)] == [64, 128, 256, 512]
    assert convnext.dim_latent == resnet.dim_latent == 32


def test_frozen_and_always_eval(resnet):
    assert not any(p.requires_grad for p in resnet.parameters())
    resnet.train()
    assert not resnet.training and not any(m.training for m in resnet.modules())
    bn = resnet.clip_model.visual.bn1
    before = bn.running_mean.clone()
    resnet(torch.randn(1, 3, 64, 64) * 5 + 3)
    assert torch.equal(bn.running_mean, before)


def test_missing_weights_file_is_named(tmp_path):
    path = str(tmp_path / "nope" / "clip.pt")
    with pytest.raises(FileNotFoundError, match="clip.pt"):
        CLIP(model_name="retclip-tiny-convnext", pretrained=path)


def test_unknown_model_name_is_named():
    with pytest.raises(ValueError, match="not-a-clip"):
        CLIP(model_name="not-a-clip", pretrained="")


def test_local_weights_file_loads(tmp_path, convnext):
    path = tmp_path / "tiny_clip.pt"
    torch.save(convnext.clip_model.state_dict(), path)
    torch.manual_seed(123)
    loaded = CLIP(model_name="retclip-tiny-convnext", pretrained=str(path))
    for (k, a), b in zip(
        convnext.clip_model.state_dict().items(), loaded.clip_model.state_dict().values()
    ):
        assert torch.equal(a, b), k


def test_batch_of_77_prompts_equals_one_by_one(convnext):
    prompts = [f"a photo of a thing number {i}." for i in range(77)]
    batch = convnext.encode_prompts(prompts)
    single = torch.cat([convnext.encode_prompts([p]) for p in prompts])
    assert batch.shape == (77, 32)
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-5)


def test_convnext_head_of_full_mask_equals_encode_image(convnext):
    """Pooling the dense map over the whole image then the CLIP head is CLIP's own image embedding."""
    x = torch.randn(1, 3, 64, 64)
    dense = convnext(x)["clip_vis_dense"]
    pooled = dense.mean(dim=(2, 3))[:, None, :]
    with torch.no_grad():
        ours = convnext.convnext_head(pooled)[:, 0]
        ref = convnext.clip_model.encode_image(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def _attention_pool_by_hand(pool, dense, mask):
    """Explicit per-head attention of the mean query over the masked pixels (no resize: h*w = pos)."""
    c, h, w = dense.shape
    pos = pool.positional_embedding
    pixels = dense.reshape(c, h * w).T + pos[1:]
    query = dense.reshape(c, h * w).mean(1) + pos[0]
    qv = F.linear(query, pool.q_proj.weight, pool.q_proj.bias)
    kv = F.linear(pixels, pool.k_proj.weight, pool.k_proj.bias)
    vv = F.linear(pixels, pool.v_proj.weight, pool.v_proj.bias)
    heads, d = pool.num_heads, c // pool.num_heads
    keep = [i for i in range(h * w) if mask.flatten()[i] > 0]
    out = torch.zeros(c)
    for head in range(heads):
        sl = slice(head * d, (head + 1) * d)
        scores = torch.tensor([float(qv[sl] @ kv[i, sl]) / math.sqrt(d) for i in keep])
        weights = scores.softmax(0)
        out[sl] = sum(wt * vv[i, sl] for wt, i in zip(weights, keep))
    return F.linear(out, pool.c_proj.weight, pool.c_proj.bias)


def test_masked_attention_pool_matches_hand_computation(resnet):
    dense = resnet(torch.randn(1, 3, 64, 64))["clip_vis_dense"]  # 2x2 = native pos size
    masks = torch.tensor([[[1.0, -1.0], [2.0, 0.5]], [[-1.0, -1.0], [-1.0, 3.0]]])[None]
    with torch.no_grad():
        ours = resnet.masked_attention_pool(dense, masks)
        for q in range(2):
            ref = _attention_pool_by_hand(resnet.clip_model.visual.attnpool, dense[0], masks[0, q])
            torch.testing.assert_close(ours[0, q], ref, rtol=1e-4, atol=1e-5)


def test_masked_attention_pool_empty_mask_is_finite(resnet):
    dense = resnet(torch.randn(2, 3, 96, 64))["clip_vis_dense"]  # 3x2: position embeddings resized
    masks = -torch.ones(2, 3, 3, 2)
    masks[0, 1, 0, 0] = 1.0
    with torch.no_grad():
        out = resnet.masked_attention_pool(dense, masks)
    assert out.shape == (2, 3, 32)
    assert torch.isfinite(out).all()


def test_random_weights_touch_no_network(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access during a random-weight build")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    backbone = CLIP(model_name="retclip-tiny-resnet", pretrained="")
    assert backbone.kind == "resnet"
