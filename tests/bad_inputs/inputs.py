"""Small bad and good inputs for the bad-input cases, laid out under a test's ``tmp`` folder.

Everything is made on the fly (random pixels, a 40-row random database, a fake score cache), so
the cases need no dataset and no download.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .harness import REPO

TINY_FCCLIP = str(REPO / "configs/tests/tiny_fcclip_convnext.yaml")
TINY_RETCLIP = str(REPO / "configs/tests/tiny_retclip_convnext.yaml")
TINY_TRAIN = str(REPO / "configs/tests/tiny_fcclip_synthetic.yaml")
TINY_DB = str(REPO / "configs/database/tiny_test.yaml")
TABLE1 = str(REPO / "configs/expected/table1.json")
#: Demo runs need no training set (the tiny configs name the synthetic one).
NO_DATASETS = ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]


def rgb(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def truncated_jpeg(path: Path) -> Path:
    rgb(path.with_suffix(".full.jpg"))
    data = path.with_suffix(".full.jpg").read_bytes()
    path.with_suffix(".full.jpg").unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def gray16(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 4000, 48 * 64).reshape(48, 64).astype(np.uint16)  # dark, never white
    Image.fromarray(ramp).save(path)
    return path


def bad_image_folder(folder: Path) -> None:
    """One good image and four bad ones: truncated, empty, text, 4000x8."""
    rgb(folder / "good.png")
    truncated_jpeg(folder / "truncated.jpg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image\n")
    rgb(folder / "wide.png", width=4000, height=8)


def tiny_database(path: Path, classes=("cat", "cup, mug", "table", "wall")) -> Path:
    from retclip.retrieval import EncoderFingerprint, FeatureDatabase

    db = FeatureDatabase.create(path, EncoderFingerprint.from_open_clip("retclip-tiny-convnext", "", 32),
                                list(classes))
    rng = np.random.default_rng(0)
    db.append(rng.normal(size=(40, 32)).astype(np.float32), np.arange(40) % len(classes),
              [f"img{i}" for i in range(40)])
    return path


def fake_score_cache(folder: Path, truncated_shard: bool = True) -> Path:
    """A score-cache folder whose only shard is cut short (as by a full disk)."""
    from retclip.sweep.cache import SCHEMA_VERSION

    (folder / "shards").mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"schema_version": SCHEMA_VERSION, "fingerprint": {}, "dataset": "retclip_synthetic_test"}))
    if truncated_shard:
        (folder / "shards" / "r0-000000.safetensors").write_bytes(b"\x90\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":")
    return folder


def sweep_rows(path: Path, torn: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"mode": "arithmetic", "alpha": 0.4, "beta": 0.7, "gamma": 0.3, "PQ": 1.0, "mAP": 1.0, "mIoU": 1.0,
           "PQ_seen": 1.0, "PQ_unseen": 1.0}
    text = json.dumps(row) + "\n"
    path.write_text(text + (text[: len(text) // 2] if torn else ""))
    return path
