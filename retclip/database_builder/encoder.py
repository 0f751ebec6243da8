"""The CLIP side of the database build: dense map once per image, all masks pooled together.

Database features must live in the space of RetCLIP's retrieval keys, so they are computed the
way the model computes segment embeddings: the frozen backbone's ``clip_vis_dense`` of the
test-time resized, CLIP-normalised, 32-padded image; masks as logits in the padded frame,
bilinearly resized to the dense size and binarised at > 0 (``MaskPooling``); then the CLIP head
(ConvNeXt: ``trunk.head`` + ``visual.head``; ResNet: the masked attention pool). The backbone is
the model's own ``retclip.modeling.backbone.CLIP``; nothing of it is re-implemented here.
"""

from __future__ import annotations

import logging
from typing import Protocol, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retclip.modeling.mask_pooling import MaskPooling
from retclip.retrieval import EncoderFingerprint

logger = logging.getLogger(__name__)

__all__ = ["SegmentEncoder", "ClipSegmentEncoder", "masks_to_logits"]


class SegmentEncoder(Protocol):
    """What the builder needs from an image encoder."""

    fingerprint: EncoderFingerprint

    def preprocess(self, image: np.ndarray) -> Tuple[Tensor, Tuple[int, int]]:
        """H x W x 3 uint8 RGB -> (3 x Hp x Wp normalised padded tensor, resized (h, w))."""

    def dense_features(self, images: Tensor) -> Tensor:
        """B x 3 x Hp x Wp preprocessed images -> B x C x h x w dense CLIP map."""

    def embed(self, dense: Tensor, mask_logits: Tensor) -> Tensor:
        """C x h x w dense map of one image + N x Hp x Wp mask logits -> N x D L2-normalised."""


def masks_to_logits(masks: Tensor, resized: Tuple[int, int], padded: Tuple[int, int]) -> Tensor:
    """Binary masks at source resolution as mask logits in the padded model-input frame.

    A mask becomes +1 inside / -1 outside, is bilinearly resized to the resized image, and is
    padded with -1 (outside) to the padded size: the frame in which the model's mask logits live.

    Args:
        masks: N x H x W bool.
        resized: (h, w) of the resized image; padded: (Hp, Wp) >= resized.
    Returns:
        N x Hp x Wp float logits.
    """
    logits = masks.float()[None] * 2.0 - 1.0
    if tuple(logits.shape[-2:]) != tuple(resized):
        logits = F.interpolate(logits, size=resized, mode="bilinear", align_corners=False)
    pad_h, pad_w = padded[0] - resized[0], padded[1] - resized[1]
    if pad_h or pad_w:
        logits = F.pad(logits, (0, pad_w, 0, pad_h), value=-1.0)
    return logits[0]


class ClipSegmentEncoder(nn.Module):
    """:class:`SegmentEncoder` over RetCLIP's frozen CLIP backbone (ConvNeXt or ModifiedResNet)."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        pretrained: str,
        min_size: int = 800,
        max_size: int = 1333,
        size_divisibility: int = 32,
    ) -> None:
        """
        Args:
            backbone: ``retclip.modeling.backbone.CLIP`` (holds ``clip_model`` and ``kind``).
            pretrained: the weights argument the backbone was built with (for the fingerprint).
            min_size, max_size: shortest-edge resize of the model's test mapper
                (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
            size_divisibility: images are zero-padded (after normalisation) to a multiple of it.
        """
        super().__init__()
        self.backbone = backbone
        self.min_size, self.max_size, self.size_divisibility = (
            int(min_size),
            int(max_size),
            int(size_divisibility),
        )
        mean = backbone.clip_model.visual.preprocess_cfg["mean"]
        std = backbone.clip_model.visual.preprocess_cfg["std"]
        self.register_buffer(
            "pixel_mean", torch.tensor(mean).view(3, 1, 1) * 255.0, persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(std).view(3, 1, 1) * 255.0, persistent=False)
        self.pooling = MaskPooling()
        self.fingerprint = EncoderFingerprint.from_open_clip(
            backbone.model_name, pretrained, backbone.dim_latent
        )

    @classmethod
    def from_names(cls, model_name: str, pretrained: str, **kwargs) -> "ClipSegmentEncoder":
        """Build the model's backbone from open_clip name + weights (tag, local file or "")."""
        from retclip.modeling.backbone import CLIP

        return cls(
            CLIP(model_name=model_name, pretrained=pretrained), pretrained=pretrained, **kwargs
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_module(self) -> nn.Module:
        """The module that runs once per image forward (for counting and timing)."""
        return self.backbone

    def preprocess(self, image: np.ndarray) -> Tuple[Tensor, Tuple[int, int]]:
        """Resize (shortest edge, as detectron2's ResizeShortestEdge at test time), normalise, pad.

        Args:
            image: H x W x 3 uint8 RGB.
        Returns:
            (3 x Hp x Wp float tensor, (h, w) of the resized image inside it).
        """
        from detectron2.data import transforms as T

        resize = T.ResizeShortestEdge(self.min_size, self.max_size).get_transform(image)
        resized = resize.apply_image(image)
        x = (
            torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
            .float()
            .to(self.device)
        )
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        d = self.size_divisibility
        hp, wp = (h + d - 1) // d * d, (w + d - 1) // d * d
        return F.pad(x, (0, wp - w, 0, hp - h), value=0.0), (int(h), int(w))

    @torch.no_grad()
    def dense_features(self, images: Tensor) -> Tensor:
        """B x 3 x Hp x Wp -> B x C x Hp/32 x Wp/32 ``clip_vis_dense``."""
        return self.backbone(images.to(self.device))["clip_vis_dense"]

    @torch.no_grad()
    def embed(self, dense: Tensor, mask_logits: Tensor) -> Tensor:
        """Segment embeddings of one image, all masks at once.

        Args:
            dense: C x h x w dense map.
            mask_logits: N x Hp x Wp logits in the padded input frame (> 0 = inside).
        Returns:
            N x D L2-normalised embeddings (N = 0 gives 0 x D).
        """
        n = mask_logits.shape[0]
        if n == 0:
            return torch.zeros((0, self.fingerprint.embed_dim), device=dense.device)
        masks = F.interpolate(
            mask_logits[None].to(dense), size=dense.shape[-2:], mode="bilinear", align_corners=False
        )
        if self.backbone.kind == "convnext":
            pooled = self.pooling(dense[None], masks)
            emb = self.backbone.convnext_head(pooled)
        else:
            emb = self.backbone.masked_attention_pool(dense[None], masks)
        return F.normalize(emb[0].float(), dim=-1)

    @staticmethod
    def valid_masks(dense_size: Tuple[int, int], mask_logits: Tensor) -> Tensor:
        """N bool: masks with at least one pixel at the dense resolution (others pool nothing)."""
        if mask_logits.shape[0] == 0:
            return torch.zeros(0, dtype=torch.bool)
        m = F.interpolate(
            mask_logits[None].float(), size=dense_size, mode="bilinear", align_corners=False
        )[0]
        return (m > 0).flatten(1).any(dim=1).cpu()
