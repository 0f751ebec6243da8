"""Text classifier of FC-CLIP: one CLIP text embedding per synonym, prompt-ensembled.

Every synonym is put into the 14 ViLD prompt templates, encoded with CLIP's text tower in chunks
of 128 prompts, L2-normalised, averaged over templates and normalised again (FC-CLIP,
``get_text_classifier``). Classification later takes the max over a class's synonyms
(:func:`retclip.modeling.mask_pooling.get_classification_logits`). Encoding the 403 ADE synonyms
costs ~5.6k text-tower passes, so embeddings are cached per vocabulary: a new vocabulary can be
set at inference without retraining, and repeated images reuse the cached embeddings.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

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

#: Prompts per text-tower call (FC-CLIP's chunk size; bounds peak memory for big vocabularies).
TEXT_CHUNK_SIZE = 128

#: encode(prompts) -> (P, D) un-normalised CLIP text embeddings.
PromptEncoder = Callable[[List[str]], torch.Tensor]


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
    encode: PromptEncoder, class_names: Sequence[str], chunk_size: int = TEXT_CHUNK_SIZE
) -> Tuple[torch.Tensor, List[int]]:
    """Prompt-ensembled text embeddings of a vocabulary.

    Args:
        encode: maps a list of prompts to (P, D) un-normalised text embeddings.
        class_names: K names with comma-separated synonyms.
        chunk_size: prompts per ``encode`` call.
    Returns:
        embeddings (ΣSyn, D), unit norm, one row per synonym in class order; and the number of
        synonyms per class (K,).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    prompts, num_synonyms = build_prompts(class_names)
    chunks = [encode(prompts[i : i + chunk_size]) for i in range(0, len(prompts), chunk_size)]
    per_prompt = F.normalize(torch.cat(chunks, dim=0).float(), dim=-1)
    per_synonym = per_prompt.reshape(-1, len(VILD_TEMPLATES), per_prompt.shape[-1]).mean(dim=1)
    return F.normalize(per_synonym, dim=-1), num_synonyms


def append_void(text_embeddings: torch.Tensor, void_weight: torch.Tensor) -> torch.Tensor:
    """(ΣSyn, D) text embeddings + normalised learned void embedding -> (ΣSyn+1, D)."""
    void = F.normalize(void_weight, dim=-1).to(text_embeddings.dtype)
    return torch.cat([text_embeddings, void], dim=0)


class TextEmbeddingCache:
    """Text embeddings per (vocabulary, device), least recently used dropped first.

    The text tower is frozen, so embeddings only change when weights are loaded; the owner
    calls :meth:`clear` then (FCCLIP does it from a ``load_state_dict`` hook).
    """

    def __init__(
        self, encode: PromptEncoder, max_entries: int = 4, chunk_size: int = TEXT_CHUNK_SIZE
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._encode = encode
        self._max_entries = max_entries
        self._chunk_size = chunk_size
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
        logger.info("encoding text of a %d-class vocabulary", len(class_names))
        with torch.no_grad():
            embeddings, num_synonyms = encode_vocabulary(
                self._encode, class_names, self._chunk_size
            )
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
