"""The tiny database build the tests share: tiny ConvNeXt CLIP, ground-truth masks of the
synthetic train split, ``configs/database/tiny_test.yaml`` plus a few overrides."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence

__all__ = ["TINY_BUILD_CONFIG", "tiny_build_opts", "tiny_build_cfg"]

#: The build config of the tests (resolved from the package, not the current folder).
TINY_BUILD_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "database" / "tiny_test.yaml"


def tiny_build_opts(out: Any, clip_file: str, *, max_images: int = 8, **extra: Any) -> List[str]:
    """KEY VALUE overrides: output folder, saved tiny CLIP weights, 96-pixel CLIP input,
    ``max_images`` images in one-image chunks; ``extra`` maps further keys to values."""
    opts = {
        "DATABASE_BUILD.OUTPUT_DIR": str(out),
        "DATABASE_BUILD.SOURCE.DATASET": "retclip_synthetic_train",
        "MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS": clip_file,
        "INPUT.MIN_SIZE_TEST": "96",
        "DATABASE_BUILD.SOURCE.MAX_IMAGES": str(max_images),
        "DATABASE_BUILD.SHARD_SIZE": "1",
    }
    opts.update({k: str(v) for k, v in extra.items()})
    return [x for kv in opts.items() for x in kv]


def tiny_build_cfg(opts: Sequence[str]):
    """The tiny build config (with the model config it names) and ``opts`` merged, not frozen."""
    from retclip.database_builder import setup_build_config

    cfg = setup_build_config(str(TINY_BUILD_CONFIG), list(opts))
    cfg.defrost()
    return cfg
