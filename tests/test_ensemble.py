"""Ensembles against hand-computed numbers and against FC-CLIP's code re-derived line by line.

The hand example (K = 2, class 0 seen, class 1 unseen):
  in-vocab logits [ln 3, 0, 0]  -> s_iv = [0.75, 0.25], void v = 1 / (3 + 1 + 1) = 0.2
  clip logits     [0, ln 3, 5]  -> s_clip = [0.25, 0.75] (clip void column discarded)
  s_ret = [0.2, 1.0], alpha = 0.4, beta = 0.8.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from retclip.ensemble import arithmetic_ensemble, geometric_ensemble, training_free_scores

IN_VOCAB = torch.tensor([[math.log(3.0), 0.0, 0.0]], dtype=torch.float64)
CLIP = torch.tensor([[0.0, math.log(3.0), 5.0]], dtype=torch.float64)
S_RET = torch.tensor([[0.2, 1.0]], dtype=torch.float64)
SEEN = torch.tensor([True, False])


def _fcclip_reference(mask_cls, out_vocab_logits, overlap, alpha, beta, valid=None):
    """FC-CLIP's inference ensemble, written out as its released code does it."""
    in_vocab_cls_results = mask_cls[..., :-1]
    out_vocab_cls_results = out_vocab_logits[..., :-1]
    out_vocab_cls_probs = out_vocab_cls_results.softmax(-1)
    in_vocab_cls_results = in_vocab_cls_results.softmax(-1)
    category_overlapping_mask = overlap.to(torch.long)
    if valid is not None:
        valid_masking = valid.to(in_vocab_cls_results.dtype).unsqueeze(-1)
        alpha = torch.ones_like(in_vocab_cls_results) * alpha
        beta = torch.ones_like(in_vocab_cls_results) * beta
        alpha = alpha * valid_masking
        beta = beta * valid_masking
    cls_logits_seen = (
        in_vocab_cls_results ** (1 - alpha) * out_vocab_cls_probs**alpha
    ).log() * category_overlapping_mask
    cls_logits_unseen = (in_vocab_cls_results ** (1 - beta) * out_vocab_cls_probs**beta).log() * (
        1 - category_overlapping_mask
    )
    cls_results = cls_logits_seen + cls_logits_unseen
    is_void_prob = F.softmax(mask_cls, dim=-1)[..., -1:]
    return torch.cat([cls_results.softmax(-1) * (1.0 - is_void_prob), is_void_prob], dim=-1)


# ----------------------------------------------------------------------------- arithmetic


