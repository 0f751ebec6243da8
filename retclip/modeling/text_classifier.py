"""Text classifier of FC-CLIP: one CLIP text embedding per synonym, prompt-ensembled.

Every synonym is put into the 14 ViLD prompt templates, encoded with CLIP's text tower
(:class:`~retclip.modeling.text_encoder.CLIPTextEncoder`), L2-normalised, averaged over templates
and normalised again (FC-CLIP, ``get_text_classifier``). Classification later takes the max over a
class's synonyms (:func:`retclip.modeling.mask_pooling.get_classification_logits`). Encoding the
403 ADE synonyms is 5,642 prompts, so embeddings are cached twice: in memory per vocabulary (a
new vocabulary can be set at inference, repeated images reuse it) and on disk, keyed by a hash of
the text-tower weights and the exact prompts, so a second process with the same model and
vocabulary never runs the text tower (see :mod:`retclip.utils.array_cache` for the place).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..utils.array_cache import cache_root, load_array, save_array
from .vocabulary import split_synonyms

logger = logging.getLogger(__name__)

#: ViLD's prompt templates (Gu et al., 2022), used by FC-CLIP for every synonym.
VILD_TEMPLATES: Tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

#: encode(prompts) -> (P, D) un-normalised CLIP text embeddings; batching is the encoder's job.
#: An encoder with a ``weights_digest()`` method (CLIPTextEncoder) gets the on-disk cache.
PromptEncoder = Callable[[List[str]], torch.Tensor]

#: Bump when the stored embedding recipe changes, so old entries are never read.
_CACHE_FORMAT = 1


def build_prompts(class_names: Sequence[str]) -> Tuple[List[str], List[int]]:
    """All prompts of a vocabulary, synonym-major (the 14 templates of a synonym are adjacent).

    Returns:
        prompts: ΣSyn × 14 strings; num_synonyms: synonyms per class (K,), FC-CLIP's
        ``num_templates``.
    """
    prompts: List[str] = []
    num_synonyms: List[int] = []
    for name in class_names:
        synonyms = split_synonyms(name)
        num_synonyms.append(len(synonyms))
        for synonym in synonyms:
            prompts.extend(template.format(synonym) for template in VILD_TEMPLATES)
    return prompts, num_synonyms


def encode_vocabulary(
    encode: PromptEncoder, class_names: Sequence[str], *, persistent: bool = True
) -> Tuple[torch.Tensor, List[int]]:
    """Prompt-ensembled text embeddings of a vocabulary.

    Args:
        encode: maps a list of prompts to (P, D) un-normalised text embeddings.
        class_names: K names with comma-separated synonyms.
        persistent: read/write the on-disk cache when ``encode`` has a ``weights_digest``.
    Returns:
        embeddings (ΣSyn, D) float32 on CPU, unit norm, one row per synonym in class order; and the
        number of synonyms per class (K,).
    """
    prompts, num_synonyms = build_prompts(class_names)
    path = _persistent_path(encode, prompts) if persistent else None
    if path is not None:
        stored = load_array(path)
        rows = sum(num_synonyms)
        if stored is not None and (
            stored.dtype != "float32" or stored.ndim != 2 or stored.shape[0] != rows
        ):
            logger.warning(
                "cache entry %s holds %s %s, expected float32 (%d, D); recomputing it",
                path, stored.dtype, stored.shape, rows,
            )
            stored = None
        if stored is not None:
            logger.info("text embeddings of %d classes read from %s", len(class_names), path)
            return torch.from_numpy(stored), num_synonyms
    with torch.no_grad():
        per_prompt = F.normalize(encode(prompts).float(), dim=-1)
    per_synonym = per_prompt.reshape(-1, len(VILD_TEMPLATES), per_prompt.shape[-1]).mean(dim=1)
    embeddings = F.normalize(per_synonym, dim=-1).cpu()  # on CPU, like a cache hit
    if path is not None:
        save_array(path, embeddings.cpu().numpy())
    return embeddings, num_synonyms


def _persistent_path(encode: PromptEncoder, prompts: List[str]) -> Optional[Path]:
    """Cache file of these exact prompts under these text-tower weights (None: not cacheable)."""
    weights_digest = getattr(encode, "weights_digest", None)
    if weights_digest is None:
        return None
    key = {
        "format": _CACHE_FORMAT,
        "weights": weights_digest(),
        "templates": len(VILD_TEMPLATES),
        "prompts": prompts,
    }
    name = hashlib.sha256(json.dumps(key).encode("utf-8")).hexdigest()
    return cache_root() / "text_embeddings" / f"{name}.npy"


def append_void(text_embeddings: torch.Tensor, void_weight: torch.Tensor) -> torch.Tensor:
    """(ΣSyn, D) text embeddings + normalised learned void embedding -> (ΣSyn+1, D)."""
    void = F.normalize(void_weight, dim=-1).to(text_embeddings.dtype)
    return torch.cat([text_embeddings, void], dim=0)


class TextEmbeddingCache:
    """Text embeddings per (vocabulary, device), least recently used dropped first.

    The text tower is frozen, so embeddings only change when weights are loaded; the owner
    calls :meth:`clear` then (FCCLIP does it from a ``load_state_dict`` hook). Misses go through
    :func:`encode_vocabulary`, hence through the on-disk cache.
    """

    def __init__(self, encode: PromptEncoder, max_entries: int = 4) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._encode = encode
        self._max_entries = max_entries
        self._entries: "OrderedDict[tuple, Tuple[torch.Tensor, List[int]]]" = OrderedDict()

    def get(
        self, class_names: Sequence[str], device: torch.device
    ) -> Tuple[torch.Tensor, List[int]]:
        """Embeddings (ΣSyn, D) on ``device`` and synonyms per class, encoding only on a miss."""
        key = (tuple(class_names), str(device))
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        logger.info("text embeddings of a %d-class vocabulary", len(class_names))
        embeddings, num_synonyms = encode_vocabulary(self._encode, class_names)
        entry = (embeddings.to(device), num_synonyms)
        self._entries[key] = entry
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return entry

    def clear(self) -> None:
        """Forget every cached vocabulary (after new CLIP weights are loaded)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
