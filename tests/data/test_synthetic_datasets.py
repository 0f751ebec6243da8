"""The named synthetic datasets are generated on first use, atomically and deterministically."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from retclip.data import SYNTHETIC_TEST, SYNTHETIC_TRAIN, register_synthetic_datasets


def test_generated_on_first_use_and_deterministic(tmp_path, tree_digest):
    try:
        a = register_synthetic_datasets(str(tmp_path / "a"))
        assert not os.path.exists(a)  # registration alone writes nothing
        train = DatasetCatalog.get(SYNTHETIC_TRAIN)
        test = DatasetCatalog.get(SYNTHETIC_TEST)
        assert os.path.isfile(os.path.join(a, "DONE"))
        assert len(train) == 16 and len(test) == 6
        assert all(os.path.isfile(d["pan_seg_file_name"]) for d in test)
        assert not [p for p in os.listdir(os.path.dirname(a)) if p.startswith(".tmp")]
        b = register_synthetic_datasets(str(tmp_path / "b"))
        DatasetCatalog.get(SYNTHETIC_TEST)
        assert tree_digest(a) == tree_digest(b)
        meta = MetadataCatalog.get(SYNTHETIC_TEST)
        assert meta.evaluator_type == "ade20k_panoptic_seg" and meta.panoptic_json.startswith(b)
        assert MetadataCatalog.get(SYNTHETIC_TRAIN).evaluator_type == "coco_panoptic_seg"
    finally:
        register_synthetic_datasets()
