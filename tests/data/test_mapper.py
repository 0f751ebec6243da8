"""The COCO panoptic LSJ mapper on synthetic data: masks follow the PNG through the transform,
crowd segments are dropped, bad files give errors that name them."""
import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from PIL import Image

import retclip
from retclip.data import build_dataset_mapper
from retclip.testing.synthetic import make_and_register_synthetic


@pytest.fixture(scope="module")
def train_dicts(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mapper"))
    train, _ = make_and_register_synthetic(root, prefix="mappertest", num_train=12, num_test=1, seed=5)
    return DatasetCatalog.get(train)


def _cfg(size=64, flip="horizontal"):
    cfg = get_cfg()
    retclip.add_retclip_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "coco_panoptic_lsj"
    cfg.INPUT.IMAGE_SIZE = size
    cfg.INPUT.RANDOM_FLIP = flip
    return cfg


def _rgb2id(a):
    a = a.astype(np.int64)
    return a[..., 0] + 256 * a[..., 1] + 256 * 256 * a[..., 2]


def test_masks_match_png_after_transform_and_crowds_dropped(train_dicts):
    # Scale 1 of a 128x128 target leaves the 96x128 image unresized: the crop pads 32 rows.
    cfg = _cfg(size=128, flip="none")
    cfg.INPUT.MIN_SCALE = cfg.INPUT.MAX_SCALE = 1.0
    mapper = build_dataset_mapper(cfg)
    crowd_seen = 0
    for d in train_dicts:
        out = mapper(copy.deepcopy(d))
        assert out["image"].shape == (3, 128, 128) and out["image"].dtype == torch.uint8
        inst = out["instances"]
        masks = inst.gt_masks.tensor.numpy()
        ids = np.zeros((128, 128), np.int64)
        ids[:96] = _rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")))
        img = np.asarray(Image.open(d["file_name"]).convert("RGB"))
        hwc = out["image"].numpy().transpose(1, 2, 0)[..., ::-1]  # BGR -> RGB
        assert np.array_equal(hwc[:96], img) and (hwc[96:] == 128).all()
        expected = [(s["category_id"], ids == s["id"]) for s in d["segments_info"] if not s["iscrowd"]]
        crowd_seen += sum(s["iscrowd"] for s in d["segments_info"])
        assert inst.gt_classes.tolist() == [c for c, _ in expected]
        for m, (_, e) in zip(masks, expected):
            assert np.array_equal(m, e)
    assert crowd_seen > 0  # the synthetic split has crowd segments, and they were left out


def test_lsj_resize_crop_flip_keep_masks_aligned_with_png(train_dicts):
    cfg = _cfg(size=64)
    mapper = build_dataset_mapper(cfg)
    torch.manual_seed(0)
    np.random.seed(0)
    for d in train_dicts[:6]:
        out = mapper(copy.deepcopy(d))
        img = out["image"]
        assert img.shape == (3, 64, 64)
        masks = out["instances"].gt_masks.tensor
        assert masks.shape[1:] == (64, 64)
        # Masks are disjoint, and padded pixels (value 128 in all channels) belong to no mask.
        assert (masks.sum(0) <= 1).all()
        pad = (img == 128).all(0)
        if pad.any():
            assert not masks[:, pad].any()
        classes = out["instances"].gt_classes
        assert classes.dtype == torch.int64 and (classes >= 0).all() and (classes < 7).all()
        # Each class kept comes from a non-crowd segment of the image.
        allowed = {s["category_id"] for s in d["segments_info"] if not s["iscrowd"]}
        assert set(classes.tolist()) <= allowed


def test_png_with_ids_missing_from_json_is_an_error_naming_file_and_id(train_dicts, tmp_path):
    d = copy.deepcopy(train_dicts[0])
    dropped = d["segments_info"].pop(0)
    mapper = build_dataset_mapper(_cfg())
    with pytest.raises(ValueError) as e:
        mapper(d)
    assert os.path.basename(d["pan_seg_file_name"]) in str(e.value) and str(dropped["id"]) in str(e.value)


def test_undecodable_image_is_an_error_naming_it(train_dicts, tmp_path):
    d = copy.deepcopy(train_dicts[0])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    d["file_name"] = str(bad)
    with pytest.raises(ValueError, match="broken.jpg"):
        build_dataset_mapper(_cfg())(d)


def test_unknown_mapper_name_lists_known():
    cfg = _cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = "nope"
    with pytest.raises(KeyError, match="coco_panoptic_lsj"):
        build_dataset_mapper(cfg)


def _test_cfg(min_size=48, max_size=96):
    cfg = get_cfg()
    retclip.add_retclip_config(cfg)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min_size, max_size
    return cfg


def test_test_mapper_equals_detectron2_on_8bit_images(tmp_path):
    from detectron2.data import DatasetMapper

    from retclip.data.mappers import TestDatasetMapper

    _, test = make_and_register_synthetic(str(tmp_path), prefix="testmapper", num_train=1, num_test=3, seed=2)
    cfg = _test_cfg()
    ours, theirs = TestDatasetMapper(cfg), DatasetMapper(cfg, is_train=False)
    for record in DatasetCatalog.get(test):
        a, b = ours(record), theirs(record)
        # detectron2 also decodes the ground-truth "sem_seg" for inputs; no model or evaluator
        # here reads it (evaluators load ground truth themselves), so ours skips that read
        assert sorted(a) == sorted(k for k in b if k != "sem_seg")
        assert a["image"].dtype == b["image"].dtype and torch.equal(a["image"], b["image"])
        assert (a["height"], a["width"]) == (b["height"], b["width"])


def test_test_mapper_reads_16bit_images_with_the_project_reader(tmp_path):
    """detectron2's reader turns a 16-bit grayscale PNG into a near-white image; evaluation now
    reads it as training and the demos do (scaled by its range)."""
    from detectron2.data import DatasetMapper

    from retclip.data.mappers import TestDatasetMapper
    from retclip.utils.image_io import read_image

    raw = np.random.default_rng(0).integers(1000, 60000, size=(48, 64), dtype=np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(raw).save(path)
    record = {"file_name": str(path), "height": 48, "width": 64, "image_id": 0}
    cfg = _test_cfg(48, 64)  # no resize: the mapper's pixels are the reader's
    got = TestDatasetMapper(cfg)(record)["image"]
    expected = read_image(path, format=cfg.INPUT.FORMAT)
    assert torch.equal(got, torch.from_numpy(expected.transpose(2, 0, 1).copy()))
    assert got.float().std() > 30  # the range is kept, not saturated
    detectron2_image = DatasetMapper(cfg, is_train=False)(record)["image"]
    assert not torch.equal(got, detectron2_image)
