"""Multi-scale deformable attention sampling (Deformable DETR, Zhu et al. 2021, eq. 3).

One dispatch function, :func:`multi_scale_deformable_attention`, with two implementations:

* a pure-PyTorch one (``F.grid_sample``, bilinear, zero padding, ``align_corners=False``) used on
  CPU and whenever the compiled kernel is not installed;
* the compiled CUDA kernel of Deformable DETR / Mask2Former (the ``MultiScaleDeformableAttention``
  extension), imported lazily and used only for CUDA tensors when a user has built it.

The choice is explicit and logged once. A broken compiled extension raises instead of silently
falling back (FC-CLIP's bare ``except:`` hid kernel failures behind the slow path).
"""

import importlib
import logging
from types import ModuleType
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "multi_scale_deformable_attention",
    "ms_deform_attn_pytorch",
    "compiled_extension_available",
]

logger = logging.getLogger(__name__)

_EXTENSION_NAME = "MultiScaleDeformableAttention"
_IMPLEMENTATIONS = ("auto", "pytorch", "cuda")
_extension: Optional[ModuleType] = None
_extension_checked = False
_logged_choice: set = set()


def _load_extension() -> Optional[ModuleType]:
    """Import the compiled extension once; None if it is not installed."""
    global _extension, _extension_checked
    if not _extension_checked:
        try:
            _extension = importlib.import_module(_EXTENSION_NAME)
        except ModuleNotFoundError as e:
            if e.name != _EXTENSION_NAME:
                raise
            _extension = None
        _extension_checked = True
    return _extension


def compiled_extension_available() -> bool:
    """Whether the compiled ``MultiScaleDeformableAttention`` CUDA extension can be imported."""
    return _load_extension() is not None


def _log_once(choice: str, device_type: str, reason: str) -> None:
    """Log the implementation chosen for a device type the first time it is used."""
    if (choice, device_type) not in _logged_choice:
        _logged_choice.add((choice, device_type))
        logger.info(
            "Multi-scale deformable attention: using the %s implementation (%s).", choice, reason
        )


def ms_deform_attn_pytorch(
    value: Tensor,
    spatial_shapes: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Pure-PyTorch deformable attention: bilinear samples weighted and summed per head.

    All heads and points of a level are sampled by one ``grid_sample`` call; the loop runs over
    levels only (3 in FC-CLIP). Shapes as in :func:`multi_scale_deformable_attention`.
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_per_level = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    # (B*M) x 1 x Lq x P per level, matching grid_sample's output layout
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(
        batch * num_heads, 1, num_queries, num_levels, num_points
    )
    output = None
    for level, (height, width) in enumerate(spatial_shapes.tolist()):
        # B x HW x M x D -> (B*M) x D x H x W
        v = (
            value_per_level[level]
            .permute(0, 2, 3, 1)
            .reshape(batch * num_heads, head_dim, height, width)
        )
        # B x Lq x M x P x 2 -> (B*M) x Lq x P x 2
        g = (
            grids[:, :, :, level]
            .transpose(1, 2)
            .reshape(batch * num_heads, num_queries, num_points, 2)
        )
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        contribution = (sampled * weights[..., level, :]).sum(-1)  # (B*M) x D x Lq
        output = contribution if output is None else output + contribution
    return output.view(batch, num_heads * head_dim, num_queries).transpose(1, 2).contiguous()


def _im2col_step(batch: int, limit: int = 64) -> int:
    """Largest divisor of the batch not above ``limit`` (the kernel needs batch % step == 0)."""
    for step in range(min(batch, limit), 0, -1):
        if batch % step == 0:
            return step
    return 1


class _CompiledMSDeformAttn(torch.autograd.Function):
    """Autograd wrapper of the compiled CUDA kernel's forward and backward."""

    @staticmethod
    def forward(
        ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    ):
        ext = _load_extension()
        ctx.im2col_step = _im2col_step(value.shape[0])
        output = ext.ms_deform_attn_forward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            ctx.im2col_step,
        )
        ctx.save_for_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
            ctx.saved_tensors
        )
        grad_value, grad_locations, grad_weights = _load_extension().ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            grad_output.contiguous(),
            ctx.im2col_step,
        )
        return grad_value, None, None, grad_locations, grad_weights


def _check_shapes(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights
) -> None:
    if value.dim() != 4 or sampling_locations.dim() != 6 or attention_weights.dim() != 5:
        raise ValueError(
            "multi_scale_deformable_attention expects value B x S x M x D, sampling_locations "
            "B x Lq x M x L x P x 2 and attention_weights B x Lq x M x L x P; got "
            f"{tuple(value.shape)}, {tuple(sampling_locations.shape)}, "
            f"{tuple(attention_weights.shape)}"
        )
    if spatial_shapes.shape != (sampling_locations.shape[3], 2):
        raise ValueError(
            f"spatial_shapes must be L x 2 with L = {sampling_locations.shape[3]} levels, "
            f"got {tuple(spatial_shapes.shape)}"
        )
    total = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
    if total != value.shape[1]:
        raise ValueError(f"value has {value.shape[1]} positions but spatial_shapes sum to {total}")
    if level_start_index.numel() != spatial_shapes.shape[0]:
        raise ValueError(
            f"level_start_index has {level_start_index.numel()} entries for "
            f"{spatial_shapes.shape[0]} levels"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights {tuple(attention_weights.shape)} must equal sampling_locations "
            f"{tuple(sampling_locations.shape)} without its last dim"
        )


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    implementation: str = "auto",
) -> Tensor:
    """Attention-weighted sum of bilinear samples of a multi-level value map.

    Args:
        value: B x S x M x D values of all levels, flattened row-major and concatenated
            (S = sum of H_l * W_l, M heads of D channels).
        spatial_shapes: L x 2 long tensor of (H_l, W_l).
        level_start_index: L long tensor, offset of each level in S.
        sampling_locations: B x Lq x M x L x P x 2 normalised (x, y) in [0, 1]; (0, 0) is the
            top-left corner of the map, not the first pixel's centre.
        attention_weights: B x Lq x M x L x P weights (normally softmax-ed over L * P).
        implementation: "auto" (compiled kernel for CUDA tensors when installed, else PyTorch),
            "pytorch" or "cuda" (raises if the kernel is missing or tensors are not on CUDA).
    Returns:
        B x Lq x (M * D) attended features.
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}"
        )
    _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    use_compiled = False
    if implementation == "cuda":
        if not value.is_cuda:
            raise ValueError(
                "implementation='cuda' needs CUDA tensors; got a tensor on " + str(value.device)
            )
        if not compiled_extension_available():
            raise ModuleNotFoundError(
                f"implementation='cuda' needs the compiled '{_EXTENSION_NAME}' extension "
                "(build Deformable-DETR's ops with `python setup.py build install`)"
            )
        use_compiled = True
    elif implementation == "auto" and value.is_cuda:
        use_compiled = compiled_extension_available()
        if not use_compiled:
            _log_once("pytorch", "cuda", f"'{_EXTENSION_NAME}' extension not installed")
    else:
        reason = (
            "requested" if implementation == "pytorch" else "no compiled kernel for this device"
        )
        _log_once("pytorch", value.device.type, reason)
    if use_compiled:
        _log_once("cuda", "cuda", f"compiled '{_EXTENSION_NAME}' extension")
        return _CompiledMSDeformAttn.apply(
            value.contiguous(),
            spatial_shapes.contiguous(),
            level_start_index.contiguous(),
            sampling_locations.contiguous(),
            attention_weights.contiguous(),
        )
    return ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
