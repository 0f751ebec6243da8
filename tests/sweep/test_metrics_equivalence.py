"""The hotcoco fast path gives the numbers of the reference evaluators (panopticapi PQ, pycocotools
segm AP, detectron2 mIoU, with the seen/unseen split) on the same perturbed-ground-truth
predictions, and on a subset of images it scores only that subset."""

import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from retclip.config import add_retclip_config
from retclip.evaluation import build_evaluator, seen_classes_for
from retclip.sweep.metrics import FastPanopticEvaluator
from retclip.testing.synthetic import make_and_register_synthetic


def _rgb2id(a):
    a = a.astype(np.int64)
    return a[..., 0] + 256 * a[..., 1] + 256 * 256 * a[..., 2]


def _perturbed_outputs(dataset, seed):
    """Per image: a panoptic map with relabelled / shifted / dropped segments, semantic scores
    from it, and instances (shifted GT things with random scores plus a false positive)."""
    meta = MetadataCatalog.get(dataset)
    num_classes = len(meta.stuff_classes)
    thing_ids = set(meta.thing_dataset_id_to_contiguous_id.values())
    rng = np.random.default_rng(seed)
    pairs = []
    for d in DatasetCatalog.get(dataset):
        gt = _rgb2id(np.asarray(Image.open(d["pan_seg_file_name"])))
        pred = gt.copy()
        segs = []
        for k, s in enumerate(d["segments_info"]):
            cls = s["category_id"]
            if rng.random() < 0.25:
                cls = int(rng.integers(num_classes))
            if rng.random() < 0.15:
                pred[gt == s["id"]] = 0
                continue
            if s["isthing"]:
                m = gt == s["id"]
                pred[m] = 0
                pred[np.roll(m, int(rng.integers(-4, 5)), axis=1)] = s["id"]
            segs.append({"id": s["id"], "category_id": cls, "isthing": cls in thing_ids})
        present = set(np.unique(pred).tolist())
        segs = [s for s in segs if s["id"] in present]
        sem = torch.rand(num_classes, *gt.shape) * 0.5
        for s in segs:
            sem[s["category_id"]][torch.from_numpy(pred == s["id"])] += 1.0
        masks, classes = [], []
        for s in segs:
            if s["isthing"]:
                masks.append(np.roll(pred == s["id"], 1, axis=0))
                classes.append(s["category_id"])
        masks.append(np.zeros(gt.shape, bool))
        masks[-1][: gt.shape[0] // 3, : gt.shape[1] // 3] = True
        classes.append(sorted(thing_ids)[0])
        inst = Instances(gt.shape)
        inst.pred_masks = torch.from_numpy(np.stack(masks)).float()
        inst.pred_boxes = Boxes(torch.zeros(len(masks), 4))
        inst.scores = torch.from_numpy(rng.random(len(masks))).float()
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        out = {
            "panoptic_seg": (torch.from_numpy(pred.astype(np.int32)), segs),
            "sem_seg": sem,
            "instances": inst,
        }
        pairs.append(({"file_name": d["file_name"], "image_id": d["image_id"]}, out))
    return pairs


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sweep_metrics"))
    train, test = make_and_register_synthetic(
        root, prefix="sweepmetrics", num_train=2, num_test=5, seed=11
    )
    cfg = get_cfg()
    add_retclip_config(cfg)
    cfg.DATASETS.TRAIN = (train,)
    cfg.DATASETS.TEST = (test,)
    cfg.OUTPUT_DIR = root
    for key in ("SEMANTIC_ON", "PANOPTIC_ON", "INSTANCE_ON"):
        setattr(cfg.MODEL.MASK_FORMER.TEST, key, True)
    return cfg, test, _perturbed_outputs(test, seed=5)


def _run(evaluator, pairs):
    evaluator.reset()
    for inp, out in pairs:
        evaluator.process([inp], [out])
    return evaluator.evaluate()


def _assert_same(reference, fast):
    compared = 0
    for task, ref in reference.items():
        for key, value in ref.items():
            if key == "mIoU_d2v06" and key not in fast[task]:
                continue
            assert key in fast[task], f"{task}/{key} missing from the fast results"
            got = fast[task][key]
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got), f"{task}/{key}: reference NaN, fast {got}"
            else:
                assert got == pytest.approx(value, abs=1e-9), f"{task}/{key}"
            compared += 1
    return compared


def test_fast_backend_matches_reference_evaluators(synthetic):
    cfg, test, pairs = synthetic
    reference = _run(build_evaluator(cfg, test, cfg.OUTPUT_DIR + "/ref"), pairs)
    seen = seen_classes_for(test, list(cfg.DATASETS.TRAIN))
    fast = _run(FastPanopticEvaluator(test, seen=seen), pairs)
    assert set(reference) == {"panoptic_seg", "segm", "sem_seg"}
    # The perturbation really moved every metric off 100 (so equality is not trivial).
    assert 20 < reference["panoptic_seg"]["PQ"] < 99
    assert 5 < reference["segm"]["AP"] < 99
    assert 20 < reference["sem_seg"]["mIoU"] < 99
    assert "PQ_unseen" in fast["panoptic_seg"] and "mIoU_seen" in fast["sem_seg"]
    assert 0 < sum(seen) < len(seen)
    assert _assert_same(reference, fast) > 30


def test_fast_backend_scores_only_the_images_it_was_given(synthetic):
    """A partial sweep scores the finished images: the same as the reference on those images
    alone, and different from the full set (the subset really changes the numbers)."""
    cfg, test, pairs = synthetic
    fast = FastPanopticEvaluator(test)
    full = _run(fast, pairs)
    subset = _run(fast, pairs[:2])
    # Reference on the subset: mIoU (SemSeg has no per-image requirement) and AP with img_ids.
    ref_sem = build_evaluator(cfg, test, cfg.OUTPUT_DIR + "/ref_sub")._evaluators[0]
    ref = _run(ref_sem, pairs[:2])["sem_seg"]
    assert subset["sem_seg"]["mIoU"] == pytest.approx(ref["mIoU"], abs=1e-9)
    assert subset["sem_seg"]["mIoU"] != pytest.approx(full["sem_seg"]["mIoU"], abs=1e-6)
    assert subset["panoptic_seg"]["PQ"] != pytest.approx(full["panoptic_seg"]["PQ"], abs=1e-6)


def test_seen_mask_length_is_checked(synthetic):
    _, test, _ = synthetic
    with pytest.raises(ValueError, match="seen has 3 entries"):
        FastPanopticEvaluator(test, seen=[True, False, True])


def test_query_rles_decode_to_the_query_masks():
    """Per-query RLEs (encoded once per image for all grid points) decode, with pycocotools, to
    each asked query's mask, whatever the order, repeats and earlier calls."""
    from pycocotools import mask as mask_utils

    from retclip.sweep.metrics import QueryMaskRLEs

    g = torch.Generator().manual_seed(5)
    positive = torch.randn(9, 37, 53, generator=g) > 0.3
    rles = QueryMaskRLEs(positive)
    for queries in ([3, 1, 3], [0, 8, 1, 2], [8]):
        for q, rle in zip(queries, rles(queries)):
            decoded = mask_utils.decode(dict(rle, counts=rle["counts"].encode("ascii")))
            assert np.array_equal(decoded.astype(bool), positive[q].numpy())
