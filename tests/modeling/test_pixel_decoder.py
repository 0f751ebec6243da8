"""MSDeformAttnPixelDecoder: checkpoint key layout at full size, shapes, fp32 under autocast,
batch independence, gradient flow, and its building blocks (sine encoding, reference points)."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from fcclip_testutils import feature_shapes, released_rows

from retclip.config import add_retclip_config
from retclip.modeling.common import MLP, PositionEmbeddingSine, get_activation
from retclip.modeling.pixel_decoder.msdeformattn import MSDeformAttnTransformerEncoder


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is as fast and avoids OpenMP spin contention when the
    machine's cores are shared by parallel test runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(conv_dim=256, enc_layers=6):
    cfg = get_cfg()
    add_retclip_config(cfg)
    head = cfg.MODEL.SEM_SEG_HEAD
    head.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    head.CONVS_DIM = conv_dim
    head.MASK_DIM = conv_dim
    head.NORM = "GN"
    head.COMMON_STRIDE = 4
    head.TRANSFORMER_ENC_LAYERS = enc_layers
    head.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    return cfg


@pytest.mark.parametrize(
    "name, channels",
    [("convnext_large_d_320", [192, 384, 768, 1536]), ("rn50x64", [512, 1024, 2048, 4096])],
)
def test_full_size_keys_match_released_checkpoint(name, channels):
    decoder = SEM_SEG_HEADS_REGISTRY.get("MSDeformAttnPixelDecoder")(_cfg(), feature_shapes(channels))
    got = [
        (k, str(tuple(v.shape)), str(v.dtype).replace("torch.", ""))
        for k, v in decoder.state_dict().items()
    ]
    want = released_rows(f"fcclip_{name}_decoders.state_dict.tsv", "sem_seg_head.pixel_decoder.")
    assert len(want) == 117
    assert got == want


def _tiny_decoder(seed=0):
    torch.manual_seed(seed)
    return SEM_SEG_HEADS_REGISTRY.get("MSDeformAttnPixelDecoder")(
        _cfg(conv_dim=32, enc_layers=2), feature_shapes([8, 16, 24, 32])
    )


def _features(batch, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        f"res{i + 2}": torch.randn(batch, c, size // (4 * 2**i), size // (4 * 2**i), generator=g)
        for i, c in enumerate([8, 16, 24, 32])
    }


def test_forward_shapes_and_fp32_under_autocast():
    decoder = _tiny_decoder().eval()
    feats = {k: v.to(torch.bfloat16) for k, v in _features(2, size=64).items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, encoder_features, multi_scale = decoder.forward_features(feats)
    assert mask_features.shape == (2, 32, 16, 16)
    assert encoder_features.shape == (2, 32, 2, 2)
    assert [tuple(m.shape) for m in multi_scale] == [(2, 32, 2, 2), (2, 32, 4, 4), (2, 32, 8, 8)]
    assert mask_features.dtype == torch.float32
    assert all(m.dtype == torch.float32 for m in multi_scale)
    assert torch.equal(encoder_features, multi_scale[0])


def test_batch_elements_are_independent_and_non_square_inputs_work():
    decoder = _tiny_decoder().eval()
    feats = {k: v[..., : v.shape[-1] * 3 // 4] for k, v in _features(2, size=64).items()}  # H != W
    with torch.no_grad():
        both = decoder.forward_features(feats)[0]
        second = decoder.forward_features({k: v[1:] for k, v in feats.items()})[0]
    assert both.shape == (2, 32, 16, 12)
    torch.testing.assert_close(both[1:], second, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0], both[1])


def test_every_parameter_gets_a_gradient():
    decoder = _tiny_decoder()
    # at init the offset/weight projections ignore the query, which blocks level_embed's gradient
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "sampling_offsets.weight" in name or "attention_weights.weight" in name:
                p.normal_(std=0.01)
    mask_features, _, multi_scale = decoder.forward_features(_features(1, size=64))
    loss = mask_features.square().mean() + sum(m.square().mean() for m in multi_scale)
    loss.backward()
    missing = [
        n for n, p in decoder.named_parameters() if p.grad is None or not torch.any(p.grad != 0)
    ]
    assert missing == []


def test_missing_feature_raises_key_error():
    decoder = _tiny_decoder()
    feats = _features(1, size=32)
    del feats["res2"]
    with pytest.raises(KeyError, match="res2"):
        decoder.forward_features(feats)


def test_position_embedding_sine_closed_form():
    num_feats, height, width = 6, 3, 4
    pos = PositionEmbeddingSine(num_feats, temperature=10000, normalize=True)(
        torch.zeros(1, 1, height, width)
    )
    assert pos.shape == (1, 2 * num_feats, height, width)
    i, j = 2, 1
    y = (i + 1) / (height + 1e-6) * 2 * math.pi
    x = (j + 1) / (width + 1e-6) * 2 * math.pi
    for c in range(num_feats):
        freq = 10000 ** (2 * (c // 2) / num_feats)
        trig = math.sin if c % 2 == 0 else math.cos
        assert math.isclose(float(pos[0, c, i, j]), trig(y / freq), abs_tol=1e-5)
        assert math.isclose(float(pos[0, num_feats + c, i, j]), trig(x / freq), abs_tol=1e-5)
    with pytest.raises(ValueError):
        PositionEmbeddingSine(8, normalize=False, scale=1.0)


def test_reference_points_are_normalised_pixel_centres():
    shapes = torch.tensor([[2, 3], [1, 2]])
    pts = MSDeformAttnTransformerEncoder.get_reference_points(
        shapes, torch.ones(1, 2, 2), torch.device("cpu")
    )
    assert pts.shape == (1, 8, 2, 2)
    torch.testing.assert_close(pts[0, 3, 0], torch.tensor([1 / 6, 3 / 4]))  # level 0, row 1, col 0
    torch.testing.assert_close(pts[0, 7, 1], torch.tensor([3 / 4, 1 / 2]))  # level 1, row 0, col 1


def test_mlp_and_activation():
    mlp = MLP(4, 8, 3, 3)
    assert [tuple(layer.weight.shape) for layer in mlp.layers] == [(8, 4), (8, 8), (3, 8)]
    x = torch.randn(5, 4)
    h = torch.relu(mlp.layers[1](torch.relu(mlp.layers[0](x))))
    torch.testing.assert_close(mlp(x), mlp.layers[2](h))
    assert get_activation("relu") is torch.nn.functional.relu
    with pytest.raises(ValueError, match="swish"):
        get_activation("swish")
