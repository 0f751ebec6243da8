"""Colours per class name, legend and labels in demo pictures; the ':stuff' syntax; database
provenance (RLE masks, source paths) in shards, with old shards still readable."""
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from retclip.retrieval import EncoderFingerprint, FeatureDatabase
from retclip.retrieval.provenance import ProvenanceReader, decode_mask_rle, encode_mask_rle
from retclip.visualization import class_colour, draw_panoptic, draw_thumbnail, label_positions
from retclip.vocabulary_syntax import split_kinds


def test_colours_depend_on_the_name_only():
    assert class_colour("cat") == class_colour("Cat") == class_colour("cat, kitty")
    colours = {class_colour(n) for n in ("cat", "dog", "sky", "wall", "floor", "person")}
    assert len(colours) == 6


def test_picture_has_legend_overlay_and_labels_only_in_large_segments():
    image = np.full((60, 80, 3), 100, np.uint8)
    panoptic = np.zeros((60, 80), np.int32)
    panoptic[:, :50] = 1  # large
    panoptic[0:3, 70:73] = 2  # 9 pixels: under 1% of 4800
    segments = [{"id": 1, "class": "sky", "score": 0.9, "isthing": False},
                {"id": 2, "class": "bird", "score": 0.4, "isthing": True}]
    positions = label_positions(panoptic, [1, 2])
    assert positions[2] is None and panoptic[positions[1][1], positions[1][0]] == 1
    picture = draw_panoptic(image, panoptic, segments)
    assert picture.shape[1] > 80 and picture.shape[0] >= 60  # legend panel on the right
    colour = np.asarray(class_colour("sky"), np.float32)
    expected = np.round(0.5 * 100 + 0.5 * colour)  # alpha blend, computed independently
    assert np.abs(picture[50, 10].astype(float) - expected).max() <= 1  # away from label and outline
    legend = picture[:, 80:]
    swatch = np.all(legend == np.asarray(class_colour("bird"), np.uint8), axis=-1)
    assert swatch.sum() >= 50  # the small segment still has its legend row
    plain = draw_panoptic(image, panoptic, segments, legend=False)
    assert plain.shape == (60, 80, 3)


def test_thumbnail_outlines_the_mask():
    image = np.zeros((100, 100, 3), np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[40:60, 40:60] = True
    thumb = draw_thumbnail(image, (40, 40, 60, 60), mask, ["cat", "sim 0.9"], size=96)
    assert thumb.shape[1] == 96 and thumb.shape[0] > 96  # caption under the crop
    red = np.all(thumb[:96] == (255, 0, 0), axis=-1)
    assert red.any() and not red[48, 48]  # outline only, not the inside


def test_stuff_suffix():
    assert split_kinds(["cat", "sky:stuff", "floor, flooring : stuff", "dog:thing"]) == (
        ["cat", "sky", "floor, flooring", "dog"], [True, False, False, True])
    with pytest.raises(ValueError, match="unknown suffix"):
        split_kinds(["sky:stufff"])
    with pytest.raises(ValueError, match="twice"):
        split_kinds(["sky", "sky:stuff"])
    with pytest.raises(ValueError, match="must end"):
        split_kinds(["floor:stuff, flooring"])


def test_rle_round_trip_matches_pycocotools():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 51)) > 0.6
    rle = encode_mask_rle(mask)
    assert np.array_equal(decode_mask_rle(rle), mask)
    area = mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})
    assert area == mask.sum()


def _db(path, n_classes=3):
    return FeatureDatabase.create(path, EncoderFingerprint.from_open_clip("retclip-tiny-convnext", "", 8),
                                  [f"c{i}" for i in range(n_classes)], dtype="float32")


def test_provenance_is_stored_read_and_optional(tmp_path):
    rng = np.random.default_rng(1)
    db = _db(tmp_path / "db")
    db.append(rng.normal(size=(2, 8)), [0, 1], ["old0", "old1"])  # a shard without provenance
    masks = [rng.random((20, 30)) > 0.5 for _ in range(3)]
    boxes = np.asarray([[1, 2, 10, 12], [0, 0, 5, 5], [3, 3, 9, 9]], np.float32)
    db.append(rng.normal(size=(3, 8)), [2, 0, 2], ["a", "a", "b"], boxes=boxes,
              sources=["/x/a.png", "/x/a.png", "/x/b.png"], mask_rles=[encode_mask_rle(m) for m in masks])
    db = FeatureDatabase.open(tmp_path / "db")
    rows = db.load_all()
    assert rows.sources == [None, None, "/x/a.png", "/x/a.png", "/x/b.png"]
    reader = ProvenanceReader(db)
    assert reader.row(0)["source"] is None and reader.row(0)["mask_rle"] is None and reader.row(0)["box"] is None
    for i in range(3):
        row = reader.row(2 + i)
        assert row["image_id"] == ["a", "a", "b"][i] and row["box"] == boxes[i].tolist()
        assert np.array_equal(decode_mask_rle(row["mask_rle"]), masks[i])
    assert reader.row(5) is None
    kept = db.remove_classes(["c0"], tmp_path / "kept").load_all()  # provenance follows the rows
    assert kept.sources == [None, "/x/a.png", "/x/b.png"]
    assert np.array_equal(decode_mask_rle(kept.mask_rles[2]), masks[2])
