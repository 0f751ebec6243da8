"""A tiny end-to-end example without downloads: scikit-image's public-domain photos, a feature
database built from them by the real builder (tiny random-weight Grounding DINO, SAM and CLIP),
and the config overrides that make the tiny RetCLIP search it.

Used by ``scripts/try_demo.sh`` and the demo tests. Predictions are meaningless (random weights);
the point is to see every part of the pipeline work on a laptop in a minute.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["EXAMPLE_PHOTOS", "EXAMPLE_LABELS", "example_photo", "prepare_tiny_example"]

#: skimage.data photos bundled with scikit-image (public domain), and their image-level labels.
EXAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea")
EXAMPLE_LABELS: Dict[str, List[str]] = {
    "astronaut": ["person", "flag", "wall"],
    "coffee": ["cup", "table", "wall"],
    "chelsea": ["cat", "wall"],
}
#: Test-time short side of the tiny example (small: the demo must run on 2 CPU cores).
TINY_MIN_SIZE = 128
TINY_MAX_SIZE = 256


def example_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of one bundled photo (read from scikit-image at run time)."""
    import skimage.data

    if name not in EXAMPLE_PHOTOS:
        raise ValueError(f"unknown example photo {name!r}; valid: {EXAMPLE_PHOTOS}")
    return getattr(skimage.data, name)()


def _save_photos(folder: Path, size: int) -> Path:
    from PIL import Image

    images = folder / "photos"
    images.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLE_PHOTOS:
        image = Image.fromarray(example_photo(name))
        image.thumbnail((size, size))
        image.save(images / f"{name}.png")
    (folder / "labels.json").write_text(
        json.dumps({f"{k}.png": v for k, v in EXAMPLE_LABELS.items()}, indent=1)
    )
    return images


def _save_tiny_models(folder: Path) -> Dict[str, str]:
    import open_clip
    import torch

    from retclip.proposals.testing import build_tiny_grounding_dino

    clip_file = folder / "tiny_clip.pt"
    if not clip_file.is_file():
        torch.manual_seed(0)
        torch.save(open_clip.create_model("retclip-tiny-convnext").state_dict(), clip_file)
    gdino_dir = folder / "tiny_grounding_dino"
    if not (gdino_dir / "config.json").is_file():
        model, processor = build_tiny_grounding_dino(image_size=128)
        model.save_pretrained(gdino_dir)
        processor.save_pretrained(gdino_dir)
    return {"clip": str(clip_file), "grounding_dino": str(gdino_dir)}


def model_overrides(clip_file: str) -> List[str]:
    """KEY VALUE overrides that make configs/tests/tiny_*.yaml use the example's CLIP."""
    return [
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        "MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS", clip_file,
        "INPUT.MIN_SIZE_TEST", str(TINY_MIN_SIZE), "INPUT.MAX_SIZE_TEST", str(TINY_MAX_SIZE),
    ]


def prepare_tiny_example(folder: str, photo_size: int = 256) -> Dict[str, str]:
    """Photos, tiny models and a database under ``folder`` (re-running reuses what exists).

    Returns:
        {"photos", "clip", "grounding_dino", "database"}: paths.
    """
    from retclip.database_builder import run_build

    root = Path(folder).expanduser().resolve()
    photos = _save_photos(root, photo_size)
    models = _save_tiny_models(root)
    database = root / "database"
    config = Path(__file__).resolve().parents[2] / "configs" / "database" / "tiny_test.yaml"
    run_build(str(config), [
        *model_overrides(models["clip"]),
        "DATABASE_BUILD.OUTPUT_DIR", str(database),
        "DATABASE_BUILD.PROPOSALS", "GroundingDinoSamProposals",
        "DATABASE_BUILD.SOURCE.TYPE", "folder",
        "DATABASE_BUILD.SOURCE.IMAGE_DIR", str(photos),
        "DATABASE_BUILD.SOURCE.LABELS_FILE", str(root / "labels.json"),
        "DATABASE_BUILD.GROUNDING_DINO.MODEL", models["grounding_dino"],
        "DATABASE_BUILD.GROUNDING_DINO.BOX_THRESHOLD", "0.0",
        "DATABASE_BUILD.GROUNDING_DINO.TEXT_THRESHOLD", "0.0",
        "DATABASE_BUILD.SAM.MODEL_TYPE", "tiny",
    ], progress=False)
    return {"photos": str(photos), "database": str(database), **models}
