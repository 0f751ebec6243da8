"""FC-CLIP's segmentation head: a pixel decoder followed by the masked transformer decoder.

Registered in detectron2's SEM_SEG_HEADS_REGISTRY as ``FCCLIPHead``; its two parts are chosen by
name (MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME, MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME) and
stored as ``pixel_decoder`` and ``predictor`` so checkpoint keys are
``sem_seg_head.pixel_decoder.*`` and ``sem_seg_head.predictor.*``.
"""

import logging
from typing import Dict, List, Optional

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn

from .transformer_decoder import build_transformer_decoder

__all__ = ["FCCLIPHead", "build_pixel_decoder"]

logger = logging.getLogger(__name__)


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(
            f"Pixel decoder {name!r} has no forward_features(features) method; only pixel decoders "
            "(such as MSDeformAttnPixelDecoder) can be used as "
            "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME"
        )
    return model


@SEM_SEG_HEADS_REGISTRY.register()
class FCCLIPHead(nn.Module):
    """Pixel decoder + transformer decoder of FC-CLIP.

    Args:
        input_shape: backbone features used (name -> ShapeSpec).
        num_classes: number of training classes.
        pixel_decoder: module with ``forward_features(features) -> (mask_features,
            encoder_features, multi_scale_features)``.
        loss_weight: kept for detectron2 head compatibility (losses are weighted by the criterion).
        ignore_value: semantic-label ignore value.
        transformer_predictor: the transformer decoder.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        transformer_predictor: nn.Module,
    ):
        super().__init__()
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in ordered]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        if cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE != "multi_scale_pixel_decoder":
            raise ValueError(
                "FCCLIPHead needs MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE "
                "'multi_scale_pixel_decoder', "
                f"got {cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE!r}"
            )
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise KeyError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} not produced by the backbone "
                f"{sorted(input_shape)}"
            )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": head.LOSS_WEIGHT,
            "transformer_predictor": build_transformer_decoder(
                cfg, head.CONVS_DIM, mask_classification=True
            ),
        }

    def forward(
        self,
        features: Dict[str, Tensor],
        text_classifier: Tensor,
        num_templates: List[int],
        mask: Optional[Tensor] = None,
    ) -> Dict[str, object]:
        """Predict masks and in-vocabulary logits.

        Args:
            features: backbone features by name (res2..res5).
            text_classifier: (sum(num_templates) + 1) x D text embeddings, void last.
            num_templates: synonyms per class.
            mask: unused padding mask.
        Returns:
            the predictor's dict ("pred_logits", "pred_masks", "aux_outputs").
        """
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(
            multi_scale_features,
            mask_features,
            mask,
            text_classifier=text_classifier,
            num_templates=num_templates,
        )
