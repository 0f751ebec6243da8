"""The frozen convolutional CLIP of FC-CLIP as a detectron2 backbone (registered as "CLIP").

It holds the unchanged open_clip model as ``clip_model`` (checkpoint keys ``backbone.clip_model.*``)
and exposes the three things FC-CLIP needs from it: multi-scale features (stem, res2..res5) plus
the dense CLIP map ``clip_vis_dense``, the text tower (through open_clip's own modules, see
:mod:`retclip.modeling.text_encoder`), and the out-of-vocabulary head that turns mask-pooled
dense features into CLIP embeddings. Channels are read from the built modules, never from the
model name, so any open_clip ConvNeXt (timm trunk) or ModifiedResNet works, tiny test ones too.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Dict, List

import open_clip
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from torch import nn

from ..text_encoder import CLIPTextEncoder

logger = logging.getLogger(__name__)

_FEATURES = ("stem", "res2", "res3", "res4", "res5", "clip_vis_dense")


def _testing_model(name: str) -> bool:
    """The tiny test architectures (configs/tests) are registered only when a config names one."""
    from retclip.testing.clip_configs import register_if_testing_model

    return register_if_testing_model(name)


def create_clip_model(model_name: str, pretrained: str) -> nn.Module:
    """Build an open_clip model; ``pretrained`` is "" (random, no network), a tag, or a file path.

    Raises:
        FileNotFoundError: a path-like ``pretrained`` (has a separator or a weights suffix) that
            does not exist.
        ValueError: an unknown architecture name (the error lists where to look).
    """
    if model_name not in open_clip.list_models() and not _testing_model(model_name):
        raise ValueError(
            f"MODEL.FC_CLIP.CLIP_MODEL_NAME {model_name!r} is not an open_clip architecture; "
            "see open_clip.list_models()"
        )
    if pretrained:
        looks_like_path = os.sep in pretrained or pretrained.endswith(
            (".pt", ".pth", ".bin", ".safetensors")
        )
        if looks_like_path and not os.path.isfile(os.path.expanduser(pretrained)):
            raise FileNotFoundError(
                f"MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS: file {pretrained!r} does not exist"
            )
        pretrained = os.path.expanduser(pretrained)
        logger.info("loading CLIP %s weights from %s", model_name, pretrained)
        return open_clip.create_model(model_name, pretrained=pretrained)
    return open_clip.create_model(model_name, pretrained=None)


@BACKBONE_REGISTRY.register()
class CLIP(Backbone):
    """Frozen open_clip model (ConvNeXt or ModifiedResNet image tower) used as FC-CLIP's backbone.

    It is always in eval mode and runs under ``no_grad``; its parameters never require grad.
    """

    @configurable
    def __init__(self, *, model_name: str, pretrained: str) -> None:
        """
        Args:
            model_name: open_clip architecture (MODEL.FC_CLIP.CLIP_MODEL_NAME).
            pretrained: "" for random weights, an open_clip tag or a local weights file
                (MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS).
        """
        super().__init__()
        self.model_name = model_name
        self.clip_model = create_clip_model(model_name, pretrained)
        self.text_tokenizer = open_clip.get_tokenizer(model_name)
        self.text_encoder = CLIPTextEncoder(self.clip_model, self.text_tokenizer, model_name)
        visual = self.clip_model.visual
        if isinstance(visual, TimmModel) and hasattr(visual.trunk, "stages"):
            self.kind = "convnext"
            stage_channels = [info["num_chs"] for info in visual.trunk.feature_info]
            stem_channels, stem_stride = visual.trunk.stem[0].out_channels, 4
        elif isinstance(visual, ModifiedResNet):
            self.kind = "resnet"
            layers = [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
            stage_channels = [layer[-1].conv3.out_channels for layer in layers]
            stem_channels, stem_stride = visual.conv3.out_channels, 2
        else:
            raise ValueError(
                f"CLIP {model_name!r} has a {type(visual).__name__} image tower; FC-CLIP needs a "
                "convolutional one (timm ConvNeXt or ModifiedResNet)"
            )
        channels = [stem_channels] + stage_channels + [stage_channels[-1]]
        strides = [stem_stride, 4, 8, 16, 32, 32]
        self._out_features = list(_FEATURES)
        self._out_feature_channels = dict(zip(_FEATURES, channels))
        self._out_feature_strides = dict(zip(_FEATURES, strides))
        self.dim_latent = int(self.clip_model.text_projection.shape[-1])
        for param in self.clip_model.parameters():
            param.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        return {
            "model_name": cfg.MODEL.FC_CLIP.CLIP_MODEL_NAME,
            "pretrained": cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS,
        }

    def train(self, mode: bool = True) -> "CLIP":
        """The CLIP stays in eval mode whatever ``mode`` is (frozen BatchNorm statistics)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.clip_model.logit_scale.device

    @property
    def size_divisibility(self) -> int:
        return -1

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Features of a normalised image batch.

        Args:
            x: (B, 3, H, W) float image, normalised with CLIP's mean/std.
        Returns:
            {"stem", "res2".."res5", "clip_vis_dense"}: (B, C, H/s, W/s) maps; ``clip_vis_dense``
            is the last stage's map (after ConvNeXt's ``norm_pre``) fed to the CLIP head.
        """
        with torch.no_grad():
            if self.kind == "convnext":
                return self._convnext_features(x)
            return self._resnet_features(x)

    def _convnext_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        trunk = self.clip_model.visual.trunk
        out = {}
        x = trunk.stem(x)
        out["stem"] = x.contiguous()
        for i, stage in enumerate(trunk.stages):
            x = stage(x)
            out[f"res{i + 2}"] = x.contiguous()
        out["clip_vis_dense"] = trunk.norm_pre(x).contiguous()
        return out

    def _resnet_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        v = self.clip_model.visual
        out = {}
        x = x.to(v.conv1.weight.dtype)
        x = v.act1(v.bn1(v.conv1(x)))
        x = v.act2(v.bn2(v.conv2(x)))
        x = v.act3(v.bn3(v.conv3(x)))
        out["stem"] = x.contiguous()
        x = v.avgpool(x)
        for i, layer in enumerate([v.layer1, v.layer2, v.layer3, v.layer4]):
            x = layer(x)
            out[f"res{i + 2}"] = x.contiguous()
        out["clip_vis_dense"] = x
        return out

    # ---------------------------------------------------------------- text tower
    def encode_prompts(self, prompts: List[str]) -> torch.Tensor:
        """(P, D) un-normalised text embeddings (:class:`CLIPTextEncoder`: open_clip's modules,
        each batch run only up to its longest prompt where that is exact)."""
        return self.text_encoder(prompts)

    # ---------------------------------------------------------------- out-of-vocabulary head
    def convnext_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """CLIP embeddings of mask-pooled ConvNeXt features.

        Args:
            pooled: (B, Q, C) mask-pooled ``clip_vis_dense``.
        Returns:
            (B, Q, D): timm ``trunk.head`` (on a 1x1 map) then open_clip's ``visual.head``.
        """
        b, q, c = pooled.shape
        visual = self.clip_model.visual
        x = visual.trunk.head(pooled.reshape(b * q, c, 1, 1))
        x = visual.head(x)
        return x.reshape(b, q, x.shape[-1])

    def masked_attention_pool(self, dense: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """CLIP embeddings of masked regions through the ResNet attention pool (FC-CLIP's rule).

        The query is the mean over all pixels plus the class-token position embedding; keys and
        values are the pixels plus resized position embeddings; pixels outside the mask
        (logit <= 0) are hidden. FC-CLIP hides every key for an empty mask, which yields NaN;
        here an empty mask attends everywhere instead (finite), and the ensemble ignores those
        queries when ENSEMBLE_ON_VALID_MASK is on, so results equal FC-CLIP's there.

        Args:
            dense: (B, C, h, w) ``clip_vis_dense``; mask_logits: (B, Q, h, w).
        Returns:
            (B, Q, D) embeddings.
        """
        pool = self.clip_model.visual.attnpool
        b, c, h, w = dense.shape
        q = mask_logits.shape[1]
        pos = pool.positional_embedding.to(dense.dtype)
        side = int(math.isqrt(pos.shape[0] - 1))
        spatial = pos[1:].T.reshape(1, c, side, side)
        spatial = F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=False)
        spatial = spatial.reshape(c, h * w).T[:, None, :]  # (hw, 1, C)
        pixels = dense.reshape(b, c, h * w).permute(2, 0, 1)  # (hw, B, C)
        key_value = pixels + spatial
        query = (pixels.mean(0, keepdim=True) + pos[:1, None, :]).repeat_interleave(q, dim=0)
        hidden = mask_logits.reshape(b, q, h * w) <= 0
        hidden = hidden & ~hidden.all(dim=-1, keepdim=True)
        attn_mask = (
            hidden.unsqueeze(1)
            .expand(-1, pool.num_heads, -1, -1)
            .reshape(b * pool.num_heads, q, h * w)
        )
        out, _ = F.multi_head_attention_forward(
            query=query,
            key=key_value,
            value=key_value,
            embed_dim_to_check=c,
            num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
            attn_mask=attn_mask,
        )
        return out.permute(1, 0, 2)
