"""One segment-embedding recipe for the model's retrieval keys and the database's rows.

The paper's point is that one CLIP with one mask pooling makes both the keys a model searches
with and the rows of the database it searches. Both therefore call the objects here, never a copy:

* :class:`ConvSegmentEmbedding`, FC-CLIP's frozen convolutional CLIP (ConvNeXt / ModifiedResNet):
  test-time shortest-edge resize (``INPUT.MIN/MAX_SIZE_TEST``; done by the test mapper on the
  model side), ``MODEL.PIXEL_MEAN/STD``, zero padding to ``MODEL.MASK_FORMER.SIZE_DIVISIBILITY``,
  the ``clip_vis_dense`` map, mask logits bilinearly resized to the dense grid and binarised at
  > 0 (a query is valid if any cell is inside), then the CLIP head (ConvNeXt ``trunk.head`` +
  ``visual.head``; ResNet: the masked attention pool). Used by ``FCCLIP._preprocess`` /
  ``_clip_embeddings`` and by the database builder.
* :class:`ViTSegmentEmbedding`, the training-free dense CLIP ViT: short side to
  ``MODEL.TRAINING_FREE.CLIP_SHORT_SIDE`` with sides rounded to the patch size,
  ``MODEL.PIXEL_MEAN/STD``, the dense map of :class:`~retclip.modeling.vit_dense.DenseCLIPViT`
  (dense mode, windows), and area pooling of the binary masks at their own resolution
  (:func:`~retclip.modeling.vit_dense.mask_pool_dense`; a mask is valid if non-empty). Used by
  ``TrainingFreeRetCLIP.segment_embeddings`` and by the database builder.

Each object describes itself as an :class:`~retclip.retrieval.EmbeddingRecipe` (with a hash of the
image tower's weights as loaded); databases record it and models compare it.

These are plain objects holding a reference to the model's own CLIP module (not ``nn.Module``
children, so the model's state dict and FC-CLIP checkpoint keys are unchanged). detectron2 is
imported only inside the conv resize/padding methods.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..retrieval.fingerprint import (
    RECIPE_FIELDS,
    EmbeddingRecipe,
    EncoderFingerprint,
    sha256_state_dict,
)
from .mask_pooling import MaskPooling
from .vit_dense import DenseCLIPViT, clip_input_size, mask_pool_dense

logger = logging.getLogger(__name__)

__all__ = [
    "ConvSegmentEmbedding",
    "DatabaseRecipeCheck",
    "SegmentEmbedding",
    "ViTSegmentEmbedding",
    "build_segment_embedding",
    "masks_to_logits",
]

_CONV_POOLING = {
    "convnext": "mask logits bilinear to the dense grid, > 0, mean; trunk.head + visual.head",
    "resnet": "mask logits bilinear to the dense grid, > 0 masks the attention pool",
}
_VIT_POOLING = "binary mask area-averaged onto the patch grid, weighted mean"


def masks_to_logits(masks: Tensor, resized: Tuple[int, int], padded: Tuple[int, int]) -> Tensor:
    """Binary masks at source resolution as mask logits in the padded model-input frame.

    A mask becomes +1 inside / -1 outside, is bilinearly resized to the resized image and padded
    with -1 (outside) to the padded size: the frame in which the model's mask logits live.

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


def _dtype_name(module: nn.Module) -> str:
    return str(next(module.parameters()).dtype).replace("torch.", "")


class SegmentEmbedding:
    """What the database builder calls (both recipes implement it).

    ``preprocess`` (one H x W x 3 uint8 RGB image -> 3 x Hp x Wp input, resized (h, w)),
    ``dense_features`` (B x 3 x Hp x Wp -> B x C x h x w), ``embed_masks`` (one image's dense map,
    N x H x W source-resolution binary masks, resized and padded sizes -> unit-norm rows of the
    valid masks, N valid flags), ``recipe()``, ``fingerprint``, ``image_module`` and ``device``.
    """

    pixel_mean: Tuple[float, ...]
    pixel_std: Tuple[float, ...]

    def normalise(self, image: Tensor) -> Tensor:
        """(x - mean) / std of a 3 x H x W 0-255 image (any dtype) on its own device."""
        mean = torch.tensor(self.pixel_mean, device=image.device).view(-1, 1, 1)
        std = torch.tensor(self.pixel_std, device=image.device).view(-1, 1, 1)
        return (image - mean) / std

    def preprocess(self, image: np.ndarray) -> Tuple[Tensor, Tuple[int, int]]:
        raise NotImplementedError

    def dense_features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def embed_masks(
        self, dense: Tensor, masks: Tensor, resized: Tuple[int, int], padded: Tuple[int, int]
    ) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def recipe(self, hash_weights: bool = True) -> EmbeddingRecipe:
        """The recipe; ``hash_weights=False`` leaves ``weights_sha256`` empty (cheap)."""
        raise NotImplementedError

    def _weights_hash(self, visual: nn.Module, hash_weights: bool) -> str:
        return sha256_state_dict(visual.state_dict()) if hash_weights else ""


