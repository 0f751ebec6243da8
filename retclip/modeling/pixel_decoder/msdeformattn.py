"""Mask2Former's multi-scale deformable-attention pixel decoder, as used by FC-CLIP.

res3..res5 are projected to a common width, refined jointly by a deformable-attention encoder
(Deformable DETR, encoder only), split back into levels, and the finest level is fused with res2
by one FPN step into the 1/4-resolution mask features. Module and parameter names reproduce
FC-CLIP's checkpoint layout (``input_proj``, ``transformer.level_embed``,
``transformer.encoder.layers.N``, ``mask_features``, ``adapter_1``, ``layer_1``).
"""

import logging
import math
from typing import Dict, List, Optional, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn

from ..common import PositionEmbeddingSine, get_activation
from .ms_deform_attn import MSDeformAttn

__all__ = [
    "MSDeformAttnPixelDecoder",
    "MSDeformAttnTransformerEncoderOnly",
    "MSDeformAttnTransformerEncoderLayer",
]

logger = logging.getLogger(__name__)


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a two-layer FFN."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = get_activation(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """src, pos: B x S x C; reference_points: B x S x L x 2. Returns B x S x C."""
        attended = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnTransformerEncoder(nn.Module):
    """A stack of encoder layers sharing reference points at the pixel centres of every level."""

    def __init__(self, layers: List[MSDeformAttnTransformerEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def get_reference_points(
        spatial_shapes: Tensor, valid_ratios: Tensor, device: torch.device
    ) -> Tensor:
        """Normalised pixel centres of all levels, B x S x L x 2 (x, y), scaled by valid ratios."""
        points = []
        for level, (height, width) in enumerate(spatial_shapes.tolist()):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            points.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(points, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def forward(
        self,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        pos: Tensor,
        padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        reference_points = self.get_reference_points(spatial_shapes, valid_ratios, src.device)
        output = src
        for layer in self.layers:
            output = layer(
                output, pos, reference_points, spatial_shapes, level_start_index, padding_mask
            )
        return output


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Flattens the levels, adds level embeddings to the position codes and runs the encoder."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        layers = [
            MSDeformAttnTransformerEncoderLayer(
                d_model,
                dim_feedforward,
                dropout,
                activation,
                num_feature_levels,
                nhead,
                enc_n_points,
            )
            for _ in range(num_encoder_layers)
        ]
        self.encoder = MSDeformAttnTransformerEncoder(layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def get_valid_ratio(mask: Tensor) -> Tensor:
        """B x 2 fraction (w, h) of non-padded columns and rows of a B x H x W padding mask."""
        _, height, width = mask.shape
        valid_h = torch.sum(~mask[:, :, 0], 1)
        valid_w = torch.sum(~mask[:, 0, :], 1)
        return torch.stack([valid_w.float() / width, valid_h.float() / height], -1)

    def forward(
        self, srcs: List[Tensor], pos_embeds: List[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Encode levels jointly.

        Args:
            srcs: L tensors B x C x H_l x W_l (coarsest first in FC-CLIP).
            pos_embeds: L position encodings of the same shapes.
        Returns:
            memory B x S x C, spatial_shapes L x 2 (long), level_start_index L (long).
        """
        masks = [
            torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool)
            for x in srcs
        ]
        src_flatten, mask_flatten, pos_flatten, shapes = [], [], [], []
        for level, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            shapes.append(src.shape[-2:])
            src_flatten.append(src.flatten(2).transpose(1, 2))
            mask_flatten.append(mask.flatten(1))
            pos_flatten.append(
                pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
            )
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=srcs[0].device)
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])
        )
        valid_ratios = torch.stack([self.get_valid_ratio(m) for m in masks], 1)
        memory = self.encoder(
            torch.cat(src_flatten, 1),
            spatial_shapes,
            level_start_index,
            valid_ratios,
            torch.cat(pos_flatten, 1),
            torch.cat(mask_flatten, 1),
        )
        return memory, spatial_shapes, level_start_index


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention pixel decoder producing mask features and multi-scale features.

    Args:
        input_shape: backbone feature name -> ShapeSpec (channels, stride); FC-CLIP uses
            res2..res5.
        transformer_dropout, transformer_nheads, transformer_dim_feedforward,
        transformer_enc_layers: the deformable encoder's settings.
        transformer_n_points: sampling points per head and level (4 in FC-CLIP).
        conv_dim: width of the projected features and of the encoder.
        mask_dim: channels of the mask features.
        norm: detectron2 norm name of the FPN convs ("GN").
        transformer_in_features: features fed to the encoder (res3..res5).
        common_stride: stride of the mask features (4).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[str] = None,
        transformer_in_features: List[str],
        common_stride: int,
        transformer_n_points: int = 4,
    ):
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise KeyError(
                f"MSDeformAttnPixelDecoder: transformer_in_features {missing} are not among the "
                f"input features {sorted(input_shape)}"
            )
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in ordered]
        self.feature_strides = [v.stride for _, v in ordered]
        self.feature_channels = [v.channels for _, v in ordered]
        enc_ordered = sorted(
            ((k, v) for k, v in input_shape.items() if k in transformer_in_features),
            key=lambda kv: kv[1].stride,
        )
        self.transformer_in_features = [k for k, _ in enc_ordered]
        transformer_in_channels = [v.channels for _, v in enc_ordered]
        self.transformer_feature_strides = [v.stride for _, v in enc_ordered]
        self.transformer_num_feature_levels = len(self.transformer_in_features)

        # coarsest level first, as in FC-CLIP: input_proj.0 is res5
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for c in transformer_in_channels[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            dropout=transformer_dropout,
            nhead=transformer_nheads,
            dim_feedforward=transformer_dim_feedforward,
            num_encoder_layers=transformer_enc_layers,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1, stride=1, padding=0)
        weight_init.c2_xavier_fill(self.mask_features)

        self.maskformer_num_feature_levels = 3  # multi-scale features handed to the decoder
        self.common_stride = common_stride
        stride = min(self.transformer_feature_strides)
        self.num_fpn_levels = int(math.log2(stride) - math.log2(common_stride))
        if self.num_fpn_levels < 0:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: common_stride {common_stride} is coarser than "
                f"the finest "
                f"encoder stride {stride}"
            )
        use_bias = norm == ""  # FC-CLIP: conv bias only with the "" norm (none with None)
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(self.feature_channels[: self.num_fpn_levels]):
            lateral = Conv2d(
                in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
            )
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # plain lists (coarse to fine) so the convs are registered only once, as adapter_i/layer_i
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            # heads follow MASK_FORMER.NHEADS and the FFN is 1024 wide, as in Mask2Former/FC-CLIP
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "transformer_dim_feedforward": 1024,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "common_stride": head.COMMON_STRIDE,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
        }

    def forward_features(self, features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """Run the decoder in float32 with autocast off.

        Args:
            features: backbone features by name (res2..res5), B x C_l x H_l x W_l.
        Returns:
            mask_features: B x mask_dim x H/4 x W/4.
            transformer_encoder_features: B x conv_dim x H/32 x W/32 (encoder output, coarsest).
            multi_scale_features: [1/32, 1/16, 1/8] maps, B x conv_dim x H_l x W_l.
        """
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(
                f"MSDeformAttnPixelDecoder: features {missing} missing; got {sorted(features)}"
            )
        device_type = features[self.in_features[0]].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_fp32({k: features[k].float() for k in self.in_features})

    forward = forward_features

    def _forward_fp32(self, features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, List[Tensor]]:
        srcs, pos = [], []
        for idx, name in enumerate(self.transformer_in_features[::-1]):
            x = features[name]
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, spatial_shapes, level_start_index = self.transformer(srcs, pos)
        batch = memory.shape[0]
        sizes = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).tolist()
        out = [
            z.transpose(1, 2).reshape(batch, -1, int(h), int(w))
            for z, (h, w) in zip(memory.split(sizes, dim=1), spatial_shapes.tolist())
        ]
        for idx, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
            lateral = self.lateral_convs[idx](features[name])
            y = lateral + F.interpolate(
                out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            out.append(self.output_convs[idx](y))
        multi_scale_features = out[: self.maskformer_num_feature_levels]
        return self.mask_features(out[-1]), out[0], multi_scale_features
