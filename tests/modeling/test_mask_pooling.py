"""MaskPooling and the synonym-max classifier against explicit loop/NumPy references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retclip.modeling.mask_pooling import MaskPooling, get_classification_logits


def test_mask_pooling_matches_loop_average():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=g)
    mask = torch.randn(2, 4, 4, 5, generator=g)
    mask[1, 2] = -1.0  # empty mask pools to zeros
    out = MaskPooling()(x, mask)
    assert out.shape == (2, 4, 3)
    for b in range(2):
        for q in range(4):
            inside = [(i, j) for i in range(4) for j in range(5) if mask[b, q, i, j] > 0]
            for c in range(3):
                want = sum(float(x[b, c, i, j]) for i, j in inside) / (len(inside) + 1e-8)
                assert math.isclose(float(out[b, q, c]), want, rel_tol=1e-5, abs_tol=1e-6)
    assert torch.all(out[1, 2] == 0)


def test_mask_pooling_resizes_mask_and_detaches_it():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 8, 8, generator=g, requires_grad=True)
    mask = torch.randn(1, 3, 4, 4, generator=g, requires_grad=True)
    out = MaskPooling()(x, mask)
    resized = F.interpolate(mask.detach(), size=(8, 8), mode="bilinear", align_corners=False) > 0
    want = torch.stack([x.detach()[0][:, resized[0, q]].mean(-1) for q in range(3)])
    torch.testing.assert_close(out[0], want, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert mask.grad is None
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0


def test_mask_pooling_rejects_bad_shapes():
    with pytest.raises(ValueError, match="MaskPooling"):
        MaskPooling()(torch.zeros(2, 3, 4, 4), torch.zeros(1, 2, 4, 4))


def _reference_logits(x, text, logit_scale, num_templates):
    x = x.numpy().astype(np.float64)
    text = text.numpy().astype(np.float64)
    scale = min(math.exp(logit_scale), 100.0)
    out = np.zeros(x.shape[:2] + (len(num_templates) + 1,))
    for b in range(x.shape[0]):
        for q in range(x.shape[1]):
            v = x[b, q] / np.linalg.norm(x[b, q])
            row = 0
            for k, n in enumerate(num_templates):
                out[b, q, k] = max(scale * float(v @ text[row + s]) for s in range(n))
                row += n
            out[b, q, -1] = scale * float(v @ text[-1])
    return out


@pytest.mark.parametrize("logit_scale", [math.log(1 / 0.07), math.log(1000.0)])
def test_classification_logits_take_max_over_synonyms(logit_scale):
    g = torch.Generator().manual_seed(2)
    num_templates = [1, 3, 2, 4]
    text = F.normalize(torch.randn(sum(num_templates) + 1, 6, generator=g), dim=-1)
    x = torch.randn(2, 5, 6, generator=g)
    out = get_classification_logits(x, text, torch.tensor(logit_scale), num_templates)
    assert out.shape == (2, 5, 5)
    ref = _reference_logits(x, text, logit_scale, num_templates)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-4)
    if logit_scale > math.log(100):
        assert out.abs().max() <= 100 + 1e-4


def test_classification_logits_validate_inputs():
    text = F.normalize(torch.randn(5, 4), dim=-1)
    with pytest.raises(ValueError, match="rows"):
        get_classification_logits(torch.randn(1, 2, 4), text, torch.tensor(1.0), [2, 3])
    with pytest.raises(ValueError, match="dim"):
        get_classification_logits(torch.randn(1, 2, 3), text, torch.tensor(1.0), [2, 2])
    with pytest.raises(ValueError, match="num_templates"):
        get_classification_logits(torch.randn(1, 2, 4), text, torch.tensor(1.0), [4, 0])
