"""Models: the CLIP backbone, pixel and transformer decoders, heads, losses and meta-architectures.

Importing this package registers ``CLIP`` (BACKBONE_REGISTRY), ``MSDeformAttnPixelDecoder`` and
``FCCLIPHead`` (SEM_SEG_HEADS_REGISTRY), ``MultiScaleMaskedTransformerDecoder`` and ``FCCLIP``
(META_ARCH_REGISTRY) under FC-CLIP's names, and the ``RetCLIP`` and ``TrainingFreeRetCLIP``
meta-architectures (after the compatibility steps of :mod:`retclip.compat`).
"""
from retclip import compat as _compat

_compat.apply_all()  # before detectron2 is first imported

from retclip import data as _data  # noqa: E402,F401  (registers the datasets whose metadata the models read)

from . import pixel_decoder, transformer_decoder  # noqa: F401  (registration)
from .backbone import CLIP
from .head import FCCLIPHead
from .meta_arch import FCCLIP
from .text_classifier import VILD_TEMPLATES, TextEmbeddingCache, encode_vocabulary
from .text_encoder import CLIPTextEncoder
from .vocabulary import Vocabulary, make_vocabulary, seen_class_mask, split_synonyms

from .meta_arch import retclip as _retclip, training_free as _training_free  # noqa: F401,E402

__all__ = [
    "CLIP",
    "CLIPTextEncoder",
    "FCCLIP",
    "FCCLIPHead",
    "VILD_TEMPLATES",
    "TextEmbeddingCache",
    "Vocabulary",
    "encode_vocabulary",
    "make_vocabulary",
    "seen_class_mask",
    "split_synonyms",
]
