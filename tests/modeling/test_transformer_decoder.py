"""MultiScaleMaskedTransformerDecoder and FCCLIPHead: full-size checkpoint keys, output contract,
prediction head against a hand computation, attention masks, batch independence, gradients."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from fcclip_testutils import feature_shapes, released_rows

from retclip.config import add_retclip_config
from retclip.modeling.transformer_decoder import TRANSFORMER_DECODER_REGISTRY


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is as fast and avoids OpenMP spin contention when the
    machine's cores are shared by parallel test runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(hidden=256, queries=250, embed_dim=768, dec_layers=10, enc_layers=6, ffn=2048):
    cfg = get_cfg()
    add_retclip_config(cfg)
    head = cfg.MODEL.SEM_SEG_HEAD
    head.NAME = "FCCLIPHead"
    head.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    head.NUM_CLASSES = 133
    head.CONVS_DIM = hidden
    head.MASK_DIM = hidden
    head.NORM = "GN"
    head.COMMON_STRIDE = 4
    head.TRANSFORMER_ENC_LAYERS = enc_layers
    mf = cfg.MODEL.MASK_FORMER
    mf.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    mf.DEC_LAYERS = dec_layers
    mf.NUM_OBJECT_QUERIES = queries
    mf.HIDDEN_DIM = hidden
    mf.DIM_FEEDFORWARD = ffn
    mf.DROPOUT = 0.0
    cfg.MODEL.FC_CLIP.EMBED_DIM = embed_dim
    return cfg


@pytest.mark.parametrize(
    "name, channels, embed_dim",
    [
        ("convnext_large_d_320", [192, 384, 768, 1536], 768),
        ("rn50x64", [512, 1024, 2048, 4096], 1024),
    ],
)
def test_full_size_head_keys_match_released_checkpoint(name, channels, embed_dim):
    head = SEM_SEG_HEADS_REGISTRY.get("FCCLIPHead")(_cfg(embed_dim=embed_dim), feature_shapes(channels))
    got = [
        (k, str(tuple(v.shape)), str(v.dtype).replace("torch.", ""))
        for k, v in head.state_dict().items()
    ]
    want = released_rows(f"fcclip_{name}_decoders.state_dict.tsv", "sem_seg_head.")
    assert sum(k.startswith("predictor.") for k, _, _ in want) == 184
    assert got == want
    assert head.predictor.num_layers == 9


TINY = dict(hidden=32, queries=6, embed_dim=16, dec_layers=10, enc_layers=1, ffn=64)
NUM_TEMPLATES = [2, 1, 3]


def _tiny_head(seed=0):
    torch.manual_seed(seed)
    return SEM_SEG_HEADS_REGISTRY.get("FCCLIPHead")(_cfg(**TINY), feature_shapes([8, 16, 24, 32]))


def _features(batch, height=64, width=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        f"res{i + 2}": torch.randn(batch, c, height // (4 * 2**i), width // (4 * 2**i), generator=g)
        for i, c in enumerate([8, 16, 24, 32])
    }


def _text(seed=2):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(sum(NUM_TEMPLATES) + 1, 16, generator=g), dim=-1)


def test_output_contract():
    head = _tiny_head().eval()
    with torch.no_grad():
        out = head(_features(2), _text(), NUM_TEMPLATES)
    assert out["pred_logits"].shape == (2, 6, len(NUM_TEMPLATES) + 1)
    assert out["pred_masks"].shape == (2, 6, 16, 16)
    assert len(out["aux_outputs"]) == 9  # DEC_LAYERS 10 - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == out["pred_logits"].shape
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    assert not torch.allclose(out["aux_outputs"][-1]["pred_masks"], out["pred_masks"])
    with pytest.raises(ValueError, match="text_classifier"):
        head.predictor(
            head.pixel_decoder.forward_features(_features(1))[2], torch.zeros(1, 32, 16, 16), None
        )


def test_prediction_head_matches_hand_computation():
    """Final logits/masks recomputed from the normalised queries with NumPy pooling and
    synonym max (independent of MaskPooling / get_classification_logits)."""
    head = _tiny_head().eval()
    pred = head.predictor
    captured = []
    hook = pred.decoder_norm.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    feats = _features(1)
    with torch.no_grad():
        mask_features = head.pixel_decoder.forward_features(feats)[0]
        out = head(feats, _text(), NUM_TEMPLATES)
    hook.remove()
    assert len(captured) == 10
    with torch.no_grad():
        q = captured[-1].transpose(0, 1)  # B x Q x C
        masks = torch.einsum("bqc,bchw->bqhw", pred.mask_embed(q), mask_features)
        torch.testing.assert_close(out["pred_masks"], masks)
        mf, m = mask_features[0].numpy(), masks[0].numpy() > 0
        pooled = np.stack([mf[:, m[i]].sum(-1) / (m[i].sum() + 1e-8) for i in range(m.shape[0])])
        emb = pred.class_embed(
            pred._mask_pooling_proj(torch.from_numpy(pooled).float()) + q[0]
        ).numpy()
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    sims = min(math.exp(float(pred.logit_scale.detach())), 100) * emb @ _text().numpy().T
    starts = np.cumsum([0] + NUM_TEMPLATES)
    want = np.stack(
        [sims[:, s:e].max(-1) for s, e in zip(starts[:-1], starts[1:])] + [sims[:, -1]], -1
    )
    np.testing.assert_allclose(out["pred_logits"][0].numpy(), want, rtol=1e-4, atol=1e-4)


def test_attention_mask_blocks_pixels_outside_previous_mask():
    pred = _tiny_head().predictor
    g = torch.Generator().manual_seed(3)
    output = torch.randn(6, 2, 32, generator=g)
    mask_features = torch.randn(2, 32, 8, 8, generator=g)
    _, masks, attn = pred.forward_prediction_heads(
        output, mask_features, (4, 4), _text(), NUM_TEMPLATES
    )
    assert attn.shape == (2 * pred.num_heads, 6, 16) and attn.dtype == torch.bool
    # 2x bilinear downsampling with align_corners=False averages each 2x2 block
    for b in range(2):
        block_mean = masks[b].view(6, 4, 2, 4, 2).mean(dim=(2, 4)).sigmoid().flatten(1)
        for h in range(pred.num_heads):
            assert torch.equal(attn[b * pred.num_heads + h], block_mean < 0.5)


def test_batch_elements_are_independent():
    head = _tiny_head().eval()
    feats = _features(2, height=64, width=96)
    with torch.no_grad():
        both = head(feats, _text(), NUM_TEMPLATES)
        second = head({k: v[1:] for k, v in feats.items()}, _text(), NUM_TEMPLATES)
    torch.testing.assert_close(both["pred_masks"][1:], second["pred_masks"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both["pred_logits"][1:], second["pred_logits"], rtol=1e-4, atol=1e-4)


def test_every_predictor_parameter_gets_a_gradient():
    head = _tiny_head()
    out = head(_features(1), _text(), NUM_TEMPLATES)
    loss = out["pred_logits"].square().mean() + out["pred_masks"].sigmoid().mean()
    loss = loss + sum(
        a["pred_logits"].square().mean() + a["pred_masks"].sigmoid().mean()
        for a in out["aux_outputs"]
    )
    loss.backward()
    missing = [
        n
        for n, p in head.predictor.named_parameters()
        if p.grad is None or not torch.any(p.grad != 0)
    ]
    assert missing == []


def test_registry_and_config_errors():
    assert "MultiScaleMaskedTransformerDecoder" in TRANSFORMER_DECODER_REGISTRY
    assert "call" in TRANSFORMER_DECODER_REGISTRY.__doc__
    cfg = _cfg(**TINY)
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    with pytest.raises(ValueError, match="multi_scale_pixel_decoder"):
        SEM_SEG_HEADS_REGISTRY.get("FCCLIPHead")(cfg, feature_shapes([8, 16, 24, 32]))
    cfg = _cfg(**TINY)
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 0
    with pytest.raises(ValueError, match="DEC_LAYERS"):
        SEM_SEG_HEADS_REGISTRY.get("FCCLIPHead")(cfg, feature_shapes([8, 16, 24, 32]))
