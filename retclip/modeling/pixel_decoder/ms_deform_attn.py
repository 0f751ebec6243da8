"""The multi-scale deformable attention module of Deformable DETR (Zhu et al., ICLR 2021).

Each query predicts, per head, level and point, a 2-D offset from its reference point and an
attention weight; the output is the weighted sum of bilinear samples of the projected values.
Parameter names match Deformable DETR / Mask2Former so released checkpoints load unchanged.
"""

import logging
import math
from typing import Optional

import torch
from torch import Tensor, nn

from .deform_attn_function import multi_scale_deformable_attention

__all__ = ["MSDeformAttn"]

logger = logging.getLogger(__name__)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention.

    Args:
        d_model: channels of queries and values.
        n_levels: number of feature levels.
        n_heads: attention heads; ``d_model`` must be divisible by it.
        n_points: sampling points per head and level.
        implementation: passed to :func:`multi_scale_deformable_attention` ("auto", "pytorch",
            "cuda").
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        implementation: str = "auto",
    ):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(
                f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})"
            )
        head_dim = d_model // n_heads
        if head_dim & (head_dim - 1) != 0:
            logger.warning(
                "MSDeformAttn head dim %d is not a power of 2; the compiled kernel is slower.",
                head_dim,
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.implementation = implementation
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable DETR's init: zero offset weights; bias = points on rays, one ray per head.

        Head h starts at direction angle 2*pi*h/M, scaled so the larger coordinate is 1, and point p
        sits at (p+1) times that offset; attention weights start uniform.
        """
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Attend from queries to the flattened multi-level input.

        Args:
            query: B x Lq x C queries (with position embedding added).
            reference_points: B x Lq x L x 2 normalised (x, y) in [0, 1], or B x Lq x L x 4
                boxes (cx, cy, w, h) whose size scales the offsets.
            input_flatten: B x S x C values of all levels concatenated (S = sum H_l * W_l).
            input_spatial_shapes: L x 2 long (H_l, W_l).
            input_level_start_index: L long offsets of the levels in S.
            input_padding_mask: optional B x S bool, True at padded positions (their values are
                zeroed).
        Returns:
            B x Lq x C.
        """
        batch, num_queries, _ = query.shape
        _, num_inputs, _ = input_flatten.shape
        if int((input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum()) != num_inputs:
            raise ValueError(
                f"MSDeformAttn: input_flatten has {num_inputs} positions, spatial shapes "
                f"{input_spatial_shapes.tolist()} disagree"
            )
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, num_inputs, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        weights = weights.softmax(-1).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points
        )
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide by (W_l, H_l)
            normalizer = torch.stack(
                [input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1
            )
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[
                None, None, None, :, None, :
            ].to(offsets.dtype)
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"MSDeformAttn: reference_points last dim must be 2 or 4, "
                f"got {reference_points.shape[-1]}"
            )
        output = multi_scale_deformable_attention(
            value,
            input_spatial_shapes,
            input_level_start_index,
            locations,
            weights,
            implementation=self.implementation,
        )
        return self.output_proj(output)
