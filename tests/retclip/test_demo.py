"""tools/demo.py on CPU with random weights: pictures of the right size and segment JSON with the
neighbours that voted; vocabulary parsing and bad input."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from retclip.demo_inputs import VocabularyError, list_images, output_stems, parse_vocabulary
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


@pytest.mark.parametrize("spec,culprits", [
    ("cat, Cat", ["'Cat'", "'cat'"]),
    ("cat;kitty, kitty", ["'kitty'", "'cat, kitty'"]),
    ("sofa;couch, lamp, COUCH ;settee", ["'COUCH'", "'sofa, couch'"]),
])
def test_vocabulary_names_shared_by_two_classes_are_refused(spec, culprits):
    with pytest.raises(VocabularyError, match="twice") as e:
        parse_vocabulary(spec)
    for name in culprits:
        assert name in str(e.value)


def test_vocabulary_that_looks_like_a_file_must_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in ("my_clases.txt", "labels/classes", "classes.CSV"):
        with pytest.raises(VocabularyError, match="does not exist") as e:
            parse_vocabulary(spec)
        assert spec in str(e.value)
    (tmp_path / "my_classes.txt").write_text("cat\nsofa;couch\n")  # ';' is not a file separator
    assert parse_vocabulary("my_classes.txt") == ["cat", "sofa;couch"]
    # same synonym twice within one class is merged, not an error
    assert parse_vocabulary("cat;Cat, dog") == ["cat", "dog"]


def test_output_names_keep_the_relative_path(tmp_path):
    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "deep" / "x.jpg"
    same_stem = [tmp_path / "a" / "y.jpg", tmp_path / "a" / "y.png"]
    stems = output_stems([a, b, *same_stem])
    assert stems[a.resolve()] == "a/x" and stems[b.resolve()] == "b/deep/x"
    assert {stems[p.resolve()] for p in same_stem} == {"a/y_jpg", "a/y_png"}
    assert len(set(stems.values())) == 4
    assert output_stems([a]) == {a.resolve(): "x"}


def test_list_images_names_a_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        list_images([str(tmp_path / "nope.jpg")])


@pytest.mark.slow
def test_demo_writes_pictures_and_explanations(tmp_path, capsys):
    """Also: no MODEL.DEVICE on a CPU machine, two inputs named coffee.png in different folders,
    and a broken image that is skipped and listed (exit code 2) while the others are written."""
    images, other = tmp_path / "images", tmp_path / "other"
    images.mkdir()
    other.mkdir()
    Image.fromarray(skimage.data.coffee()).resize((120, 80)).save(images / "coffee.png")
    Image.fromarray(skimage.data.chelsea()).resize((90, 70)).save(images / "chelsea.jpg")
    Image.fromarray(skimage.data.astronaut()).resize((64, 64)).save(other / "coffee.png")
    (images / "broken.jpg").write_bytes((images / "coffee.png").read_bytes()[:300])
    classes = ["cat", "cup, mug", "table", "wall"]
    db = FeatureDatabase.create(tmp_path / "db", EncoderFingerprint.from_open_clip("retclip-tiny-convnext", "", 32),
                                classes)
    rng = np.random.default_rng(0)
    db.append(rng.normal(size=(40, 32)).astype(np.float32), np.arange(40) % 4, [f"img{i}" for i in range(40)])
    out = tmp_path / "out"
    device = [] if not torch.cuda.is_available() else ["MODEL.DEVICE", "cpu"]
    code = _demo_main()([
        "--config-file", str(ROOT / "configs/tests/tiny_retclip_convnext.yaml"),
        "--input", str(images), str(other / "coffee.png"), "--vocabulary", "cat, cup;mug, table, wall",
        "--database", str(tmp_path / "db"), "--output", str(out),
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *device,
    ])
    assert code == 2
    err = capsys.readouterr().err
    assert "1 of 4 images" in err and str(images / "broken.jpg") in err
    for stem, size in (("images/coffee", (120, 80)), ("images/chelsea", (90, 70)), ("other/coffee", (64, 64))):
        width, height = Image.open(out / f"{stem}_panoptic.png").size
        assert width > size[0] and height >= size[1]  # the picture, then its legend on the right
        segments = json.loads((out / f"{stem}_segments.json").read_text())["segments"]
        for s in segments:
            assert s["class"] in classes and 0.0 <= s["score"] <= 1.0 and s["area"] > 0
            for n in s["neighbours"]:
                assert n["image_id"].startswith("img") and -1.0 <= n["similarity"] <= 1.0
    assert not list(out.rglob("broken*"))
