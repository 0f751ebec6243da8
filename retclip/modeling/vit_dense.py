"""Dense, text-aligned feature maps from an open_clip ViT, for mask pooling without training.

A CLIP ViT is trained to align only its class token with text. Its last-layer patch tokens are
poorly localised: the last block's query-key attention mixes global context into every token, so
all tokens look alike. The training-free variant of RetCLIP (§2.2) needs a map whose mask-pooled
vectors compare with text embeddings *and* with database vectors built the same way. Two variants:

* ``"value"`` (default, MaskCLIP: Zhou, Loy & Dai, ECCV 2022). In the last block, drop the
  query-key attention and keep each token's own **value embedding**: ``v = W_v ln_1(x) + b_v``,
  then the attention output projection (and layer scale), skipping that block's residual and MLP,
  then ``ln_post`` and ``proj``. Each output is a function of its own token only, and it passes
  through the same projection as the class token, so it lies in the image-text space.
  Equivalently: the last attention with every token attending only to itself.
* ``"tokens"``: the last block run unchanged, then ``ln_post`` and ``proj`` on the patch tokens.
  It is kept as a baseline: it is what open_clip returns with ``output_tokens``.

Resolution: the image is fed at any size that is a multiple of the patch size; the learned
positional embedding is bicubically interpolated from the pretraining grid to the input grid (the
class-token position is kept). Large images can be cut into overlapping square windows
(``window``/``stride``, multiples of the patch size): all windows of an image run as one batch,
one forward each, and overlapping outputs are averaged on the patch grid.

:func:`mask_pool_dense` turns the map and full-resolution masks into one vector per mask: the
mean, over the mask's pixels, of the feature of the patch each pixel falls in.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Tuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from ..retrieval.fingerprint import EncoderFingerprint
from .backbone.clip import create_clip_model
from .text_encoder import CLIPTextEncoder

logger = logging.getLogger(__name__)

__all__ = [
    "DENSE_MODES",
    "DenseCLIPViT",
    "clip_input_size",
    "mask_pool_dense",
    "pool_normalised",
    "window_starts",
]

#: Variants of :class:`DenseCLIPViT` (``MODEL.TRAINING_FREE.DENSE_MODE``).
DENSE_MODES = ("value", "tokens")


def window_starts(length: int, window: int, stride: int) -> List[int]:
    """Start offsets of windows of size ``window`` covering ``[0, length)`` with step ``stride``.

    The last window is aligned to the end so nothing is left uncovered; ``window >= length``
    gives one window at 0.
    """
    if window >= length:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def clip_input_size(height: int, width: int, short_side: int, patch: int) -> Tuple[int, int]:
    """Size the ViT sees: short side scaled to ``short_side`` (0 keeps the size), each side then
    rounded to a multiple of ``patch`` (at least one patch), so the patch grid covers the whole
    image and no padding is needed.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = 1.0 if short_side <= 0 else short_side / min(height, width)
    h = max(patch, int(round(height * scale / patch)) * patch)
    w = max(patch, int(round(width * scale / patch)) * patch)
    return h, w


