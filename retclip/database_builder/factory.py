"""Builds the database builder and its models from a config.

A database config holds ``DATABASE_BUILD`` (and at most ``MODEL.DEVICE``) and names the model
config it serves in ``DATABASE_BUILD.MODEL_CONFIG``; every embedding setting (CLIP, resize,
mean/std, padding, dense map) comes from that model config, and the rows are made by the model's
own :mod:`retclip.modeling.segment_embedding` recipe, so rows and retrieval keys share one space.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple


from retclip.utils.cli import UserError
from retclip.proposals import GroundingDinoSamProposals, ProposalSource, build_proposal_source

from retclip.modeling.segment_embedding import SegmentEmbedding, build_segment_embedding

from .builder import DatabaseBuilder
from .counting import ForwardCounter
from .parts import part_dir
from .settings import build_settings

logger = logging.getLogger(__name__)

__all__ = [
    "build_encoder",
    "build_proposals",
    "watch_models",
    "build_database_builder",
    "setup_build_config",
    "read_database_config",
    "run_build",
]


def build_encoder(cfg) -> SegmentEmbedding:
    """The model's segment-embedding recipe with its CLIP on ``MODEL.DEVICE``: the dense CLIP ViT
    for "TrainingFreeRetCLIP", else FC-CLIP's convolutional CLIP."""
    return build_segment_embedding(cfg)


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
    counter: ForwardCounter, encoder: SegmentEmbedding, proposals: ProposalSource
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
        "model_config": b.MODEL_CONFIG,
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
        settings=build_settings(cfg),
        counter=counter,
        progress=progress,
    )


#: What a database config may set besides ``DATABASE_BUILD``: the device is not an embedding setting.
_DATABASE_CONFIG_MODEL_KEYS = ("DEVICE",)


def _read_yaml_chain(path: Path) -> Dict[str, Any]:
    """One database YAML with its ``_BASE_`` chain (safe loader), ``DATABASE_BUILD.MODEL_CONFIG``
    made absolute relative to the file that sets it; later files override earlier ones."""
    from retclip.config_file import merge_yaml_mappings, read_yaml_mapping

    data = read_yaml_mapping(str(path))
    model_config = (data.get("DATABASE_BUILD") or {}).get("MODEL_CONFIG")
    if model_config:
        data["DATABASE_BUILD"]["MODEL_CONFIG"] = str((path.parent / model_config).resolve())
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    merged = _read_yaml_chain((path.parent / os.path.expanduser(base)).resolve())
    merge_yaml_mappings(merged, data, str(path))
    return merged


def read_database_config(config_file: str) -> Tuple[Dict[str, Any], str]:
    """(the database config's keys, the absolute path of the model config it serves).

    Raises:
        ValueError: the file sets a key outside ``DATABASE_BUILD`` and ``MODEL.DEVICE`` (every
            embedding setting belongs to the model config), or names no model config.
    """
    path = Path(config_file).expanduser().resolve()
    data = _read_yaml_chain(path)
    extra = [k for k in data if k not in ("DATABASE_BUILD", "MODEL")]
    extra += [f"MODEL.{k}" for k in data.get("MODEL") or {} if k not in _DATABASE_CONFIG_MODEL_KEYS]
    if extra:
        raise UserError(
            f"{config_file} sets {extra}: a database config holds DATABASE_BUILD (and MODEL.DEVICE) "
            "only; the CLIP, resize, mean/std and every other model setting come from the model "
            "config named by DATABASE_BUILD.MODEL_CONFIG"
        )
    model_config = (data.get("DATABASE_BUILD") or {}).get("MODEL_CONFIG", "")
    return data, model_config


def setup_build_config(config_file: str, opts: Sequence[str] = ()):
    """Frozen config: every RetCLIP default + the model config named by the database config's
    ``DATABASE_BUILD.MODEL_CONFIG`` (or by ``opts``) + the database config + KEY VALUE ``opts``.

    A relative MODEL_CONFIG resolves against the YAML file that sets it (on the command line:
    against the current directory, like ``--config-file``).
    """
    from detectron2.config import CfgNode

    from retclip.config_file import load_config, merge_overrides
    from retclip.utils.device import resolve_device

    data, model_config = read_database_config(config_file) if config_file else ({}, "")
    opts = list(opts)
    keys = opts[0::2]
    if "DATABASE_BUILD.MODEL_CONFIG" in keys:
        index = 2 * keys.index("DATABASE_BUILD.MODEL_CONFIG") + 1
        model_config = opts[index] = str(Path(opts[index]).expanduser().resolve())
    if not model_config:
        raise UserError(
            f"{config_file or 'the database build'}: DATABASE_BUILD.MODEL_CONFIG is empty; name "
            "the model config whose retrieval keys this database serves"
        )
    if not os.path.isfile(model_config):
        raise UserError(f"DATABASE_BUILD.MODEL_CONFIG of {config_file}: no file {model_config}")
    cfg = load_config(model_config, freeze=False)
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (KeyError, ValueError) as e:  # yacs: unknown key or wrong type
        raise UserError(f"{config_file}: {e.args[0] if e.args else e}") from e
    merge_overrides(cfg, opts)
    resolve_device(cfg)  # the tools' one CPU fallback
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
