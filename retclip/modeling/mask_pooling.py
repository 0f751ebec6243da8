"""Mask pooling and the synonym-max classifier shared by FC-CLIP's two classification branches.

Both the in-vocabulary head (on pixel-decoder features) and the out-of-vocabulary head (on the
frozen CLIP's dense features) average features inside each predicted mask and compare the result
with the text classifier; keeping both here guarantees the two branches use the same rules.
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskPooling", "get_classification_logits"]


class MaskPooling(nn.Module):
    """Average of features over each binarised mask (mask logit > 0, i.e. sigmoid > 0.5).

    The mask is detached: gradients flow into the features only.
    """

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Pool features inside masks.

        Args:
            x: B x C x H x W features.
            mask: B x Q x h x w mask logits; bilinearly resized to H x W if sizes differ.
        Returns:
            B x Q x C pooled features (zeros for empty masks).
        """
        if x.dim() != 4 or mask.dim() != 4 or x.shape[0] != mask.shape[0]:
            raise ValueError(
                f"MaskPooling expects x B x C x H x W and mask B x Q x h x w with the same B, "
                f"got {tuple(x.shape)} and {tuple(mask.shape)}"
            )
        with torch.no_grad():
            if x.shape[-2:] != mask.shape[-2:]:
                mask = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
            binary = (mask > 0).to(x.dtype)
            denom = binary.sum(dim=(-1, -2), keepdim=True) + 1e-8
            weights = binary / denom
        return torch.einsum("bchw,bqhw->bqc", x, weights)


def _synonym_index(num_templates: Sequence[int], device: torch.device) -> Tensor:
    """K x S_max column indices of each class's synonyms, padded with -1."""
    counts = torch.as_tensor(list(num_templates), dtype=torch.long, device=device)
    starts = torch.cumsum(counts, 0) - counts
    offsets = torch.arange(int(counts.max()), device=device)
    index = starts[:, None] + offsets[None, :]
    return torch.where(offsets[None, :] < counts[:, None], index, torch.full_like(index, -1))


def get_classification_logits(
    x: Tensor, text_classifier: Tensor, logit_scale: Tensor, num_templates: List[int]
) -> Tensor:
    """Cosine-similarity logits per class: the max over the class's synonyms, plus void.

    Args:
        x: B x Q x D embeddings (any leading dims work).
        text_classifier: (sum(num_templates) + 1) x D L2-normalised text embeddings; the last
            row is the void embedding.
        logit_scale: scalar tensor, log of the temperature; ``exp`` is clamped at 100.
        num_templates: number of synonym rows of each of the K classes, in row order.
    Returns:
        B x Q x (K + 1) logits; the last column is void.
    """
    num_templates = [int(n) for n in num_templates]
    if not num_templates or min(num_templates) < 1:
        raise ValueError(
            f"num_templates must be a non-empty list of positive counts, got {num_templates}"
        )
    if sum(num_templates) + 1 != text_classifier.shape[0]:
        raise ValueError(
            f"text_classifier has {text_classifier.shape[0]} rows but num_templates sums to "
            f"{sum(num_templates)} (+1 void row expected)"
        )
    if x.shape[-1] != text_classifier.shape[-1]:
        raise ValueError(
            f"embedding dim mismatch: x has {x.shape[-1]}, "
            f"text_classifier has {text_classifier.shape[-1]}"
        )
    x = F.normalize(x, dim=-1)
    scale = torch.clamp(logit_scale.exp(), max=100)
    logits = scale * x @ text_classifier.T
    index = _synonym_index(num_templates, logits.device)
    per_synonym = logits[..., index.clamp(min=0)]  # ... x K x S_max
    per_synonym = per_synonym.masked_fill(index < 0, float("-inf"))
    per_class = per_synonym.max(dim=-1).values
    return torch.cat([per_class, logits[..., -1:]], dim=-1)
