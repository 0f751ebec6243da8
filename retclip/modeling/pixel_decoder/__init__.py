"""Pixel decoders (registered in detectron2's SEM_SEG_HEADS_REGISTRY) and deformable attention."""

from .deform_attn_function import compiled_extension_available, multi_scale_deformable_attention
from .ms_deform_attn import MSDeformAttn
from .msdeformattn import MSDeformAttnPixelDecoder

__all__ = [
    "MSDeformAttn",
    "MSDeformAttnPixelDecoder",
    "compiled_extension_available",
    "multi_scale_deformable_attention",
]
