"""Mask2Former's masked-attention transformer decoder with FC-CLIP's in-vocabulary classifier.

Learned queries attend, layer by layer, to one level of the multi-scale features (1/32, 1/16,
1/8, repeating), restricted to the foreground of the mask predicted by the previous layer
(Cheng et al., CVPR 2022). FC-CLIP replaces the fixed class head: each query's embedding plus its
mask-pooled pixel features is projected into CLIP's text space and classified against text
embeddings, so the class set can change at test time.
"""

import math
from typing import Dict, List, Optional, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import Tensor, nn

from ..common import MLP, PositionEmbeddingSine
from ..mask_pooling import MaskPooling, get_classification_logits
from .build import TRANSFORMER_DECODER_REGISTRY
from .layers import CrossAttentionLayer, FFNLayer, SelfAttentionLayer

__all__ = ["MultiScaleMaskedTransformerDecoder"]


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Masked-attention decoder producing mask logits and open-vocabulary class logits.

    Args:
        in_channels: channels of the multi-scale features (a 1x1 projection is added if they
            differ from ``hidden_dim`` or ``enforce_input_project``).
        mask_classification: must be True (FC-CLIP always classifies masks).
        num_classes: training classes (kept for reference; logits follow the text classifier).
        hidden_dim: query width.
        num_queries: number of object queries.
        nheads: attention heads.
        dim_feedforward: FFN width.
        dec_layers: number of decoder layers (cfg DEC_LAYERS - 1: the first prediction is made
            from the raw queries).
        pre_norm: pre- instead of post-normalisation.
        mask_dim: channels of the mask features and of the mask embeddings.
        enforce_input_project: always add the 1x1 input projection.
        clip_embedding_dim: CLIP embedding dim D the class embedding is projected to.
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        clip_embedding_dim: int,
    ):
        super().__init__()
        if not mask_classification:
            raise ValueError(
                "MultiScaleMaskedTransformerDecoder: FC-CLIP needs mask_classification=True"
            )
        if dec_layers < 0:
            raise ValueError(
                f"MultiScaleMaskedTransformerDecoder: dec_layers must be >= 0, got {dec_layers}"
            )
        # CLIP-style temperature of the in-vocabulary classifier, trainable, init 1/0.07
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.mask_classification = mask_classification
        self.num_classes = num_classes
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.num_feature_levels = 3
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.mask_pooling = MaskPooling()
        self._mask_pooling_proj = nn.Sequential(
            nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim)
        )
        self.class_embed = MLP(hidden_dim, hidden_dim, clip_embedding_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool) -> dict:
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "clip_embedding_dim": cfg.MODEL.FC_CLIP.EMBED_DIM,
        }

    def forward(
        self,
        x: List[Tensor],
        mask_features: Tensor,
        mask: Optional[Tensor] = None,
        text_classifier: Optional[Tensor] = None,
        num_templates: Optional[List[int]] = None,
    ) -> Dict[str, object]:
        """Decode queries into masks and class logits.

        Args:
            x: 3 multi-scale features B x C x H_l x W_l (1/32, 1/16, 1/8).
            mask_features: B x mask_dim x H/4 x W/4.
            mask: unused (padding masks are not supported, as in Mask2Former).
            text_classifier: (sum(num_templates) + 1) x D text embeddings, void last.
            num_templates: synonyms per class, K entries.
        Returns:
            dict with "pred_logits" B x Q x (K+1), "pred_masks" B x Q x H/4 x W/4 (last layer),
            and "aux_outputs": ``dec_layers`` dicts of the same two keys from earlier layers.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(
                f"expected {self.num_feature_levels} multi-scale features, got {len(x)}"
            )
        if text_classifier is None or num_templates is None:
            raise ValueError(
                "MultiScaleMaskedTransformerDecoder needs text_classifier and num_templates"
            )
        src, pos, size_list = [], [], []
        for i in range(self.num_feature_levels):
            size_list.append(x[i].shape[-2:])
            pos.append(self.pe_layer(x[i], None).flatten(2).permute(2, 0, 1))
            level = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(level.permute(2, 0, 1))  # HW x B x C
        batch = src[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        predictions_class, predictions_mask = [], []
        outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
            output, mask_features, size_list[0], text_classifier, num_templates
        )
        predictions_class.append(outputs_class)
        predictions_mask.append(outputs_mask)
        for i in range(self.num_layers):
            level_index = i % self.num_feature_levels
            # a query whose mask is empty at this level attends everywhere instead of nowhere
            attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False
            output = self.transformer_cross_attention_layers[i](
                output,
                src[level_index],
                memory_mask=attn_mask,
                pos=pos[level_index],
                query_pos=query_embed,
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
            output = self.transformer_ffn_layers[i](output)
            outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
                output,
                mask_features,
                size_list[(i + 1) % self.num_feature_levels],
                text_classifier,
                num_templates,
            )
            predictions_class.append(outputs_class)
            predictions_mask.append(outputs_mask)
        return {
            "pred_logits": predictions_class[-1],
            "pred_masks": predictions_mask[-1],
            "aux_outputs": [
                {"pred_logits": c, "pred_masks": m}
                for c, m in zip(predictions_class[:-1], predictions_mask[:-1])
            ],
        }

    def forward_prediction_heads(
        self,
        output: Tensor,
        mask_features: Tensor,
        attn_mask_target_size: Tuple[int, int],
        text_classifier: Tensor,
        num_templates: List[int],
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Masks, class logits and the next layer's attention mask from Q x B x C queries.

        Returns:
            class logits B x Q x (K+1), mask logits B x Q x H/4 x W/4, and the attention mask
            (B*heads) x Q x (h*w) bool at ``attn_mask_target_size`` (True = blocked).
        """
        decoder_output = self.decoder_norm(output).transpose(0, 1)  # B x Q x C
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        pooled = self._mask_pooling_proj(self.mask_pooling(mask_features, outputs_mask))
        class_embed = self.class_embed(pooled + decoder_output)
        outputs_class = get_classification_logits(
            class_embed, text_classifier, self.logit_scale, num_templates
        )
        attn_mask = F.interpolate(
            outputs_mask, size=attn_mask_target_size, mode="bilinear", align_corners=False
        )
        attn_mask = (
            attn_mask.sigmoid()
            .flatten(2)
            .unsqueeze(1)
            .repeat(1, self.num_heads, 1, 1)
            .flatten(0, 1)
            < 0.5
        )
        return outputs_class, outputs_mask, attn_mask.detach()
