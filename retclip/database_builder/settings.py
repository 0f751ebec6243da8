"""The settings that shape a database's rows, recorded at a build's first start and checked on
every resume, so that one database never mixes shards of two recipes.

A resume re-derives the chunk list from ``SHARD_SIZE`` and the source, and keeps every finished
shard: another ``SHARD_SIZE`` would skip or repeat images, another ``DTYPE``, model or threshold
would mix rows of two kinds under a manifest that names one. Recorded: the whole
``DATABASE_BUILD`` block except the keys that only steer a run (:data:`RUN_ONLY_KEYS`), the
``INPUT`` test resize, and the ``MODEL`` keys the segment encoder is built from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from retclip.retrieval import FeatureDatabase
from retclip.retrieval.safedir import DatabaseLockedError, holder_problem

logger = logging.getLogger(__name__)

__all__ = ["RUN_ONLY_KEYS", "build_settings", "settings_changes", "check_resume", "preflight"]

#: DATABASE_BUILD keys that may differ between the runs of one build: where the database goes,
#: how much of it one run builds, and how many images share a forward (rows agree up to rounding).
RUN_ONLY_KEYS = (
    "DATABASE_BUILD.OUTPUT_DIR",
    "DATABASE_BUILD.MAX_SHARDS_PER_RUN",
    "DATABASE_BUILD.SHARD_DELAY_S",
    "DATABASE_BUILD.BATCH_SIZE",
)

#: MODEL/INPUT keys read by :func:`retclip.database_builder.factory.build_encoder`, per encoder.
_ENCODER_KEYS = {
    "TrainingFreeRetCLIP": (
        "MODEL.META_ARCHITECTURE", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD",
        "MODEL.TRAINING_FREE.CLIP_MODEL_NAME", "MODEL.TRAINING_FREE.CLIP_PRETRAINED_WEIGHTS",
        "MODEL.TRAINING_FREE.DENSE_MODE", "MODEL.TRAINING_FREE.SLIDE_WINDOW",
        "MODEL.TRAINING_FREE.SLIDE_STRIDE", "MODEL.TRAINING_FREE.CLIP_SHORT_SIDE",
    ),
    "": (
        "MODEL.META_ARCHITECTURE", "MODEL.FC_CLIP.CLIP_MODEL_NAME",
        "MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS", "MODEL.MASK_FORMER.SIZE_DIVISIBILITY",
        "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST",
    ),
}

_UNSET = "<not recorded>"


def _flatten(node: Any, prefix: str, out: Dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key in sorted(node):
            _flatten(node[key], f"{prefix}.{key}" if prefix else key, out)
    else:
        out[prefix] = node


def _lookup(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def build_settings(cfg) -> Dict[str, Any]:
    """Flat ``KEY -> value`` (JSON values) of every setting of ``cfg`` that shapes the rows."""
    flat: Dict[str, Any] = {}
    _flatten(cfg.DATABASE_BUILD, "DATABASE_BUILD", flat)
    arch = cfg.MODEL.META_ARCHITECTURE
    for key in _ENCODER_KEYS.get(arch, _ENCODER_KEYS[""]):
        flat[key] = _lookup(cfg, key)
    for key in RUN_ONLY_KEYS:
        flat.pop(key, None)
    return json.loads(json.dumps(flat, default=list))


def settings_changes(recorded: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """``KEY: old -> new`` for every key whose value differs (or exists on one side only)."""
    keys = sorted(set(recorded) | set(current))
    return [
        f"{k}: {recorded.get(k, _UNSET)!r} (first run) -> {current.get(k, _UNSET)!r} (now)"
        for k in keys
        if recorded.get(k, _UNSET) != current.get(k, _UNSET)
    ]


def check_resume(db: FeatureDatabase, settings: Dict[str, Any]) -> None:
    """Raise ValueError, naming each changed key with its old and new value, if the build of
    ``db`` was started with other settings than ``settings``."""
    recorded: Optional[Dict[str, Any]] = db.manifest.get("build_args", {}).get("settings")
    if recorded is None:
        raise ValueError(
            f"{db.path} records no build settings (made by merge/remove or an older version), so "
            "a build cannot safely continue there; build into a new DATABASE_BUILD.OUTPUT_DIR"
        )
    changes = settings_changes(recorded, settings)
    if changes:
        raise ValueError(
            f"{db.path} was started with other settings; a resume must keep them (or build into a "
            f"new DATABASE_BUILD.OUTPUT_DIR): " + "; ".join(changes)
        )


def preflight(cfg) -> None:
    """Checks of a build's output folder that need no model: another writer's lock and changed
    settings. Tools call it before starting workers; the builder repeats both under its lock."""
    out = Path(cfg.DATABASE_BUILD.OUTPUT_DIR).expanduser()
    if not cfg.DATABASE_BUILD.OUTPUT_DIR:
        raise ValueError("DATABASE_BUILD.OUTPUT_DIR is empty")
    problem = holder_problem(out)
    if problem is not None:
        raise DatabaseLockedError(problem)
    if (out / "manifest.json").is_file():
        check_resume(FeatureDatabase.open(out), build_settings(cfg))