class ConvSegmentEmbedding(SegmentEmbedding):
    """FC-CLIP's segment embeddings over the frozen convolutional CLIP backbone.

    Args:
        backbone: ``retclip.modeling.backbone.CLIP`` (the model's own module).
        min_size, max_size: test-time shortest-edge resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
        size_divisibility: zero padding multiple (MODEL.MASK_FORMER.SIZE_DIVISIBILITY; <= 1: none).
        pixel_mean, pixel_std: MODEL.PIXEL_MEAN / PIXEL_STD (0-255 scale, RGB).
        pretrained: the weights argument the backbone was built with (provenance only).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        min_size: int,
        max_size: int,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        pretrained: str = "",
    ) -> None:
        self.backbone = backbone
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.size_divisibility = int(size_divisibility)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.pretrained = pretrained
        self.mask_pooling = MaskPooling()

    @classmethod
    def from_config(cls, cfg, backbone: Optional[nn.Module] = None) -> "ConvSegmentEmbedding":
        """The recipe of ``cfg``'s FC-CLIP/RetCLIP model; builds its CLIP when not given."""
        if backbone is None:
            from .backbone import CLIP

            backbone = CLIP(
                model_name=cfg.MODEL.FC_CLIP.CLIP_MODEL_NAME,
                pretrained=cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS,
            )
        return cls(
            backbone,
            min_size=cfg.INPUT.MIN_SIZE_TEST,
            max_size=cfg.INPUT.MAX_SIZE_TEST,
            size_divisibility=cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            pretrained=cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS,
        )

    @classmethod
    def from_names(
        cls, model_name: str, pretrained: str, *, min_size: int, max_size: int,
        size_divisibility: int = 32,
    ) -> "ConvSegmentEmbedding":
        """A recipe outside any model config (tests, benchmarks): mean/std from the open_clip
        weights' own preprocessing descriptor."""
        from .backbone import CLIP

        backbone = CLIP(model_name=model_name, pretrained=pretrained)
        cfg = backbone.clip_model.visual.preprocess_cfg
        return cls(
            backbone, min_size=min_size, max_size=max_size, size_divisibility=size_divisibility,
            pixel_mean=[v * 255.0 for v in cfg["mean"]], pixel_std=[v * 255.0 for v in cfg["std"]],
            pretrained=pretrained,
        )

    # ---------------------------------------------------------------- identity
    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def image_module(self) -> nn.Module:
        """The module that runs once per image forward (for counting and timing)."""
        return self.backbone

    @property
    def fingerprint(self) -> EncoderFingerprint:
        return EncoderFingerprint.from_open_clip(
            self.backbone.model_name, self.pretrained, self.backbone.dim_latent
        )

    def recipe(self, hash_weights: bool = True) -> EmbeddingRecipe:
        """This recipe, with the hash of the image tower's weights as they are now."""
        visual = self.backbone.clip_model.visual
        return EmbeddingRecipe(
            model_name=self.backbone.model_name,
            weights=self.fingerprint.weights,
            weights_sha256=self._weights_hash(visual, hash_weights),
            embed_dim=self.backbone.dim_latent,
            resize=f"shortest_edge({self.min_size}, max={self.max_size})",
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            pad_multiple=max(self.size_divisibility, 1),
            dense_mode=self.backbone.kind,
            window=0,
            stride=0,
            pooling=_CONV_POOLING[self.backbone.kind],
            feature_dtype=_dtype_name(visual),
        )

    # ---------------------------------------------------------------- preprocessing
    def resize(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 -> the test-time resize (detectron2's ResizeShortestEdge, as the test
        mapper built from the same INPUT keys applies it on the model side)."""
        from detectron2.data import transforms as T

        resize = T.ResizeShortestEdge(self.min_size, self.max_size, "choice")
        return resize.get_transform(image).apply_image(image)

    def normalise_and_pad(self, images: List[Tensor]):
        """Resized 3 x H x W 0-255 images -> a detectron2 ``ImageList``, normalised, zero-padded
        to a multiple of ``size_divisibility`` (the model's input batch)."""
        from detectron2.structures import ImageList

        return ImageList.from_tensors([self.normalise(x) for x in images], self.size_divisibility)

    def preprocess(self, image: np.ndarray) -> Tuple[Tensor, Tuple[int, int]]:
        """H x W x 3 uint8 RGB -> (3 x Hp x Wp model input, (h, w) of the resized image in it)."""
        resized = self.resize(image)
        x = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).to(self.device)
        batch = self.normalise_and_pad([x])
        return batch.tensor[0], tuple(int(s) for s in batch.image_sizes[0])

    # ---------------------------------------------------------------- embedding
    @torch.no_grad()
    def dense_features(self, images: Tensor) -> Tensor:
        """B x 3 x Hp x Wp -> B x C x Hp/32 x Wp/32 ``clip_vis_dense``."""
        return self.backbone(images.to(self.device))["clip_vis_dense"]

    def pool(self, dense: Tensor, mask_logits: Tensor) -> Tuple[Tensor, Tensor]:
        """CLIP embeddings of masks, and whether each mask is non-empty on the dense grid.

        Args:
            dense: B x C x h x w ``clip_vis_dense``.
            mask_logits: B x Q x H' x W' logits (> 0 inside) over the padded input frame.
        Returns:
            (B x Q x D embeddings, not normalised; B x Q bool valid).
        """
        masks = F.interpolate(
            mask_logits.to(dense), size=dense.shape[-2:], mode="bilinear", align_corners=False
        )
        valid = (masks > 0).flatten(2).any(-1)
        if self.backbone.kind == "convnext":
            return self.backbone.convnext_head(self.mask_pooling(dense, masks)), valid
        return self.backbone.masked_attention_pool(dense, masks), valid

    @torch.no_grad()
    def embed_masks(
        self, dense: Tensor, masks: Tensor, resized: Tuple[int, int], padded: Tuple[int, int]
    ) -> Tuple[Tensor, Tensor]:
        """One image's rows: C x h x w dense map + N x H x W source-resolution bool masks ->
        (unit-norm embeddings of the valid masks, N bool valid on CPU). ``resized``/``padded``:
        the image's size in the model input and the input's size (see :meth:`preprocess`)."""
        if masks.shape[0] == 0:
            return dense.new_zeros((0, self.backbone.dim_latent)), torch.zeros(0, dtype=torch.bool)
        logits = masks_to_logits(masks.to(dense.device), resized, padded)
        emb, valid = self.pool(dense[None], logits[None])
        return F.normalize(emb[0][valid[0]].float(), dim=-1), valid[0].cpu()


class ViTSegmentEmbedding(SegmentEmbedding):
    """Training-free segment embeddings over the dense CLIP ViT.

    Args:
        clip: the model's :class:`DenseCLIPViT` (dense mode and windows are its own).
        short_side: MODEL.TRAINING_FREE.CLIP_SHORT_SIDE (0 keeps the input size).
        pixel_mean, pixel_std: MODEL.PIXEL_MEAN / PIXEL_STD (0-255 scale, RGB).
    """

    def __init__(
        self,
        clip: DenseCLIPViT,
        *,
        short_side: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        self.clip = clip
        self.short_side = int(short_side)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)

    @classmethod
    def from_config(cls, cfg, clip: Optional[DenseCLIPViT] = None) -> "ViTSegmentEmbedding":
        """The recipe of ``cfg``'s training-free model; builds its ViT when not given."""
        return cls(
            clip if clip is not None else DenseCLIPViT.from_config(cfg),
            short_side=cfg.MODEL.TRAINING_FREE.CLIP_SHORT_SIDE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
        )

    @property
    def device(self) -> torch.device:
        return self.clip.device

    @property
    def image_module(self) -> nn.Module:
        """Patch embedding: called once per image (all windows of an image are one batch)."""
        return self.clip.clip_model.visual.conv1

    @property
    def fingerprint(self) -> EncoderFingerprint:
        return self.clip.fingerprint

    def recipe(self, hash_weights: bool = True) -> EmbeddingRecipe:
        """This recipe, with the hash of the ViT image tower's weights as they are now."""
        visual = self.clip.clip_model.visual
        patch = self.clip.patch_size
        return EmbeddingRecipe(
            model_name=self.clip.model_name,
            weights=self.fingerprint.weights,
            weights_sha256=self._weights_hash(visual, hash_weights),
            embed_dim=self.clip.embed_dim,
            resize=f"short_side({self.short_side}, sides rounded to {patch})",
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            pad_multiple=1,
            dense_mode=self.clip.dense_mode,
            window=self.clip.window,
            stride=self.clip.stride,
            pooling=_VIT_POOLING,
            feature_dtype=_dtype_name(visual),
        )

    def prepare(self, image: Tensor) -> Tensor:
        """3 x H x W 0-255 image -> 1 x 3 x h x w ViT input (normalised, then resized)."""
        h, w = clip_input_size(image.shape[1], image.shape[2], self.short_side, self.clip.patch_size)
        x = self.normalise(image.float())[None]
        if (h, w) != tuple(image.shape[1:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return x

    def preprocess(self, image: np.ndarray) -> Tuple[Tensor, Tuple[int, int]]:
        """H x W x 3 uint8 RGB -> (3 x h x w ViT input, (h, w)); no padding."""
        x = self.prepare(torch.as_tensor(image).permute(2, 0, 1).to(self.device))[0]
        return x, (int(x.shape[1]), int(x.shape[2]))

    @torch.no_grad()
    def dense_features(self, images: Tensor) -> Tensor:
        """B x 3 x h x w -> B x D x h/p x w/p."""
        return self.clip(images.to(self.device))

    @staticmethod
    def valid(masks: Tensor) -> Tensor:
        """N bool: non-empty masks (area pooling keeps any non-empty mask, however small)."""
        return masks.flatten(1).any(1)

    def embed_image(self, image: Tensor, masks: Tensor) -> Tensor:
        """N x D mask-pooled dense features (not normalised) of one 3 x H x W 0-255 image and
        N x H' x W' bool masks over the same extent (the model's segment embeddings)."""
        dense = self.dense_features(self.prepare(image))[0]
        return mask_pool_dense(dense, masks.to(dense.device))

    @torch.no_grad()
    def embed_masks(
        self, dense: Tensor, masks: Tensor, resized: Tuple[int, int], padded: Tuple[int, int]
    ) -> Tuple[Tensor, Tensor]:
        """One image's rows: the masks are area-pooled at their own resolution, as the model
        does (``resized`` and ``padded`` are not needed: the ViT input is not padded)."""
        valid = self.valid(masks)
        pooled = mask_pool_dense(dense, masks[valid].to(dense.device))
        return F.normalize(pooled.float(), dim=-1), valid.cpu()


class DatabaseRecipeCheck:
    """A model's guard against databases embedded another way than its own keys.

    At construction every recipe field but the weights hash is checked (the model's weights may
    still be replaced by a checkpoint); the full recipe, with the hash of the weights as loaded,
    is checked before the first search and again after every ``load_state_dict`` (register
    :meth:`reset` as a load pre-hook). ``allow_mismatch`` (MODEL.RETCLIP.ALLOW_RECIPE_MISMATCH)
    turns refusals into warnings, for ablations.
    """

    def __init__(self, embedding: SegmentEmbedding, retrieval_head, allow_mismatch: bool) -> None:
        self.embedding = embedding
        self.retrieval_head = retrieval_head
        self.allow_mismatch = bool(allow_mismatch)
        self.pending = retrieval_head is not None
        if self.pending:
            retrieval_head.check_recipe(
                embedding.recipe(hash_weights=False),
                allow_mismatch=self.allow_mismatch,
                fields=[f for f in RECIPE_FIELDS if f != "weights_sha256"],
            )

    def reset(self, *args, **kwargs) -> None:
        """Weights changed: check again before the next search."""
        self.pending = self.retrieval_head is not None

    def __call__(self) -> None:
        """Check the whole recipe unless already done for the current weights."""
        if self.pending:
            self.retrieval_head.check_recipe(
                self.embedding.recipe(), allow_mismatch=self.allow_mismatch
            )
            self.pending = False


def build_segment_embedding(cfg) -> SegmentEmbedding:
    """The recipe of ``cfg``'s model, its CLIP built from the config on ``MODEL.DEVICE``: the
    dense ViT for "TrainingFreeRetCLIP", else FC-CLIP's convolutional CLIP."""
    if cfg.MODEL.META_ARCHITECTURE == "TrainingFreeRetCLIP":
        return ViTSegmentEmbedding.from_config(
            cfg, DenseCLIPViT.from_config(cfg).to(cfg.MODEL.DEVICE)
        )
    recipe = ConvSegmentEmbedding.from_config(cfg)
    recipe.backbone.to(cfg.MODEL.DEVICE)
    return recipe
