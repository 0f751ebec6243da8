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
_ROOT = Path(__file__).resolve().parents[2]
#: The tiny model the example runs.
TINY_MODEL_CONFIG = _ROOT / "configs" / "tests" / "tiny_retclip_convnext.yaml"


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
    from retclip.testing.clip_configs import register_tiny_clip_models

    register_tiny_clip_models()  # the tiny architectures are not in open_clip's registry otherwise
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


def _save_tiny_model(folder: Path, clip_file: str) -> str:
    """A detectron2 checkpoint of the tiny RetCLIP (seed 0, so every process gets the same model).

    Its weights are random except one: the void embedding points away from the decoder's mean
    class embedding on the example photos. An untrained model otherwise calls every query void
    and shows nothing; with it, queries take classes and the ensemble weights visibly matter.
    """
    import torch
    import torch.nn.functional as F
    from detectron2.modeling import build_model

    from retclip.config import load_config
    from retclip.reranking import model_input

    path = folder / "tiny_retclip.pth"
    if path.is_file():
        return str(path)
    cfg = load_config(str(TINY_MODEL_CONFIG), model_overrides(clip_file), freeze=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    names = sorted({n for labels in EXAMPLE_LABELS.values() for n in labels})
    model.set_vocabulary(names, seen=[False] * len(names))
    class_embed = dict(model.named_modules())["sem_seg_head.predictor.class_embed"]
    seen: List[torch.Tensor] = []
    hook = class_embed.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            for name in EXAMPLE_PHOTOS:
                model([model_input(example_photo(name), TINY_MIN_SIZE, TINY_MAX_SIZE)])
    finally:
        hook.remove()
    with torch.no_grad():
        mean = torch.cat([F.normalize(e.flatten(0, -2), dim=-1) for e in seen]).mean(0, keepdim=True)
        model.void_embedding.weight.copy_(-mean)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": state}, path)
    return str(path)


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
        {"photos", "clip", "grounding_dino", "database", "weights"}: paths (weights: the
        tiny RetCLIP checkpoint for MODEL.WEIGHTS).
    """
    from retclip.database_builder import run_build

    root = Path(folder).expanduser().resolve()
    photos = _save_photos(root, photo_size)
    models = _save_tiny_models(root)
    database = root / "database"
    config = _ROOT / "configs" / "database" / "tiny_test.yaml"
    run_build(str(config), [
        *model_overrides(models["clip"]),
        "DATABASE_BUILD.OUTPUT_DIR", str(database),
        "DATABASE_BUILD.PROPOSALS", "grounding_dino_sam",
        "DATABASE_BUILD.SOURCE.TYPE", "folder",
        "DATABASE_BUILD.SOURCE.IMAGE_DIR", str(photos),
        "DATABASE_BUILD.SOURCE.LABELS_FILE", str(root / "labels.json"),
        "DATABASE_BUILD.GROUNDING_DINO.MODEL", models["grounding_dino"],
        "DATABASE_BUILD.GROUNDING_DINO.BOX_THRESHOLD", "0.0",
        "DATABASE_BUILD.GROUNDING_DINO.TEXT_THRESHOLD", "0.0",
        "DATABASE_BUILD.SAM.MODEL_TYPE", "tiny",
    ], progress=False)
    models["weights"] = _save_tiny_model(root, models["clip"])
    return {"photos": str(photos), "database": str(database), **models}
