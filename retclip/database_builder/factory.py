"""Builds the database builder and its models from a config (``DATABASE_BUILD`` + the model's
CLIP: ``MODEL.FC_CLIP`` and the ``INPUT`` test resize for FC-CLIP/RetCLIP, ``MODEL.TRAINING_FREE``
for the training-free variant, so database features and retrieval keys share one space)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

from retclip.proposals import (
    GroundingDinoDetector,
    GroundingDinoSamProposals,
    GroundTruthProposals,
    ProposalSource,
    build_box_segmenter,
)

from .builder import DatabaseBuilder
from .counting import ForwardCounter
from .encoder import ClipSegmentEncoder
from .parts import part_dir

logger = logging.getLogger(__name__)

__all__ = [
    "build_encoder",
    "build_proposals",
    "watch_models",
    "build_database_builder",
    "setup_build_config",
    "run_build",
]

_PROPOSALS = ("GroundingDinoSamProposals", "GroundTruthProposals")


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
    """``DATABASE_BUILD.PROPOSALS``: Grounding DINO -> SAM, or ground-truth masks."""
    b = cfg.DATABASE_BUILD
    if b.PROPOSALS == "GroundTruthProposals":
        return GroundTruthProposals()
    if b.PROPOSALS != "GroundingDinoSamProposals":
        raise ValueError(
            f"DATABASE_BUILD.PROPOSALS must be one of {list(_PROPOSALS)}, got {b.PROPOSALS!r}"
        )
    device = cfg.MODEL.DEVICE
    detector = GroundingDinoDetector.from_pretrained(
        b.GROUNDING_DINO.MODEL,
        device=device,
        box_threshold=b.GROUNDING_DINO.BOX_THRESHOLD,
        text_threshold=b.GROUNDING_DINO.TEXT_THRESHOLD,
        nms_threshold=b.GROUNDING_DINO.NMS_THRESHOLD,
        max_detections=b.GROUNDING_DINO.MAX_DETECTIONS,
        max_images_per_batch=b.BATCH_SIZE,
    )
    segmenter = build_box_segmenter(b.SAM, device=device, max_images_per_batch=b.BATCH_SIZE)
    return GroundingDinoSamProposals(detector=detector, segmenter=segmenter)


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
            dict(b.GROUNDING_DINO) if b.PROPOSALS == "GroundingDinoSamProposals" else None
        ),
        "sam": (
            {
                "backend": b.SAM.BACKEND,
                "model_type": b.SAM.MODEL_TYPE,
                "checkpoint": b.SAM.CHECKPOINT,
                "hf_model": b.SAM.HF_MODEL,
                "multimask": b.SAM.MULTIMASK,
            }
            if b.PROPOSALS == "GroundingDinoSamProposals"
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
        output_dir=part_dir(b.OUTPUT_DIR, b.ARRAY_JOB.SHARD_ID, b.ARRAY_JOB.NUM_SHARDS),
        shard_id=b.ARRAY_JOB.SHARD_ID,
        num_shards=b.ARRAY_JOB.NUM_SHARDS,
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
    """Frozen config: defaults of every RetCLIP key + ``config_file`` + KEY VALUE ``opts``."""
    from detectron2.config import get_cfg

    from retclip.config import add_retclip_config

    cfg = get_cfg()
    add_retclip_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


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
