"""The one way prompts become CLIP text embeddings (FC-CLIP, RetCLIP, training-free, labels).

CLIP's text transformer is causal and pools the end-of-text (EOT) token, so the output at the EOT
token never depends on the padding after it. Prompts are therefore tokenised once, sorted by
length, and each batch runs open_clip's own modules (token embedding, sliced positional
embedding, transformer with the causal mask sized to match, ``ln_final``, ``text_projection``)
only up to its longest prompt (EOT position + 1). FC-CLIP's prompts are under 20 of the 77
tokens, so this is several times cheaper than ``encode_text`` and gives the same embeddings.

Towers where that is not exact (no causal mask, a pool other than the EOT token, a class token,
a Hugging Face text tower) use open_clip's full ``encode_text``; :attr:`CLIPTextEncoder.truncates`
says which path a model gets, and the reason for a fallback is logged once.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["CLIPTextEncoder", "TEXT_BATCH_SIZE"]

#: Prompts per text-transformer call (FC-CLIP's chunk size; bounds peak memory).
TEXT_BATCH_SIZE = 128


def _causal_text_tower(clip_model: nn.Module) -> Tuple[Optional[nn.Module], str, str]:
    """(module holding the text parts, pool type, reason) - module None with the fallback reason.

    ``open_clip.CLIP`` keeps the text parts on the model itself (pool type ``text_pool_type``);
    ``CustomTextCLIP`` keeps them in ``.text`` (a ``TextTransformer`` or an HF tower).
    """
    owner: nn.Module = clip_model
    pool = getattr(clip_model, "text_pool_type", None)
    if pool is None:
        owner = getattr(clip_model, "text", None)
        pool = getattr(owner, "pool_type", None)
        if owner is None or pool is None:
            return None, "", "its text tower is not an open_clip TextTransformer"
        if getattr(owner, "cls_emb", None) is not None:
            return None, pool, "its text tower appends a class token"
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(owner, name) for name in parts):
        return None, pool, "its text tower lacks open_clip's token/positional embedding layout"
    if pool not in ("argmax", "eos"):
        return None, pool, f"it pools the {pool!r} token, not the end-of-text token"
    mask = getattr(owner, "attn_mask", None)
    if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return None, pool, "its text transformer is not causal (no attention mask)"
    upper = torch.ones_like(mask, dtype=torch.bool).triu(1)
    if not (torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all()):
        return None, pool, "its attention mask is not the causal (upper -inf) mask"
    return owner, pool, ""


class CLIPTextEncoder:
    """Un-normalised CLIP text embeddings of prompts, truncated where exact.

    Call it with a list of prompts; it returns (P, D) float embeddings in the prompts' order. It
    holds a reference to the open_clip model (not a copy), so device moves apply. The content
    hash of the text-tower weights (:meth:`weights_digest`, the persistent cache key) is computed
    once and recomputed after any ``load_state_dict`` into the model.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[[List[str]], Tensor],
        model_name: str,
        batch_size: int = TEXT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.batch_size = int(batch_size)
        self._tower, self._pool, reason = _causal_text_tower(clip_model)
        if reason:
            logger.info("CLIP %s: full 77-token text encoding, because %s", model_name, reason)
        self._digest: Optional[str] = None
        clip_model._register_load_state_dict_pre_hook(self._forget_digest)

    @property
    def truncates(self) -> bool:
        """True when batches run only up to their longest prompt (exact for this tower)."""
        return self._tower is not None

    def _forget_digest(self, *args, **kwargs) -> None:  # noqa: ANN002,ANN003 - torch hook
        self._digest = None

    def weights_digest(self) -> str:
        """sha256 over the text tower's tensors (names, dtypes, shapes, bytes) and tokenizer.

        The text tower is every parameter and buffer of the open_clip model outside ``visual``
        (and the logit scale/bias), i.e. what :meth:`__call__` reads.
        """
        if self._digest is None:
            digest = hashlib.sha256()
            digest.update(f"{self.model_name}|{type(self.tokenizer).__name__}".encode())
            digest.update(f"|truncates={self.truncates}".encode())
            tensors = list(self.clip_model.named_parameters()) + list(
                self.clip_model.named_buffers()
            )
            for name, tensor in sorted(tensors, key=lambda item: item[0]):
                if name.startswith("visual.") or name.startswith("logit_"):
                    continue
                flat = tensor.detach().cpu().contiguous().reshape(-1)
                digest.update(f"|{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(flat.view(torch.uint8).numpy().data)
            self._digest = digest.hexdigest()
        return self._digest

    @property
    def device(self) -> torch.device:
        return next(self.clip_model.parameters()).device

    def tokenize(self, prompts: List[str]) -> Tensor:
        """(P, context_length) token ids, once for all prompts."""
        return self.tokenizer(list(prompts))

    def __call__(self, prompts: List[str]) -> Tensor:
        """(P, D) un-normalised text embeddings, in the order of ``prompts``."""
        if not prompts:
            raise ValueError("no prompts to encode")
        tokens = self.tokenize(prompts)
        lengths = self.token_lengths(tokens)
        order = torch.argsort(lengths, stable=True)  # similar lengths share a batch
        out: Optional[Tensor] = None
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                idx = order[start : start + self.batch_size]
                emb = self.encode_tokens(tokens[idx], int(lengths[idx].max()))
                if out is None:
                    out = emb.new_empty((len(prompts), emb.shape[-1]))
                out[idx.to(out.device)] = emb
        return out

    def token_lengths(self, tokens: Tensor) -> Tensor:
        """(P,) tokens each prompt needs: its pooled (EOT) position + 1; full length on fallback."""
        if self._tower is None:
            return torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
        if self._pool == "eos":
            eos = getattr(self._tower, "text_eos_id", getattr(self._tower, "eos_id", None))
            return (tokens == eos).int().argmax(dim=-1) + 1
        return tokens.argmax(dim=-1) + 1

    def encode_tokens(self, tokens: Tensor, length: Optional[int] = None) -> Tensor:
        """(B, D) embeddings of (B, context_length) tokens, run on the first ``length`` tokens.

        ``length`` must cover every pooled token of the batch (:meth:`token_lengths`); ``None``
        or a fallback tower runs open_clip's ``encode_text`` on all tokens.
        """
        tokens = tokens.to(self.device)
        if self._tower is None or length is None or length >= tokens.shape[1]:
            return self.clip_model.encode_text(tokens, normalize=False)
        t = self._tower
        cast_dtype = t.transformer.get_cast_dtype()
        text = tokens[:, :length]
        x = t.token_embedding(text).to(cast_dtype)
        x = x + t.positional_embedding[:length].to(cast_dtype)
        x = t.transformer(x, attn_mask=t.attn_mask[:length, :length])
        x = t.ln_final(x)
        rows = torch.arange(x.shape[0], device=x.device)
        pooled = x[rows, self.token_lengths(text) - 1]
        proj = t.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
