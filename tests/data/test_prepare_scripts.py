"""datasets/prepare_*.py on tiny inputs in the official download formats: outputs, resumability,
and that the registered datasets load and map from the outputs."""
import copy
import importlib.util
import json
import os

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from PIL import Image

import retclip
from retclip.data import build_dataset_mapper, register_builtin_datasets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "datasets", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rgb2id(a):
    a = a.astype(np.int64)
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


# Instance-class ids 1..3 of the instance release map to ADE-150 (1-based) 13 person, 20 chair, 21 car.
MAPPING = "Instacne100\tSceneParsing150\tFullADE20K\n1\t13\t1831\n2\t20\t471\n3\t21\t401\n"


def _make_ade(root, h=24, w=32):
    ade = os.path.join(root, "ADEChallengeData2016")
    rng = np.random.default_rng(0)
    for dirname, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for d in ("images", "annotations", "annotations_instance"):
            os.makedirs(os.path.join(ade, d, dirname), exist_ok=True)
        for k in range(2):
            stem = f"{prefix}_{k:08d}"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(os.path.join(ade, "images", dirname, stem + ".jpg"))
            sem = np.zeros((h, w), np.uint8)  # 0 = other
            sem[: h // 2] = 1  # wall
            sem[h // 2 :] = 4  # floor
            sem[4:10, 4:12] = 13  # person (thing)
            sem[12:20, 16:28] = 21  # car (thing)
            sem[0, :] = 0
            Image.fromarray(sem).save(os.path.join(ade, "annotations", dirname, stem + ".png"))
            inst = np.zeros((h, w, 3), np.uint8)
            inst[4:10, 4:8] = (1, 1, 0)  # person instance 1
            inst[4:10, 8:12] = (1, 2, 0)  # person instance 2
            inst[12:20, 16:28] = (3, 1, 0)  # car
            Image.fromarray(inst).save(os.path.join(ade, "annotations_instance", dirname, stem + ".png"))
    with open(os.path.join(ade, "ade20k_instance_catid_mapping.txt"), "w") as f:
        f.write(MAPPING)
    return ade


def test_ade20k_scripts_produce_loadable_datasets_and_resume(tmp_path):
    root = str(tmp_path)
    ade = _make_ade(root)
    sem_seg, pan_seg, ins_seg = (_script(n) for n in ("prepare_ade20k_sem_seg", "prepare_ade20k_pan_seg", "prepare_ade20k_ins_seg"))
    assert sem_seg.main(["--root", root]) == 4
    assert pan_seg.main(["--root", root]) == 4
    assert ins_seg.main(["--root", root]) == 4

    src = np.asarray(Image.open(os.path.join(ade, "annotations", "validation", "ADE_val_00000000.png")))
    out = np.asarray(Image.open(os.path.join(ade, "annotations_detectron2", "validation", "ADE_val_00000000.png")))
    assert out[0, 0] == 255 and out[20, 2] == 3 and out[5, 5] == 12  # other -> 255, floor 4 -> 3, person 13 -> 12
    assert np.array_equal(out[src > 0], src[src > 0] - 1)

    pan_json = json.load(open(os.path.join(ade, "ade20k_panoptic_val.json")))
    assert len(pan_json["categories"]) == 150 and sum(c["isthing"] for c in pan_json["categories"]) == 100
    ann = pan_json["annotations"][0]
    ids = _rgb2id(np.asarray(Image.open(os.path.join(ade, "ade20k_panoptic_val", ann["file_name"]))))
    by_cat = {}
    for s in ann["segments_info"]:
        by_cat.setdefault(s["category_id"], []).append(s)
        assert (ids == s["id"]).sum() == s["area"]
    assert sorted(by_cat) == [0, 3, 12, 20]  # wall, floor stuff; person x2, car things
    assert len(by_cat[12]) == 2 and len(by_cat[20]) == 1
    assert ids[0, 0] == 0  # 'other' is void

    inst_json = json.load(open(os.path.join(ade, "ade20k_instance_val.json")))
    assert sorted(a["category_id"] for a in inst_json["annotations"]) == [12, 12, 12, 12, 20, 20]
    assert {a["image_id"] for a in inst_json["annotations"]} == {a["image_id"] for a in pan_json["annotations"]}
    assert len(inst_json["categories"]) == 100

    # Resumable: a second run does nothing; a lost semantic PNG is redone alone.
    os.remove(os.path.join(ade, "annotations_detectron2", "training", "ADE_train_00000001.png"))
    assert sem_seg.main(["--root", root]) == 1
    assert pan_seg.main(["--root", root]) == 0 and ins_seg.main(["--root", root]) == 0

    # The registered datasets load from these files, and the training mapper accepts them.
    try:
        register_builtin_datasets(root)
        dicts = DatasetCatalog.get("openvocab_ade20k_panoptic_val")
        assert len(dicts) == 2 and os.path.isfile(dicts[0]["sem_seg_file_name"])
        assert len(DatasetCatalog.get("openvocab_ade20k_sem_seg_val")) == 2
        inst = DatasetCatalog.get("openvocab_ade20k_instance_val")
        assert sorted(a["category_id"] for a in inst[0]["annotations"]) == [3, 3, 8]  # person, car among the 100 things
        cfg = get_cfg()
        retclip.add_retclip_config(cfg)
        cfg.INPUT.DATASET_MAPPER_NAME = "coco_panoptic_lsj"
        cfg.INPUT.IMAGE_SIZE = 32
        mapped = build_dataset_mapper(cfg)(copy.deepcopy(dicts[0]))
        assert set(mapped["instances"].gt_classes.tolist()) <= {0, 3, 12, 20}
    finally:
        register_builtin_datasets()


def test_ade_instance_class_missing_from_mapping_is_named(tmp_path):
    root = str(tmp_path)
    ade = _make_ade(root)
    with open(os.path.join(ade, "ade20k_instance_catid_mapping.txt"), "w") as f:
        f.write("header\n1 13 1831\n")  # car (3) missing
    with pytest.raises(KeyError, match="instance class id 3"):
        _script("prepare_ade20k_ins_seg").main(["--root", root])


def _make_coco(root):
    coco = os.path.join(root, "coco")
    for split in ("train2017", "val2017"):
        pan_dir = os.path.join(coco, f"panoptic_{split}")
        os.makedirs(pan_dir, exist_ok=True)
        os.makedirs(os.path.join(coco, "annotations"), exist_ok=True)
        ids = np.zeros((8, 10), np.int64)
        ids[:4] = 5001  # sky (187) -> contiguous 119
        ids[4:, :5] = 7002  # person (1) -> 0
        ids[4:, 5:] = 9003  # crowd person
        ids[0, 0] = 0
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(os.path.join(pan_dir, "000000000001.png"))
        segs = [
            {"id": 5001, "category_id": 187, "iscrowd": 0},
            {"id": 7002, "category_id": 1, "iscrowd": 0},
            {"id": 9003, "category_id": 200, "iscrowd": 1},  # rug -> 132
        ]
        payload = {"annotations": [{"image_id": 1, "file_name": "000000000001.png", "segments_info": segs}]}
        with open(os.path.join(coco, "annotations", f"panoptic_{split}.json"), "w") as f:
            json.dump(payload, f)
    return coco


def test_coco_semantic_from_panoptic(tmp_path):
    root = str(tmp_path)
    coco = _make_coco(root)
    script = _script("prepare_coco_semantic_annos_from_panoptic_annos")
    assert script.main(["--root", root]) == 2
    out = np.asarray(Image.open(os.path.join(coco, "panoptic_semseg_val2017", "000000000001.png")))
    assert out[0, 0] == 255 and out[1, 1] == 119 and out[5, 1] == 0 and out[5, 7] == 132
    assert script.main(["--root", root]) == 0  # resumable


def test_coco_png_id_missing_from_json_is_named(tmp_path):
    root = str(tmp_path)
    coco = _make_coco(root)
    path = os.path.join(coco, "annotations", "panoptic_val2017.json")
    payload = json.load(open(path))
    payload["annotations"][0]["segments_info"].pop(0)
    json.dump(payload, open(path, "w"))
    with pytest.raises(ValueError, match=r"000000000001.png.*5001"):
        _script("prepare_coco_semantic_annos_from_panoptic_annos").main(["--root", root])
