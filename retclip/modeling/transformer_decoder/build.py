"""Registry of transformer decoders (the "predictor" of a mask-classification head)."""

from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder"]

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Registry for transformer decoders that turn pixel-decoder outputs into mask predictions.

An entry is called as ``cls(cfg, in_channels, mask_classification)`` and its ``forward(x,
mask_features, mask=None, text_classifier=..., num_templates=...)`` takes the multi-scale
features (list of B x C x H_l x W_l) and the B x C x H/4 x W/4 mask features, and returns a dict
with "pred_logits", "pred_masks" and "aux_outputs".
"""


def build_transformer_decoder(cfg, in_channels: int, mask_classification: bool = True) -> nn.Module:
    """Build the decoder named by ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)
