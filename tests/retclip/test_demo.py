"""tools/demo.py on CPU with random weights: pictures of the right size and segment JSON with the
neighbours that voted; vocabulary parsing and bad input."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from retclip.demo import list_images, parse_vocabulary
from retclip.retrieval import EncoderFingerprint, FeatureDatabase

ROOT = Path(__file__).resolve().parents[2]


def _demo_main():
    spec = importlib.util.spec_from_file_location("retclip_tools_demo", ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_parse_vocabulary_from_string_and_file(tmp_path):
    assert parse_vocabulary("cat, sofa;couch , lamp") == ["cat", "sofa, couch", "lamp"]
    f = tmp_path / "classes.txt"
    f.write_text("# comment\n1:wall,brick wall\nsky\n")
    assert parse_vocabulary(str(f)) == ["wall, brick wall", "sky"]
    with pytest.raises(ValueError, match="twice"):
        parse_vocabulary("cat, cat")
    with pytest.raises(ValueError, match="no class"):
        parse_vocabulary(" , ")


def test_list_images_names_a_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        list_images([str(tmp_path / "nope.jpg")])


@pytest.mark.slow
def test_demo_writes_pictures_and_explanations(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(skimage.data.coffee()).resize((120, 80)).save(images / "coffee.png")
    Image.fromarray(skimage.data.chelsea()).resize((90, 70)).save(images / "chelsea.jpg")
    classes = ["cat", "cup, mug", "table", "wall"]
    db = FeatureDatabase.create(tmp_path / "db", EncoderFingerprint.from_open_clip("retclip-tiny-convnext", "", 32),
                                classes)
    rng = np.random.default_rng(0)
    db.append(rng.normal(size=(40, 32)).astype(np.float32), np.arange(40) % 4, [f"img{i}" for i in range(40)])
    out = tmp_path / "out"
    code = _demo_main()([
        "--config-file", str(ROOT / "configs/tests/tiny_retclip_convnext.yaml"),
        "--input", str(images), "--vocabulary", "cat, cup;mug, table, wall",
        "--database", str(tmp_path / "db"), "--output", str(out),
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
    ])
    assert code == 0
    for stem, size in (("coffee", (120, 80)), ("chelsea", (90, 70))):
        width, height = Image.open(out / f"{stem}_panoptic.png").size
        assert width > size[0] and height >= size[1]  # the picture, then its legend on the right
        segments = json.loads((out / f"{stem}_segments.json").read_text())["segments"]
        for s in segments:
            assert s["class"] in classes and 0.0 <= s["score"] <= 1.0 and s["area"] > 0
            for n in s["neighbours"]:
                assert n["image_id"].startswith("img") and -1.0 <= n["similarity"] <= 1.0
