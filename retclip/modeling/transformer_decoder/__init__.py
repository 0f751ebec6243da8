"""Transformer decoders (the mask-classification predictor) and their registry."""

from .build import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder
from .mask2former_decoder import MultiScaleMaskedTransformerDecoder

__all__ = [
    "TRANSFORMER_DECODER_REGISTRY",
    "build_transformer_decoder",
    "MultiScaleMaskedTransformerDecoder",
]
