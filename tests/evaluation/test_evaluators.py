"""Evaluator correctness on perturbed ground truth: PQ against panopticapi's pq_compute, mIoU
against a numpy confusion matrix, mask AP against pycocotools' COCOeval, all run here directly."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Instances
from PIL import Image

from retclip.evaluation import InstanceSegEvaluator, PanopticEvaluator, SemSegSplitEvaluator
from retclip.testing.synthetic import make_and_register_synthetic

SEEN = [True, True, True, True, False, True, False, False]  # wall, sky, person, grass, lamp, car, mountain, sofa


def _rgb2id(a):
    a = a.astype(np.int64)
    return a[..., 0] + 256 * a[..., 1] + 256 * 256 * a[..., 2]


def _id2rgb(ids):
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("evalsyn"))
    _, test = make_and_register_synthetic(root, prefix="evaltest", num_train=1, num_test=4, seed=3)
    meta = MetadataCatalog.get(test)
    dicts = DatasetCatalog.get(test)
    rng = np.random.default_rng(0)
    n_cls = len(meta.stuff_classes)
    thing_ids = set(meta.thing_dataset_id_to_contiguous_id.values())
    preds = []
    for d in dicts:
        gt = _rgb2id(np.asarray(Image.open(d["pan_seg_file_name"])))
        pred = gt.copy()
        segs = []
        for k, s in enumerate(d["segments_info"]):
            cls = s["category_id"]
            if k == 0:  # relabel the first segment
                cls = (cls + 1) % n_cls
            if k == 1:  # drop the second segment
                pred[gt == s["id"]] = 0
                continue
            if s["isthing"]:  # shift things right by 3 pixels
                m = gt == s["id"]
                pred[m] = 0
                pred[np.roll(m, 3, axis=1)] = s["id"]
            segs.append({"id": s["id"], "category_id": cls, "isthing": cls in thing_ids})
        present = set(np.unique(pred).tolist())
        segs = [s for s in segs if s["id"] in present]
        semantic = np.zeros(gt.shape, np.int64)
        for s in segs:
            semantic[pred == s["id"]] = s["category_id"]
        preds.append({"pan": pred, "segs": segs, "sem": semantic, "scores": rng.uniform(0.5, 1.0, len(segs))})
    return test, meta, dicts, preds


def _outputs(meta, pred):
    n_cls = len(meta.stuff_classes)
    sem = torch.nn.functional.one_hot(torch.from_numpy(pred["sem"]), n_cls).permute(2, 0, 1).float()
    things = [(s, sc) for s, sc in zip(pred["segs"], pred["scores"]) if s["isthing"]]
    h, w = pred["pan"].shape
    inst = Instances((h, w))
    masks = torch.from_numpy(np.stack([pred["pan"] == s["id"] for s, _ in things])) if things else torch.zeros(0, h, w, dtype=torch.bool)
    inst.pred_masks = masks
    inst.pred_boxes = BitMasks(masks).get_bounding_boxes()
    inst.scores = torch.tensor([float(sc) for _, sc in things])
    inst.pred_classes = torch.tensor([s["category_id"] for s, _ in things], dtype=torch.int64)
    segs = [dict(s) for s in pred["segs"]]
    return {"panoptic_seg": (torch.from_numpy(pred["pan"]).int(), segs), "sem_seg": sem, "instances": inst}


def _run(evaluator, dicts, meta, preds):
    evaluator.reset()
    for d, p in zip(dicts, preds):
        evaluator.process([d], [_outputs(meta, p)])
    return evaluator.evaluate()


def test_pq_matches_panopticapi(data, tmp_path):
    from panopticapi.evaluation import pq_compute

    test, meta, dicts, preds = data
    res = _run(PanopticEvaluator(test, str(tmp_path / "out"), seen_classes=SEEN), dicts, meta, preds)["panoptic_seg"]

    # Reference: write the same predictions ourselves and call panopticapi directly.
    contiguous_to_id = {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    anns = []
    for d, p in zip(dicts, preds):
        name = os.path.splitext(os.path.basename(d["file_name"]))[0] + ".png"
        Image.fromarray(_id2rgb(p["pan"])).save(pred_dir / name)
        segs = [{"id": s["id"], "category_id": contiguous_to_id[s["category_id"]]} for s in p["segs"]]
        anns.append({"image_id": d["image_id"], "file_name": name, "segments_info": segs})
    with open(meta.panoptic_json) as f:
        gt = json.load(f)
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps(dict(gt, annotations=anns)))
    with contextlib.redirect_stdout(io.StringIO()):
        ref = pq_compute(meta.panoptic_json, str(pred_json), meta.panoptic_root, str(pred_dir))
    assert res["PQ"] == pytest.approx(100 * ref["All"]["pq"], abs=1e-9)
    assert res["SQ"] == pytest.approx(100 * ref["All"]["sq"], abs=1e-9)
    assert res["PQ_th"] == pytest.approx(100 * ref["Things"]["pq"], abs=1e-9)
    assert res["PQ_st"] == pytest.approx(100 * ref["Stuff"]["pq"], abs=1e-9)
    assert 0 < res["PQ"] < 100  # the perturbation must matter

    # Seen / unseen: mean of panopticapi's per-class PQ over classes present in GT or prediction.
    present = {s["category_id"] for a in gt["annotations"] for s in a["segments_info"]}
    present |= {s["category_id"] for a in anns for s in a["segments_info"]}
    for flag, key in ((True, "PQ_seen"), (False, "PQ_unseen")):
        ids = [contiguous_to_id[i] for i, s in enumerate(SEEN) if s == flag and contiguous_to_id[i] in present]
        assert res[key] == pytest.approx(100 * np.mean([ref["per_class"][i]["pq"] for i in ids]), abs=1e-9)


def test_miou_matches_numpy_confusion(data):
    test, meta, dicts, preds = data
    res = _run(SemSegSplitEvaluator(test, seen_classes=SEEN), dicts, meta, preds)["sem_seg"]
    n = len(meta.stuff_classes)
    inter, union, has_gt = np.zeros(n), np.zeros(n), np.zeros(n, bool)
    for d, p in zip(dicts, preds):
        gt = np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64)
        valid = gt != 255
        for c in range(n):
            g, q = (gt == c) & valid, (p["sem"] == c) & valid
            inter[c] += (g & q).sum()
            union[c] += (g | q).sum()
            has_gt[c] |= g.any()
    iou = inter / np.maximum(union, 1)
    seen = np.array(SEEN)
    assert res["mIoU"] == pytest.approx(100 * iou[has_gt].mean(), abs=1e-9)
    assert res["mIoU_seen"] == pytest.approx(100 * iou[has_gt & seen].mean(), abs=1e-9)
    assert res["mIoU_unseen"] == pytest.approx(100 * iou[has_gt & ~seen].mean(), abs=1e-9)
    assert 0 < res["mIoU"] < 100


def test_mask_ap_on_scattered_thing_ids_matches_cocoeval(data, tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    test, meta, dicts, preds = data
    assert sorted(meta.thing_dataset_id_to_contiguous_id) == [2, 4, 5, 7]  # not 0..N-1
    res = _run(InstanceSegEvaluator(test, str(tmp_path)), dicts, meta, preds)["segm"]

    results = []
    for d, p in zip(dicts, preds):
        for s, sc in zip(p["segs"], p["scores"]):
            if not s["isthing"]:
                continue
            rle = mask_utils.encode(np.asfortranarray((p["pan"] == s["id"]).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            # contiguous id == dataset id for this ADE-like split
            results.append({"image_id": d["image_id"], "category_id": s["category_id"], "segmentation": rle, "score": float(sc)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(meta.json_file)
        ev = COCOeval(gt, gt.loadRes(results), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert res["AP"] == pytest.approx(100 * ev.stats[0], abs=1e-6)
    assert res["AP50"] == pytest.approx(100 * ev.stats[1], abs=1e-6)
    assert 0 < res["AP"] < 100
