"""Builds the database builder and its models from a config (``DATABASE_BUILD`` + the model's
CLIP: ``MODEL.FC_CLIP`` and the ``INPUT`` test resize for FC-CLIP/RetCLIP, ``MODEL.TRAINING_FREE``
for the training-free variant, so database features and retrieval keys share one space)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

from retclip.proposals import GroundingDinoSamProposals, ProposalSource, build_proposal_source

from .builder import DatabaseBuilder
from .counting import ForwardCounter
from .encoder import ClipSegmentEncoder

logger = logging.getLogger(__name__)

__all__ = [
    "build_encoder",
    "build_proposals",
    "watch_models",
    "build_database_builder",
    "setup_build_config",
    "run_build",
]


def build_encoder(cfg):
    """The model's CLIP as a segment encoder, on ``MODEL.DEVICE``: the dense CLIP ViT of
    ``MODEL.TRAINING_FREE`` when ``MODEL.META_ARCHITECTURE`` is "TrainingFreeRetCLIP", else the
    convolutional CLIP backbone of ``MODEL.FC_CLIP``."""
    if cfg.MODEL.META_ARCHITECTURE == "TrainingFreeRetCLIP":
        from retclip.modeling.vit_dense import DenseViTSegmentEncoder

        return DenseViTSegmentEncoder.from_config(cfg).to(cfg.MODEL.DEVICE).eval()
    encoder = ClipSegmentEncoder.from_names(
        cfg.MODEL.FC_CLIP.CLIP_MODEL_NAME,
        cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS,
        min_size=cfg.INPUT.MIN_SIZE_TEST,
        max_size=cfg.INPUT.MAX_SIZE_TEST,
        size_divisibility=max(cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY, 1),
    )
    return encoder.to(cfg.MODEL.DEVICE).eval()


def build_proposals(cfg) -> ProposalSource:
    """``DATABASE_BUILD.PROPOSALS``, a name of :data:`retclip.proposals.PROPOSAL_REGISTRY` (the
    training-free model's names), built from ``DATABASE_BUILD.SAM`` / ``GROUNDING_DINO``."""
    b = cfg.DATABASE_BUILD
    return build_proposal_source(
        b.PROPOSALS,
        b.SAM,
        b.GROUNDING_DINO,
        device=cfg.MODEL.DEVICE,
        batch_size=b.BATCH_SIZE,
        key="DATABASE_BUILD.PROPOSALS",
    )


def watch_models(
    counter: ForwardCounter, encoder: ClipSegmentEncoder, proposals: ProposalSource
) -> None:
    """Hook the per-image modules: CLIP image tower, Grounding DINO vision/text backbones, SAM
    image encoder and mask decoder."""
    counter.watch("clip.image", encoder.image_module)
    if isinstance(proposals, GroundingDinoSamProposals):
        counter.watch("grounding_dino.calls", proposals.detector.model)
        counter.watch("grounding_dino.image", proposals.detector.backbone)
        counter.watch("grounding_dino.text_prompts", proposals.detector.model.model.text_backbone)
        counter.watch("sam.image", proposals.segmenter.image_encoder)
        counter.watch("sam.mask_decoder_calls", proposals.segmenter.mask_decoder)


def _build_args(cfg) -> Dict[str, Any]:
    b = cfg.DATABASE_BUILD
    return {
        "proposals": b.PROPOSALS,
        "shard_size": b.SHARD_SIZE,
        "batch_size": b.BATCH_SIZE,
        "grounding_dino": (
            dict(b.GROUNDING_DINO) if b.PROPOSALS == "grounding_dino_sam" else None
        ),
        "sam": (
            {k.lower(): v for k, v in b.SAM.items()}
            if b.PROPOSALS in ("grounding_dino_sam", "sam_grid")
            else None
        ),
        "clip_input": {"min_size": cfg.INPUT.MIN_SIZE_TEST, "max_size": cfg.INPUT.MAX_SIZE_TEST},
        "source": {
            k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in b.SOURCE.items()
        },
    }


def build_database_builder(cfg, progress: bool = True) -> DatabaseBuilder:
    """A :class:`DatabaseBuilder` with models built from ``cfg`` and forward counting on."""
    encoder = build_encoder(cfg)
    proposals = build_proposals(cfg)
    counter = ForwardCounter()
    watch_models(counter, encoder, proposals)
    b = cfg.DATABASE_BUILD
    return DatabaseBuilder(
        encoder=encoder,
        proposals=proposals,
        output_dir=b.OUTPUT_DIR,
        shard_size=b.SHARD_SIZE,
        batch_size=b.BATCH_SIZE,
        dtype=b.DTYPE,
        max_shards_per_run=b.MAX_SHARDS_PER_RUN,
        shard_delay_s=b.SHARD_DELAY_S,
        build_args=_build_args(cfg),
        counter=counter,
        progress=progress,
    )


def setup_build_config(config_file: str, opts: Sequence[str] = ()):
    """Frozen config: defaults of every RetCLIP key + ``config_file`` + KEY VALUE ``opts``, CPU
    fallback applied (the tools' one loader: mistakes are UserErrors naming the file and key)."""
    from retclip.utils.tool_config import load_tool_config

    return load_tool_config(config_file, opts)


def run_build(
    config_file: str, opts: Sequence[str] = (), progress: bool = True
) -> Optional[Dict[str, Any]]:
    """One process's part of a build (the ``main`` that :func:`launch_build` runs on every rank).

    Returns the build report on rank 0 when the database is complete, else None.
    """
    from .distributed import rank_and_world_size
    from .sources import build_source

    cfg = setup_build_config(config_file, opts)
    rank, world_size = rank_and_world_size()
    builder = build_database_builder(cfg, progress=progress)
    return builder.build(build_source(cfg), rank=rank, world_size=world_size)
