"""Tiny random-weight Grounding DINO and SAM, built offline in well under a second, so tests of
the proposal sources, the database builder and the training-free model run every real code path.

The tokenizer is a real ``BertTokenizerFast`` over a small vocabulary that keeps the ids of BERT's
special tokens ([CLS] 101, [SEP] 102, "." 1012, "?" 1029; Grounding DINO hard-codes them) and
spells any lower-case word with single-letter word pieces.
"""

from __future__ import annotations

import string
from typing import Dict, Sequence, Tuple

import torch

__all__ = [
    "tiny_bert_vocab",
    "build_tiny_grounding_dino",
    "build_grounding_dino_random",
    "build_tiny_sam",
    "build_sam_vit_b_random",
    "build_tiny_hf_sam",
]

_VOCAB_SIZE = 1100


def tiny_bert_vocab() -> Dict[str, int]:
    """Token -> id of a 1100-entry WordPiece vocabulary with BERT's special-token ids."""
    tokens = [f"[unused{i}]" for i in range(_VOCAB_SIZE)]
    special = {
        0: "[PAD]",
        100: "[UNK]",
        101: "[CLS]",
        102: "[SEP]",
        103: "[MASK]",
        1012: ".",
        1029: "?",
    }
    for i, tok in special.items():
        tokens[i] = tok
    chars = string.ascii_lowercase + string.digits
    for i, c in enumerate(chars):
        tokens[200 + i] = c
        tokens[300 + i] = "##" + c
    for i, c in enumerate(",;:!-'()/&"):
        tokens[400 + i] = c
    return {tok: i for i, tok in enumerate(tokens)}


def build_tiny_grounding_dino(
    *, max_text_len: int = 256, num_queries: int = 16, image_size: int = 64, seed: int = 0
) -> Tuple:
    """A random-weight ``GroundingDinoForObjectDetection`` (tiny Swin + 1-layer BERT, d_model 32)
    and its ``GroundingDinoProcessor``; ``save_pretrained`` both to test loading from a directory.

    Args:
        max_text_len: prompt token limit (small values exercise prompt chunking).
        num_queries: object queries (boxes before thresholds).
        image_size: shortest edge of the processor's resize.
    Returns:
        (model in eval mode, processor).
    """
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    swin = SwinConfig(
        image_size=image_size,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_indices=[2, 3, 4],
    )
    bert = BertConfig(
        vocab_size=_VOCAB_SIZE,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=max(300, max_text_len),
    )
    config = GroundingDinoConfig(
        backbone_config=swin,
        text_config=bert,
        num_queries=num_queries,
        encoder_layers=1,
        decoder_layers=2,  # the box-refinement weight tying needs at least two decoder layers
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        d_model=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=1,
        decoder_n_points=1,
        max_text_len=max_text_len,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    tokenizer = BertTokenizerFast(vocab=tiny_bert_vocab(), do_lower_case=True)
    image_processor = GroundingDinoImageProcessor(
        size={"shortest_edge": image_size, "longest_edge": int(image_size * 1.5)}
    )
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_tiny_sam(*, image_size: int = 64, seed: int = 0) -> torch.nn.Module:
    """A random-weight segment-anything ``Sam`` (1-block ViT, width 32, 8 x 8 embedding)."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(seed)
    patch, dim = 8, 32
    grid = image_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch,
            embed_dim=dim,
            depth=1,
            num_heads=2,
            out_chans=dim,
            window_size=0,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            iou_head_hidden_dim=16,
        ),
    )
    return sam.eval()


def build_tiny_hf_sam(*, image_size: int = 64, seed: int = 0) -> Tuple:
    """A random-weight ``transformers.SamModel`` (1-layer ViT, width 32, 8 x 8 embedding) and a
    ``SamProcessor`` that resizes to the longest side ``image_size`` and pads to a square of it.

    The prompt encoder's ``image_size`` / ``patch_size`` must equal the vision encoder's (its
    ``image_embedding_size`` is their ratio) and the processor's ``longest_edge`` / ``pad_size``
    must equal ``image_size``: the processor rescales boxes into that frame. The vision encoder
    gets ``initializer_range`` 0.02 (its default 1e-10 would give image-independent embeddings).
    ``save_pretrained`` both to test loading from a directory.

    Returns:
        (model in eval mode, processor).
    """
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    patch, dim = 8, 32
    if image_size % patch:
        raise ValueError(f"image_size must be a multiple of {patch}, got {image_size}")
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=dim,
            output_channels=dim,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_dim=2 * dim,
            image_size=image_size,
            patch_size=patch,
            window_size=0,
            global_attn_indexes=[0],
            num_pos_feats=dim // 2,  # the shared positional embedding has 2 * num_pos_feats = dim
            initializer_range=0.02,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=dim, image_size=image_size, patch_size=patch, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=dim,
            mlp_dim=2 * dim,
            num_hidden_layers=1,
            num_attention_heads=2,
            iou_head_hidden_dim=16,
        ),
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    low_res = image_size // 4  # the decoder's masks are 4x the embedding grid
    image_processor = SamImageProcessor(
        size={"longest_edge": image_size},
        pad_size={"height": image_size, "width": image_size},
        mask_size={"longest_edge": low_res},
        mask_pad_size={"height": low_res, "width": low_res},
    )
    return model, SamProcessor(image_processor=image_processor)


def build_sam_vit_b_random(seed: int = 0) -> torch.nn.Module:
    """The real-size SAM ViT-B with random weights (slow tests and speed measurements)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    return sam_model_registry["vit_b"](checkpoint=None).eval()


def build_grounding_dino_random(
    swin: str = "T", *, seed: int = 0, words: Sequence[str] = ()
) -> Tuple:
    """Grounding DINO-T's (``swin="T"``: Swin-T) or -B's (``"B"``: Swin-B, window 12, 384 px)
    architecture (BERT-base text tower, 900 queries, 6+6 layers) with random weights and the
    small offline tokenizer, plus ``words`` as whole-word tokens (so prompts have realistic token
    counts); the processor resizes like the released one (shortest edge 800, longest 1333). For
    slow tests and speed measurements."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    layouts = {
        "T": {},  # SwinConfig's defaults are Swin-T
        "B": dict(
            embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
            image_size=384,
        ),
    }
    if swin not in layouts:
        raise KeyError(f"unknown Swin layout {swin!r}; valid: {sorted(layouts)}")
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(out_indices=[2, 3, 4], **layouts[swin]),
        text_config=BertConfig(),
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    vocab = tiny_bert_vocab()
    for word in sorted(set(words) - set(vocab)):
        vocab[word] = len(vocab)
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    return model, GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer
    )
