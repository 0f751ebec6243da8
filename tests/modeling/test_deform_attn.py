"""Multi-scale deformable attention: the PyTorch path against an explicit per-point bilinear
reference (values and gradients), gradcheck, dispatch rules and the MSDeformAttn module."""

import math

import pytest
import torch

from retclip.modeling.pixel_decoder import MSDeformAttn, multi_scale_deformable_attention
from retclip.modeling.pixel_decoder.deform_attn_function import compiled_extension_available

SHAPES = [(3, 4), (2, 3)]


def _bilinear_zero_pad(img, x, y):
    """img: H x W x D. (x, y) normalised in [0, 1] with align_corners=False semantics, written
    point by point: pixel (i, j) has its centre at ((j + 0.5) / W, (i + 0.5) / H)."""
    height, width, _ = img.shape
    px = x * width - 0.5
    py = y * height - 0.5
    x0 = math.floor(float(px.detach()))
    y0 = math.floor(float(py.detach()))
    out = torch.zeros(img.shape[-1], dtype=img.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < height and 0 <= xx < width:
                wx = 1 - torch.abs(px - xx)
                wy = 1 - torch.abs(py - yy)
                out = out + wx * wy * img[yy, xx]
    return out


def _reference(value, shapes, locations, weights):
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, queries, heads * dim, dtype=value.dtype)
    rows = []
    for b in range(batch):
        for q in range(queries):
            per_head = []
            for m in range(heads):
                acc = torch.zeros(dim, dtype=value.dtype)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl] : starts[lvl] + h * w, m].reshape(h, w, dim)
                    for p in range(points):
                        x, y = locations[b, q, m, lvl, p]
                        acc = acc + weights[b, q, m, lvl, p] * _bilinear_zero_pad(img, x, y)
                per_head.append(acc)
            rows.append(torch.cat(per_head))
    return torch.stack(rows).view_as(out)


def _inputs(dtype=torch.float64, seed=0, batch=2, queries=3, heads=2, dim=3, points=2):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.as_tensor(SHAPES, dtype=torch.long)
    total = int((shapes[:, 0] * shapes[:, 1]).sum())
    start = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    value = torch.randn(batch, total, heads, dim, generator=g, dtype=dtype)
    # include points outside [0, 1] so that zero padding is exercised
    locations = (
        torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g, dtype=dtype) * 1.3
        - 0.15
    )
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g, dtype=dtype)
    return value, shapes, start, locations, weights


def test_pytorch_path_matches_pointwise_bilinear_reference():
    value, shapes, start, locations, weights = _inputs()
    out = multi_scale_deformable_attention(value, shapes, start, locations, weights)
    ref = _reference(value, SHAPES, locations, weights)
    assert out.shape == (2, 3, 2 * 3)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_pytorch_path_gradients_match_reference():
    tensors = _inputs(seed=1)
    value, shapes, start, locations, weights = [
        t.clone().requires_grad_(t.is_floating_point()) for t in tensors
    ]
    grad_out = torch.randn(2, 3, 6, dtype=torch.float64)
    out = multi_scale_deformable_attention(value, shapes, start, locations, weights)
    grads = torch.autograd.grad((out * grad_out).sum(), (value, locations, weights))
    ref = _reference(value, SHAPES, locations, weights)
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), (value, locations, weights))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_gradcheck_float64():
    value, shapes, start, locations, weights = _inputs(seed=2, batch=1, queries=2)
    locations = locations.clamp(0.02, 0.98)

    def fn(v, loc, w):
        return multi_scale_deformable_attention(v, shapes, start, loc, w)

    inputs = tuple(t.clone().requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_dispatch_errors():
    value, shapes, start, locations, weights = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="implementation"):
        multi_scale_deformable_attention(
            value, shapes, start, locations, weights, implementation="triton"
        )
    with pytest.raises(ValueError, match="CUDA"):
        multi_scale_deformable_attention(
            value, shapes, start, locations, weights, implementation="cuda"
        )
    with pytest.raises(ValueError, match="positions"):
        multi_scale_deformable_attention(value[:, :-1], shapes, start, locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        multi_scale_deformable_attention(value, shapes, start, locations, weights[..., :1])


def test_choice_is_logged_once(caplog):
    from retclip.modeling.pixel_decoder import deform_attn_function

    deform_attn_function._logged_choice.clear()
    value, shapes, start, locations, weights = _inputs(dtype=torch.float32)
    with caplog.at_level("INFO", logger=deform_attn_function.__name__):
        for _ in range(3):
            multi_scale_deformable_attention(value, shapes, start, locations, weights)
    messages = [r.getMessage() for r in caplog.records if "deformable attention" in r.getMessage()]
    assert len(messages) == 1 and "pytorch" in messages[0]


def test_msdeformattn_init_is_deformable_detr():
    attn = MSDeformAttn(d_model=32, n_levels=3, n_heads=8, n_points=4)
    bias = attn.sampling_offsets.bias.detach().view(8, 3, 4, 2)
    # head 0 points along +x, head 1 along the diagonal, head 4 along -x; point p at distance p+1
    for p in range(4):
        torch.testing.assert_close(bias[0, 2, p], torch.tensor([p + 1.0, 0.0]))
        torch.testing.assert_close(bias[1, 0, p], torch.tensor([p + 1.0, p + 1.0]))
        torch.testing.assert_close(
            bias[4, 1, p], torch.tensor([-(p + 1.0), 0.0]), atol=1e-6, rtol=0
        )
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.bias) == 0
    assert torch.count_nonzero(attn.value_proj.bias) == 0