def test_arithmetic_hand_numbers():
    # s_oov = 0.5 * [0.2, 1.0] + 0.5 * [0.25, 0.75] = [0.225, 0.875]
    # s = [0.4 * 0.225 + 0.6 * 0.75, 0.8 * 0.875 + 0.2 * 0.25] = [0.54, 0.75]; sum 1.29
    # final = [0.54 / 1.29 * 0.8, 0.75 / 1.29 * 0.8, 0.2]
    out = arithmetic_ensemble(IN_VOCAB, CLIP, S_RET, SEEN, 0.4, 0.8, 0.5)
    expected = torch.tensor([[0.33488372093023255, 0.46511627906976744, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_arithmetic_retrieval_unavailable_class_uses_clip_alone():
    # class 1 has no database: s_oov = [0.225, 0.75]; s = [0.54, 0.65]; sum 1.19
    avail = torch.tensor([True, False])
    out = arithmetic_ensemble(IN_VOCAB, CLIP, S_RET, SEEN, 0.4, 0.8, 0.5, retrieval_available=avail)
    expected = torch.tensor([[0.432 / 1.19, 0.52 / 1.19, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_arithmetic_invalid_query_uses_in_vocab_only():
    out = arithmetic_ensemble(
        IN_VOCAB, CLIP, S_RET, SEEN, 0.4, 0.8, 0.5, valid=torch.tensor([False])
    )
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.2, 0.2]], dtype=torch.float64))


def test_arithmetic_gamma_zero_equal_weights_is_plain_mixture():
    # alpha == beta == 0.5, gamma 0: s = 0.5 * s_clip + 0.5 * s_iv = [0.5, 0.5] (sums to 1 already)
    out = arithmetic_ensemble(IN_VOCAB, CLIP, None, SEEN, 0.5, 0.5, 0.0)
    torch.testing.assert_close(out, torch.tensor([[0.4, 0.4, 0.2]], dtype=torch.float64))


def test_arithmetic_rows_sum_to_one():
    torch.manual_seed(0)
    iv, cl = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    s_ret = torch.rand(2, 5, 7)
    seen = torch.rand(7) > 0.5
    out = arithmetic_ensemble(iv, cl, s_ret, seen, 0.4, 0.7, 0.3)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(out[..., -1], iv.softmax(-1)[..., -1])


# ----------------------------------------------------------------------------- geometric


def test_geometric_hand_numbers():
    # e0 = 0.75^0.6 * 0.25^0.4 = 0.84137 * 0.57435 = 0.48324
    # e1 = 0.25^0.2 * 0.75^0.8 = 0.75786 * 0.79460 = 0.60219
    # final = [e0, e1] / (e0 + e1) * 0.8, then void 0.2
    out = geometric_ensemble(IN_VOCAB, CLIP, SEEN, 0.4, 0.8)
    expected = torch.tensor([[0.35623145492975433, 0.4437685450702457, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_geometric_with_retrieval_hand_numbers():
    # t = [sqrt(0.2 * 0.25), sqrt(1.0 * 0.75)] = [0.22361, 0.86603] -> p_oov = [0.20521, 0.79479]
    # e0 = 0.75^0.6 * 0.20521^0.4, e1 = 0.25^0.2 * 0.79479^0.8; final = e / sum(e) * 0.8
    out = geometric_ensemble(IN_VOCAB, CLIP, SEEN, 0.4, 0.8, retrieval_scores=S_RET, gamma=0.5)
    expected = torch.tensor([[0.33165927517702415, 0.46834072482297595, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("use_valid", [False, True])
def test_geometric_bit_identical_to_fcclip(use_valid):
    torch.manual_seed(1)
    iv, cl = torch.randn(2, 10, 151) * 3, torch.randn(2, 10, 151) * 3
    seen = torch.rand(150) > 0.5
    valid = (torch.rand(2, 10) > 0.3) if use_valid else None
    ours = geometric_ensemble(iv, cl, seen, 0.4, 0.8, valid=valid)
    ref = _fcclip_reference(iv, cl, seen, 0.4, 0.8, valid=valid)
    assert torch.equal(ours, ref)


def test_geometric_gamma_zero_ignores_retrieval_exactly():
    torch.manual_seed(2)
    iv, cl = torch.randn(4, 21), torch.randn(4, 21)
    seen = torch.arange(20) % 3 == 0
    base = geometric_ensemble(iv, cl, seen, 0.4, 0.8)
    with_ret = geometric_ensemble(
        iv, cl, seen, 0.4, 0.8, retrieval_scores=torch.rand(4, 20), gamma=0.0
    )
    assert torch.equal(base, with_ret)
    assert torch.equal(base, _fcclip_reference(iv, cl, seen, 0.4, 0.8))


def test_geometric_invalid_query_hides_nan_clip():
    iv = torch.randn(3, 6)
    cl = torch.randn(3, 6)
    cl[1] = float("nan")  # an empty mask pooled by attention gives NaN CLIP logits
    valid = torch.tensor([True, False, True])
    out = geometric_ensemble(iv, cl, torch.ones(5, dtype=torch.bool), 0.4, 0.8, valid=valid)
    assert not torch.isnan(out).any()
    # The invalid query gets the in-vocabulary distribution alone.
    expected_row = torch.cat([iv[1, :-1].softmax(-1) * (1 - iv[1].softmax(-1)[-1]),
                              iv[1].softmax(-1)[-1:]])
    torch.testing.assert_close(out[1], expected_row)


def test_geometric_zero_retrieval_scores_stay_finite():
    iv, cl = torch.randn(2, 4), torch.randn(2, 4)
    out = geometric_ensemble(
        iv, cl, torch.ones(3, dtype=torch.bool), 0.4, 0.8,
        retrieval_scores=torch.zeros(2, 3), gamma=0.3,
    )
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(2))


# ----------------------------------------------------------------------------- training-free


def test_training_free_modes():
    clip_probs = torch.tensor([[0.25, 0.75]])
    s_ret = torch.tensor([[0.2, 1.0]])
    avail = torch.tensor([True, False])
    clip_only = training_free_scores(clip_probs, s_ret, "clip", 0.5, clip_is_logits=False)
    torch.testing.assert_close(clip_only, clip_probs)
    ret = training_free_scores(clip_probs, s_ret, "retrieval", 0.5, avail, clip_is_logits=False)
    # class 1 has no database: it falls back to its CLIP score
    torch.testing.assert_close(ret, torch.tensor([[0.2, 0.75]]))
    # class 0: 0.5 * 0.2 + 0.5 * 0.25 = 0.225; class 1 has no retrieval: 0.75
    both = training_free_scores(clip_probs, s_ret, "retclip", 0.5, avail, clip_is_logits=False)
    torch.testing.assert_close(both, torch.tensor([[0.225, 0.75]]))
    from_logits = training_free_scores(torch.log(clip_probs), s_ret, "retclip", 0.5, avail)
    torch.testing.assert_close(from_logits, both)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        geometric_ensemble(torch.zeros(2, 4), torch.zeros(2, 5), torch.ones(3, dtype=torch.bool),
                           0.4, 0.8)
    with pytest.raises(ValueError, match="seen must have shape"):
        arithmetic_ensemble(torch.zeros(2, 4), torch.zeros(2, 4), None,
                            torch.ones(4, dtype=torch.bool), 0.4, 0.8, 0.0)
    with pytest.raises(ValueError, match="gamma"):
        arithmetic_ensemble(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3),
                            torch.ones(3, dtype=torch.bool), 0.4, 0.8, 1.5)
    with pytest.raises(ValueError, match="needs retrieval_scores"):
        geometric_ensemble(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(3, dtype=torch.bool),
                           0.4, 0.8, gamma=0.3)
    with pytest.raises(ValueError, match="valid: "):
        training_free_scores(torch.zeros(2, 3), None, "knn", 0.3)
