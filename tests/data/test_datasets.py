"""Dataset registrations and class-name files: facts of COCO/ADE20k, lazy registration, errors."""
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from retclip.data import BUILTIN_DATASET_NAMES, ade20k_150_categories, coco_panoptic_categories, register_builtin_datasets

FCCLIP_NAMES = [
    "openvocab_coco_2017_train_panoptic_with_sem_seg",
    "openvocab_coco_2017_val_panoptic_with_sem_seg",
    "openvocab_ade20k_panoptic_train",
    "openvocab_ade20k_panoptic_val",
    "openvocab_ade20k_sem_seg_train",
    "openvocab_ade20k_sem_seg_val",
    "openvocab_ade20k_instance_train",
    "openvocab_ade20k_instance_val",
]


def _synonyms(name):
    return name.replace(", ", ",").split(",")


def test_coco_panoptic_categories_are_the_dataset_facts():
    cats = coco_panoptic_categories()
    assert len(cats) == 133
    things = [c for c in cats if c["isthing"]]
    assert len(things) == 80 and len(cats) - len(things) == 53
    assert [c["id"] for c in things] == sorted(c["id"] for c in things) and max(c["id"] for c in things) == 90
    assert min(c["id"] for c in cats if not c["isthing"]) == 92 and max(c["id"] for c in cats) == 200
    by_id = {c["id"]: c["name"] for c in cats}
    assert by_id[1].startswith("person,child") and by_id[63] == "couch,sofa,sofas"


def test_ade20k_categories_are_the_dataset_facts():
    cats = ade20k_150_categories()
    assert [c["id"] for c in cats] == list(range(150))
    assert sum(c["isthing"] for c in cats) == 100
    by_id = {c["id"]: c for c in cats}
    assert by_id[0]["name"].startswith("wall,") and not by_id[0]["isthing"]
    assert by_id[12]["name"].startswith("person,child") and by_id[12]["isthing"]
    assert by_id[149]["name"] == "flag,flags" and by_id[149]["isthing"]


def test_seen_ade_classes_with_exact_synonym_rule():
    # FC-CLIP's rule: case-sensitive synonym overlap after ", " -> "," and a split on ",".
    # With the OpenSeg/FC-CLIP prompt-engineered ADE names this rule gives FC-CLIP's 64 of 150.
    coco = {s for c in coco_panoptic_categories() for s in _synonyms(c["name"])}
    seen = [c["name"] for c in ade20k_150_categories() if coco & set(_synonyms(c["name"]))]
    assert len(seen) == 64
    assert any(n.startswith("person,") for n in seen) and any(n.startswith("sofa,") for n in seen)
    assert not any(n.startswith("escalator,") or n.startswith("sculpture,") for n in seen)


def test_all_fcclip_names_registered_with_metadata():
    assert set(FCCLIP_NAMES) == set(BUILTIN_DATASET_NAMES)
    registered = DatasetCatalog.list()
    for name in FCCLIP_NAMES:
        assert name in registered
    coco = MetadataCatalog.get("openvocab_coco_2017_val_panoptic_with_sem_seg")
    assert len(coco.stuff_classes) == 133 and len(coco.thing_classes) == 80
    assert coco.thing_dataset_id_to_contiguous_id[90] == 79 and coco.stuff_dataset_id_to_contiguous_id[200] == 132
    ade = MetadataCatalog.get("openvocab_ade20k_panoptic_val")
    assert ade.evaluator_type == "ade20k_panoptic_seg" and ade.ignore_label == 255 and ade.label_divisor == 1000
    assert ade.stuff_dataset_id_to_contiguous_id == {i: i for i in range(150)}
    assert ade.thing_dataset_id_to_contiguous_id[7] == 7 and len(ade.thing_dataset_id_to_contiguous_id) == 100
    inst = MetadataCatalog.get("openvocab_ade20k_instance_val")
    assert inst.evaluator_type == "coco" and inst.thing_dataset_id_to_contiguous_id[149] == 99


def test_root_from_env_and_missing_file_error_names_path_and_script(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    try:
        root = register_builtin_datasets()
        assert root == str(tmp_path / "d2")
        assert MetadataCatalog.get("openvocab_ade20k_panoptic_val").panoptic_json.startswith(root)
        with pytest.raises(FileNotFoundError) as e:
            DatasetCatalog.get("openvocab_ade20k_panoptic_val")
        assert os.path.join(root, "ADEChallengeData2016") in str(e.value)
        assert "prepare_ade20k_pan_seg.py" in str(e.value) and "DETECTRON2_DATASETS" in str(e.value)
        with pytest.raises(FileNotFoundError, match="prepare_ade20k_sem_seg.py"):
            DatasetCatalog.get("openvocab_ade20k_sem_seg_val")
    finally:
        monkeypatch.delenv("DETECTRON2_DATASETS")
        register_builtin_datasets()


def test_home_in_root_is_expanded(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "~/somewhere")
    try:
        assert register_builtin_datasets() == os.path.join(os.path.expanduser("~"), "somewhere")
    finally:
        monkeypatch.delenv("DETECTRON2_DATASETS")
        register_builtin_datasets()


def test_registration_touches_no_dataset_file(tmp_path):
    # Registering under a root that does not exist succeeds and creates nothing: files are only
    # read on DatasetCatalog.get.
    root = tmp_path / "absent"
    try:
        assert register_builtin_datasets(str(root)) == str(root)
        assert not root.exists()
        assert MetadataCatalog.get("openvocab_coco_2017_val_panoptic_with_sem_seg").panoptic_root.startswith(str(root))
    finally:
        register_builtin_datasets()


def test_unset_root_is_an_error_that_says_so_and_never_reads_the_current_folder(tmp_path, monkeypatch):
    # a ./datasets under the working directory holding a valid-looking file must not be used
    (tmp_path / "datasets" / "ADEChallengeData2016").mkdir(parents=True)
    (tmp_path / "datasets" / "ADEChallengeData2016" / "ade20k_panoptic_val.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    try:
        register_builtin_datasets()
        for name in ("openvocab_ade20k_panoptic_val", "openvocab_ade20k_sem_seg_val",
                     "openvocab_ade20k_instance_val", "openvocab_coco_2017_val_panoptic_with_sem_seg"):
            with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS, which is unset") as e:
                DatasetCatalog.get(name)
            assert name in str(e.value) and str(tmp_path) not in str(e.value)
            assert not MetadataCatalog.get(name).get("image_root", "").startswith(str(tmp_path))
    finally:
        register_builtin_datasets()
