"""tools/inspect_database.py: inspect, add (build into an existing database), remove, merge,
thumbnails; on small ground-truth-mask databases of the synthetic train split."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retclip.database_builder import run_build
from retclip.retrieval import FeatureDatabase
from retclip.utils.cli import run_tool

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "database" / "tiny_test.yaml")
TOOL = runpy.run_path(str(REPO / "tools" / "inspect_database.py"), run_name="inspect_database")


def _tool(argv):
    """The tool's exit code as the command line gives it (user mistakes: 2)."""
    return run_tool(TOOL["main"], argv)


def _opts(out, clip_file, max_images, classes=None):
    opts = [
        "DATABASE_BUILD.OUTPUT_DIR",
        str(out),
        "DATABASE_BUILD.SOURCE.DATASET",
        "retclip_synthetic_train",
        "MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS",
        clip_file,
        "INPUT.MIN_SIZE_TEST",
        "96",
        "DATABASE_BUILD.SOURCE.MAX_IMAGES",
        str(max_images),
    ]
    if classes:
        opts += ["DATABASE_BUILD.SOURCE.CLASSES", json.dumps(classes)]
    return opts


@pytest.fixture(scope="module")
def small_db(tmp_path_factory, tiny_clip_file):
    out = tmp_path_factory.mktemp("m") / "db"
    report = run_build(
        CONFIG, _opts(out, tiny_clip_file, 4, ["person", "car", "sky"]), progress=False
    )
    assert report["images"]["ok"] == 4
    return out


def test_inspect_prints_counts(small_db, capsys):
    assert _tool(["inspect", str(small_db)]) == 0
    text = capsys.readouterr().out
    db = FeatureDatabase.open(small_db)
    assert "retclip-tiny-convnext/sha256:" in text
    for name, count in zip(db.class_names, db.class_counts):
        assert f"{name}" in text and str(count) in text
    assert _tool(["inspect", str(small_db), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_vectors"] == len(db) and info["embed_dim"] == 32 and info["disk_bytes"] > 0


def test_remove_and_merge(small_db, tmp_path):
    db = FeatureDatabase.open(small_db)
    counts = dict(zip(db.class_names, db.class_counts))
    assert (
        _tool(
            ["remove", str(small_db), "--classes", "sky", "--output", str(tmp_path / "nosky")]
        )
        == 0
    )
    nosky = FeatureDatabase.open(tmp_path / "nosky")
    assert "sky" not in nosky.class_names and len(nosky) == len(db) - counts["sky"]
    assert (
        _tool(
            ["merge", str(small_db), str(tmp_path / "nosky"), "--output", str(tmp_path / "both")]
        )
        == 0
    )
    both = FeatureDatabase.open(tmp_path / "both")
    assert len(both) == len(db) + len(nosky)
    assert (
        _tool(
            ["remove", str(small_db), "--classes", "unicorn", "--output", str(tmp_path / "x")]
        )
        == 2
    )


def test_thumbnails_grid(small_db, tmp_path):
    db = FeatureDatabase.open(small_db)
    name = db.class_names[int(np.argmax(db.class_counts))]
    out = tmp_path / "grid.png"
    assert (
        _tool(
            [
                "thumbnails",
                str(small_db),
                "--class",
                name,
                "--output",
                str(out),
                "--size",
                "32",
                "--max",
                "4",
            ]
        )
        == 0
    )
    grid = np.asarray(Image.open(out).convert("RGB"))
    n = min(4, max(db.class_counts))
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    assert grid.shape[1] == cols * (32 + 4)  # cells of --size plus a gutter
    assert grid.shape[0] % rows == 0 and grid.shape[0] // rows > 3 * 14 + 8  # crop + 3 caption lines
    assert grid.std() > 0  # real crops, not an empty canvas
    # the mask outline (pure red) and black caption text under the first crop
    assert ((grid == (255, 0, 0)).all(-1)).any()
    cell = grid[: grid.shape[0] // rows, :32]
    assert (cell[-(3 * 14 + 8) :].max(-1) < 60).any()
    assert (
        _tool(["thumbnails", str(small_db), "--class", "unicorn", "--output", str(out)]) == 2
    )


def test_add_images_and_classes(small_db, tmp_path, tiny_clip_file):
    import shutil

    target = tmp_path / "db"
    shutil.copytree(small_db, target)
    before = FeatureDatabase.open(target)
    rows_before = before.load_all()
    config = ["add", str(target), CONFIG, *_opts(tmp_path / "ignored", tiny_clip_file, 6)]
    assert _tool(config) == 0
    after = FeatureDatabase.open(target)
    assert set(before.class_names) < set(after.class_names)  # new classes joined
    ids_after = set(after.load_all().image_ids)
    assert set(rows_before.image_ids) < ids_after and len(ids_after) <= 6
    assert len(after) > len(before)
    # Another encoder is refused, naming both fingerprints.
    other = [
        "add",
        str(target),
        CONFIG,
        *_opts(tmp_path / "i", "", 6),
        "MODEL.FC_CLIP.CLIP_MODEL_NAME",
        "retclip-tiny-resnet",
    ]
    assert _tool(other) == 2
