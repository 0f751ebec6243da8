"""The synthetic dataset is deterministic, self-consistent and in real COCO-panoptic format."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from retclip.testing.synthetic import TEST_CLASSES, TRAIN_CLASSES, make_synthetic_panoptic


def _rgb2id(rgb):
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def test_same_seed_gives_same_bytes_and_other_seed_differs(tmp_path, tree_digest):
    a = make_synthetic_panoptic(str(tmp_path / "a"), "train", num_images=3, seed=5)
    b = make_synthetic_panoptic(str(tmp_path / "b"), "train", num_images=3, seed=5)
    c = make_synthetic_panoptic(str(tmp_path / "c"), "train", num_images=3, seed=6)
    assert tree_digest(a.root) == tree_digest(b.root)
    assert tree_digest(a.root) != tree_digest(c.root)


def test_panoptic_png_semantic_png_and_json_agree(tmp_path):
    split = make_synthetic_panoptic(str(tmp_path), "test", TEST_CLASSES, num_images=4, seed=1, allow_crowd=False)
    data = json.load(open(split.panoptic_json))
    contiguous = {c["id"]: i for i, c in enumerate(TEST_CLASSES)}
    assert {c["id"] for c in data["categories"]} == set(contiguous)
    for ann in data["annotations"]:
        ids = _rgb2id(np.array(Image.open(os.path.join(split.panoptic_dir, ann["file_name"]))))
        sem = np.array(Image.open(os.path.join(split.semantic_dir, ann["file_name"])))
        present = set(np.unique(ids).tolist()) - {0}
        assert present == {s["id"] for s in ann["segments_info"]}
        for seg in ann["segments_info"]:
            mask = ids == seg["id"]
            assert mask.sum() == seg["area"]
            assert np.all(sem[mask] == contiguous[seg["category_id"]])
        assert np.all(sem[ids == 0] == 255)
        image = Image.open(os.path.join(split.image_dir, ann["file_name"].replace(".png", ".jpg")))
        assert image.mode == "RGB" and image.size == (sem.shape[1], sem.shape[0])


def test_instance_json_loads_in_pycocotools_and_masks_match_panoptic(tmp_path):
    split = make_synthetic_panoptic(str(tmp_path), "train", TRAIN_CLASSES, num_images=6, seed=2)
    coco = COCO(split.instances_json)
    things = {c["id"] for c in TRAIN_CLASSES if c["isthing"]}
    assert set(coco.getCatIds()) == things
    pan = json.load(open(split.panoptic_json))
    n_thing_segments = sum(
        1 for a in pan["annotations"] for s in a["segments_info"] if s["category_id"] in things
    )
    assert len(coco.getAnnIds()) == n_thing_segments > 0
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert coco.annToMask(ann).sum() == ann["area"]


def test_class_sets_share_some_names_and_not_others():
    def synonyms(classes):
        return {s.strip() for c in classes for s in c["name"].split(",")}

    shared = synonyms(TRAIN_CLASSES) & synonyms(TEST_CLASSES)
    assert {"person", "sky", "grass", "wall", "car"} <= shared
    assert not ({"lamp", "sofa", "mountain"} & synonyms(TRAIN_CLASSES))


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic_panoptic(str(tmp_path), num_images=0)
    with pytest.raises(ValueError, match="16x16"):
        make_synthetic_panoptic(str(tmp_path), height=8)