class DenseCLIPViT(nn.Module):
    """A frozen open_clip ViT image tower producing dense features, plus its text tower.

    Always in eval mode, under ``no_grad``; parameters never require grad.
    """

    @classmethod
    def from_config(cls, cfg) -> "DenseCLIPViT":
        """The ViT of ``MODEL.TRAINING_FREE``: one place, so the training-free model and the
        database encoder built for it cannot differ in architecture, weights or dense maps."""
        tf = cfg.MODEL.TRAINING_FREE
        return cls(
            model_name=tf.CLIP_MODEL_NAME,
            pretrained=tf.CLIP_PRETRAINED_WEIGHTS,
            dense_mode=tf.DENSE_MODE,
            window=tf.SLIDE_WINDOW,
            stride=tf.SLIDE_STRIDE,
        )

    def __init__(
        self,
        *,
        model_name: str,
        pretrained: str = "",
        dense_mode: str = "value",
        window: int = 0,
        stride: int = 0,
    ) -> None:
        """
        Args:
            model_name: open_clip architecture with a ViT image tower ("ViT-B-16", "ViT-L-14").
            pretrained: "" for random weights, an open_clip tag, or a local weights file.
            dense_mode: one of :data:`DENSE_MODES` (see the module docstring).
            window: side of square sliding windows in pixels (multiple of the patch size);
                0 runs the whole image in one forward.
            stride: step between windows in pixels (multiple of the patch size, <= window).
        """
        super().__init__()
        if dense_mode not in DENSE_MODES:
            raise ValueError(f"unknown dense_mode {dense_mode!r}; valid: {DENSE_MODES}")
        try:
            self.clip_model = create_clip_model(model_name, pretrained)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(
                f"MODEL.TRAINING_FREE.CLIP_MODEL_NAME / CLIP_PRETRAINED_WEIGHTS: {e}"
            ) from e
        visual = self.clip_model.visual
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"CLIP {model_name!r} has a {type(visual).__name__} image tower; the dense "
                "training-free features need an open_clip VisionTransformer (e.g. ViT-B-16)"
            )
        if visual.attn_pool is not None or visual.proj is None:
            raise ValueError(
                f"CLIP {model_name!r}: ViTs with attentional pooling or without a projection "
                "are not supported (their patch tokens are not in the image-text space)"
            )
        self.patch_size = int(visual.patch_size[0])
        if visual.patch_size[0] != visual.patch_size[1]:
            raise ValueError(f"CLIP {model_name!r}: non-square patches {visual.patch_size}")
        for name, value in (("window", window), ("stride", stride)):
            if value < 0 or value % self.patch_size:
                raise ValueError(
                    f"{name} must be 0 or a positive multiple of the patch size "
                    f"{self.patch_size}, got {value}"
                )
        if window and not 0 < stride <= window:
            raise ValueError(f"stride must be in (0, window={window}], got {stride}")
        self.model_name = model_name
        self.pretrained = pretrained
        self.dense_mode = dense_mode
        self.window = int(window)
        self.stride = int(stride)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.text_encoder = CLIPTextEncoder(self.clip_model, self.tokenizer, model_name)
        self.embed_dim = int(visual.output_dim)
        self.pretrain_grid = tuple(int(g) for g in visual.grid_size)
        self._pos_cache: Dict[Tuple[int, int], Tensor] = {}
        for param in self.clip_model.parameters():
            param.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "DenseCLIPViT":
        """The CLIP stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001 - nn.Module internals
        self._pos_cache = {}  # device or dtype moves invalidate the cached embeddings
        return super()._apply(fn, *args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.clip_model.logit_scale.device

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's learned log temperature (scalar)."""
        return self.clip_model.logit_scale

    @property
    def fingerprint(self) -> EncoderFingerprint:
        """Identity of the features this module produces, for feature databases.

        The dense variant is part of the name (``"ViT-B-16+dense-value"``): two variants give
        vectors in different places of the space, so a database built with one must not be
        searched with the other.
        """
        base = EncoderFingerprint.from_open_clip(self.model_name, self.pretrained, self.embed_dim)
        return EncoderFingerprint(
            f"{base.model_name}+dense-{self.dense_mode}", base.weights, base.embed_dim
        )

    # ---------------------------------------------------------------- text tower
    def encode_prompts(self, prompts: List[str]) -> Tensor:
        """(P, D) un-normalised text embeddings (:class:`CLIPTextEncoder`, as FC-CLIP's)."""
        return self.text_encoder(prompts)

    # ---------------------------------------------------------------- image tower
    def positional_embedding(self, grid: Tuple[int, int]) -> Tensor:
        """(1 + gh*gw, width) positional embedding for a gh x gw patch grid (bicubic, cached)."""
        grid = (int(grid[0]), int(grid[1]))
        cached = self._pos_cache.get(grid)
        if cached is not None:
            return cached
        pos = self.clip_model.visual.positional_embedding
        if grid == self.pretrain_grid:
            out = pos
        else:
            gh0, gw0 = self.pretrain_grid
            spatial = pos[1:].reshape(1, gh0, gw0, -1).permute(0, 3, 1, 2).float()
            spatial = F.interpolate(spatial, size=grid, mode="bicubic", align_corners=False)
            spatial = spatial.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
            out = torch.cat([pos[:1], spatial], dim=0)
        self._pos_cache[grid] = out
        return out

    def _last_block_input(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Patch embedding, positions, ln_pre and all blocks but the last. Returns B x L x C."""
        visual = self.clip_model.visual
        x = visual.conv1(x.to(visual.conv1.weight.dtype))
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(grid).to(x.dtype)
        x = visual.ln_pre(x)
        transformer = visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[:-1]:
            x = block(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x, grid

    def _value_branch(self, block: nn.Module, x: Tensor) -> Tensor:
        """The last block's attention branch with each token attending only to itself."""
        attn = block.attn
        width = x.shape[-1]
        y = block.ln_1(x)
        v = F.linear(y, attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])
        if getattr(attn, "head_scale", None) is not None:  # open_clip's custom Attention
            n, length, _ = v.shape
            v = v.reshape(n, length, attn.num_heads, -1) * attn.head_scale.view(
                1, 1, attn.num_heads, 1
            )
            v = v.reshape(n, length, width)
        v = getattr(attn, "ln_inner", nn.Identity())(v)
        out = attn.out_proj(v)
        out = getattr(block, "ln_attn", nn.Identity())(out)
        return block.ls_1(out)

    def _forward_crops(self, x: Tensor) -> Tensor:
        """B x 3 x H x W (multiples of the patch size) -> B x D x H/p x W/p."""
        visual = self.clip_model.visual
        x, (gh, gw) = self._last_block_input(x)
        block = visual.transformer.resblocks[-1]
        if self.dense_mode == "value":
            tokens = self._value_branch(block, x)
        else:
            batch_first = getattr(visual.transformer, "batch_first", True)
            tokens = block(x if batch_first else x.transpose(0, 1))
            tokens = tokens if batch_first else tokens.transpose(0, 1)
        tokens = visual.ln_post(tokens[:, 1:]) @ visual.proj
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)

    def forward(self, images: Tensor) -> Tensor:
        """Dense features of normalised images.

        Args:
            images: B x 3 x H x W, normalised with CLIP's mean/std; H and W multiples of the
                patch size p (see :func:`clip_input_size`).
        Returns:
            B x D x H/p x W/p features in CLIP's joint image-text space (not normalised).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected B x 3 x H x W images, got {tuple(images.shape)}")
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        with torch.no_grad():
            if not self.window or (h <= self.window and w <= self.window):
                return self._forward_crops(images)
            win_h, win_w = min(self.window, h), min(self.window, w)
            boxes = [
                (y, x)
                for y in window_starts(h, win_h, self.stride)
                for x in window_starts(w, win_w, self.stride)
            ]
            out = images.new_zeros((b, self.embed_dim, h // p, w // p))
            count = images.new_zeros((1, 1, h // p, w // p))
            crops = torch.cat([images[:, :, y : y + win_h, x : x + win_w] for y, x in boxes])
            feats = self._forward_crops(crops).to(out.dtype).split(b)
            for (y, x), f in zip(boxes, feats):
                ys, xs = slice(y // p, (y + win_h) // p), slice(x // p, (x + win_w) // p)
                out[:, :, ys, xs] += f
                count[:, :, ys, xs] += 1
            return out / count


def mask_pool_dense(features: Tensor, masks: Tensor) -> Tensor:
    """Mean feature inside each mask, every pixel taking the feature of the patch it lies in.

    The masks, at any resolution, are area-averaged onto the feature grid (adaptive average
    pooling): each patch gets the fraction of its area the mask covers (exact when the mask size
    is a multiple of the grid), and the result is the coverage-weighted mean. Unlike a
    binarised pooling (FC-CLIP's ``MaskPooling``), a mask smaller than a patch still gets the
    features under it, which matters for proposals of small objects.

    Args:
        features: D x h x w dense features of one image.
        masks: N x H x W bool or float (0..1) masks over the same image extent.
    Returns:
        N x D pooled features; zero rows for empty masks.
    """
    if features.dim() != 3 or masks.dim() != 3:
        raise ValueError(
            f"mask_pool_dense expects D x h x w features and N x H x W masks, got "
            f"{tuple(features.shape)} and {tuple(masks.shape)}"
        )
    if masks.shape[0] == 0:
        return features.new_zeros((0, features.shape[0]))
    weights = F.interpolate(
        masks[:, None].to(features.dtype), size=features.shape[-2:], mode="area"
    )[:, 0]
    total = weights.flatten(1).sum(1)
    pooled = torch.einsum("dhw,nhw->nd", features, weights)
    return pooled / total.clamp_min(torch.finfo(features.dtype).tiny)[:, None]


def pool_normalised(features: Tensor, masks: Tensor) -> Tensor:
    """L2-normalised :func:`mask_pool_dense` (zero rows stay zero): the retrieval keys."""
    return F.normalize(mask_pool_dense(features, masks), dim=-1)