def test_msdeformattn_samples_at_reference_point_with_zero_offsets():
    """Zero offsets, uniform weights: each query reads its own pixel centre in every level."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=3).double()
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
        attn.value_proj.weight.copy_(torch.eye(8))
        attn.output_proj.weight.copy_(torch.eye(8))
    h, w = 3, 5
    shapes = torch.tensor([[h, w]])
    start = torch.tensor([0])
    values = torch.randn(1, h * w, 8, dtype=torch.float64)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    ref_pts = torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], -1)
    out = attn(
        torch.randn(1, h * w, 8, dtype=torch.float64), ref_pts[None, :, None], values, shapes, start
    )
    torch.testing.assert_close(out, values)
    # padding mask zeroes the values it covers
    mask = torch.zeros(1, h * w, dtype=torch.bool)
    mask[0, :4] = True
    out = attn(
        torch.randn(1, h * w, 8, dtype=torch.float64),
        ref_pts[None, :, None],
        values,
        shapes,
        start,
        mask,
    )
    assert torch.all(out[0, :4] == 0)
    torch.testing.assert_close(out[0, 4:], values[0, 4:])


@pytest.mark.cuda
def test_compiled_kernel_matches_pytorch_path():
    if not compiled_extension_available():
        pytest.skip("MultiScaleDeformableAttention extension not built")
    value, shapes, start, locations, weights = (
        t.cuda() for t in _inputs(dtype=torch.float32, seed=3)
    )
    tensors = [value, locations, weights]
    for t in tensors:
        t.requires_grad_()
    grad_out = torch.randn(2, 3, 6, device="cuda")
    results = []
    for impl in ("cuda", "pytorch"):
        out = multi_scale_deformable_attention(
            value, shapes, start, locations, weights, implementation=impl
        )
        results.append((out, torch.autograd.grad((out * grad_out).sum(), tensors)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    for got, want in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_msdeformattn_box_reference_scales_offsets_by_half_box_size():
    """4-d reference (cx, cy, w, h): location = centre + offset / P * size / 2."""
    attn = MSDeformAttn(d_model=2, n_levels=1, n_heads=1, n_points=1).double()
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0]))
        attn.value_proj.weight.copy_(torch.eye(2))
        attn.output_proj.weight.copy_(torch.eye(2))
    values = torch.arange(16, dtype=torch.float64).view(1, 8, 2)  # a 2 x 4 map
    ref = torch.tensor([[[[0.125, 0.25, 0.5, 0.3]]]], dtype=torch.float64)  # pixel (0, 0) centre
    out = attn(
        torch.zeros(1, 1, 2, dtype=torch.float64),
        ref,
        values,
        torch.tensor([[2, 4]]),
        torch.tensor([0]),
    )
    torch.testing.assert_close(out[0, 0], values[0, 1])  # moved by w / 2 = one pixel to the right
    with pytest.raises(ValueError, match="2 or 4"):
        attn(
            torch.zeros(1, 1, 2, dtype=torch.float64),
            ref[..., :3],
            values,
            torch.tensor([[2, 4]]),
            torch.tensor([0]),
        )
