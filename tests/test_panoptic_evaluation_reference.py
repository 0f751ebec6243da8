"""Detectron2's COCOPanopticEvaluator on synthetic ground truth: PQ = 100 on the ground truth
itself, and the PQ that panopticapi's pq_compute gives, called directly, on a perturbed copy."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator
from panopticapi.evaluation import pq_compute
from PIL import Image

from retclip.testing.synthetic import TEST_CLASSES, make_synthetic_panoptic, register_synthetic_panoptic


def _rgb2id(rgb):
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _id2rgb(ids):
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_pq")
    split = make_synthetic_panoptic(str(root), "test", TEST_CLASSES, num_images=5, seed=3, allow_crowd=False)
    name = register_synthetic_panoptic("test_pq_reference_synthetic", split, "ade20k_panoptic_seg")
    return name, split


def _perturb(ids, segments, rng):
    """Erode thing segments on one side, relabel one stuff segment, drop nothing else."""
    ids = ids.copy()
    segments = [dict(s) for s in segments]
    for seg in segments:
        mask = ids == seg["id"]
        if seg["isthing"]:
            cols = np.nonzero(mask.any(0))[0]
            cut = cols[: max(1, len(cols) // 3)]
            strip = mask.copy()
            strip[:, [c for c in range(ids.shape[1]) if c not in set(cut.tolist())]] = False
            ids[strip] = 0
    stuff = [s for s in segments if not s["isthing"]]
    if stuff:
        victim = stuff[int(rng.integers(len(stuff)))]
        victim["category_id"] = (victim["category_id"] + 1) % len(TEST_CLASSES)
        victim["isthing"] = bool(TEST_CLASSES[victim["category_id"]]["isthing"])
    return ids, segments


def _predictions(name, perturb):
    rng = np.random.default_rng(0)
    out = []
    for record in DatasetCatalog.get(name):
        ids = _rgb2id(np.array(Image.open(record["pan_seg_file_name"])))
        segments = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": bool(s["isthing"])}
            for s in record["segments_info"]
        ]
        if perturb:
            ids, segments = _perturb(ids, segments, rng)
        out.append((record, ids, segments))
    return out


def _evaluate_with_detectron2(name, preds, out_dir):
    evaluator = COCOPanopticEvaluator(name, output_dir=str(out_dir))
    evaluator.reset()
    for record, ids, segments in preds:
        inputs = [{"file_name": record["file_name"], "image_id": record["image_id"]}]
        outputs = [{"panoptic_seg": (torch.from_numpy(ids.astype(np.int32)), [dict(s) for s in segments])}]
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()["panoptic_seg"]


def _pq_with_panopticapi_directly(split, preds, out_dir):
    folder = out_dir / "pred_png"
    folder.mkdir()
    annotations = []
    for record, ids, segments in preds:
        file_name = os.path.basename(record["pan_seg_file_name"])
        Image.fromarray(_id2rgb(ids)).save(folder / file_name)
        present = set(np.unique(ids).tolist())
        annotations.append(
            {
                "image_id": record["image_id"],
                "file_name": file_name,
                # Contiguous ids equal dataset ids in the ADE-like set (0-based, in order).
                "segments_info": [
                    {"id": s["id"], "category_id": TEST_CLASSES[s["category_id"]]["id"]}
                    for s in segments
                    if s["id"] in present
                ],
            }
        )
    pred_json = out_dir / "pred.json"
    pred_json.write_text(json.dumps({"annotations": annotations}))
    return pq_compute(split.panoptic_json, str(pred_json), split.panoptic_dir, str(folder))


def test_ground_truth_as_prediction_gives_pq_100(dataset, tmp_path):
    name, _ = dataset
    result = _evaluate_with_detectron2(name, _predictions(name, perturb=False), tmp_path)
    assert result["PQ"] == pytest.approx(100.0)
    assert result["SQ"] == pytest.approx(100.0) and result["RQ"] == pytest.approx(100.0)


def test_perturbed_prediction_matches_panopticapi(dataset, tmp_path):
    name, split = dataset
    preds = _predictions(name, perturb=True)
    ours = _evaluate_with_detectron2(name, preds, tmp_path / "d2")
    (tmp_path / "ref").mkdir()
    reference = _pq_with_panopticapi_directly(split, preds, tmp_path / "ref")
    assert ours["PQ"] < 100.0
    assert ours["PQ"] == pytest.approx(100 * reference["All"]["pq"], abs=1e-9)
    assert ours["PQ_th"] == pytest.approx(100 * reference["Things"]["pq"], abs=1e-9)
    assert ours["PQ_st"] == pytest.approx(100 * reference["Stuff"]["pq"], abs=1e-9)
