"""Small building blocks shared by the pixel decoder and the transformer decoder, defined once.

The parameter names (``MLP.layers``) and the sine encoding layout (y channels, then x channels)
follow DETR / Mask2Former, so released FC-CLIP checkpoints load without key remapping.
"""

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "PositionEmbeddingSine", "get_activation"]

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    """Return the activation function called ``name`` ("relu", "gelu" or "glu")."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last).

    Args:
        input_dim, hidden_dim, output_dim: widths of the first input, the hidden layers and
            the last output.
        num_layers: number of ``nn.Linear`` layers, stored in ``self.layers``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP needs num_layers >= 1, got {num_layers}")
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine position encoding of "Attention is all you need", as used by DETR.

    Output channels are ``2 * num_pos_feats``: first the y encoding, then the x encoding; within
    each, sin and cos of the same frequency are interleaved.

    Args:
        num_pos_feats: channels per axis (half of the output channels).
        temperature: base of the geometric frequency progression.
        normalize: scale cumulative coordinates to [0, scale] before encoding.
        scale: the normalised range, 2*pi by default; only valid with ``normalize=True``.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: Optional[float] = None,
    ):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Encode the positions of a feature map.

        Args:
            x: B x C x H x W features (only the shape and device are used).
            mask: optional B x H x W bool padding mask (True = padded).
        Returns:
            B x (2 * num_pos_feats) x H x W float32 encoding.
        """
        if mask is None:
            mask = torch.zeros((x.size(0), x.size(2), x.size(3)), device=x.device, dtype=torch.bool)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
