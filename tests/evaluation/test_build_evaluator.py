"""build_evaluator: one pass gives PQ, mask AP and mIoU for panoptic datasets, with the seen split
of the training vocabulary; unknown evaluator types are refused."""
import logging

import pytest
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

import retclip
from retclip.data import SYNTHETIC_TEST, SYNTHETIC_TRAIN
from retclip.evaluation import InstanceSegEvaluator, PanopticEvaluator, SemSegSplitEvaluator, build_evaluator


def _cfg(tmp_path):
    cfg = get_cfg()
    retclip.add_retclip_config(cfg)
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True
    cfg.DATASETS.TRAIN = (SYNTHETIC_TRAIN,)
    cfg.OUTPUT_DIR = str(tmp_path)
    return cfg


def test_panoptic_dataset_gets_all_three_metrics_and_logged_seen_split(tmp_path, caplog, monkeypatch):
    # detectron2's setup_logger may have stopped 'retclip' records from reaching caplog.
    monkeypatch.setattr(logging.getLogger("retclip"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="retclip.evaluation.seen_split"):
        evaluators = build_evaluator(_cfg(tmp_path), SYNTHETIC_TEST)._evaluators
    assert sorted(type(e).__name__ for e in evaluators) == sorted(
        [SemSegSplitEvaluator.__name__, PanopticEvaluator.__name__, InstanceSegEvaluator.__name__]
    )
    pan = next(e for e in evaluators if isinstance(e, PanopticEvaluator))
    # Train: person, car, cat, cup, grass, sky, "wall, brick wall"; test ids 0..7 = wall, sky,
    # person, grass, lamp, car, mountain, sofa -> seen: wall, sky, person, grass, car.
    assert pan._seen_ids == [0, 1, 2, 3, 5]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "5 of 8" in msg and "'lamp'" not in msg.split("5 of 8")[1]


def test_unknown_evaluator_type_is_refused(tmp_path):
    name = "retclip_test_weird_eval_type"
    MetadataCatalog.get(name).set(evaluator_type="lvis")
    with pytest.raises(ValueError, match="lvis"):
        build_evaluator(_cfg(tmp_path), name)
