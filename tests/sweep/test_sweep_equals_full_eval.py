"""A sweep point gives the metrics of a full evaluation at that point: the tiny RetCLIP (random
weights, a database of the synthetic test segments) is evaluated with the score cache writer on,
then at three (alpha, beta, gamma) points both by full re-evaluation and by the sweep runner."""

import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data.detection_utils import read_image
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from PIL import Image

from retclip import add_retclip_config
from retclip.evaluation import build_evaluator
from retclip.retrieval import EncoderFingerprint, FeatureDatabase
from retclip.sweep.cache import ScoreCache
from retclip.sweep.grid import GridPoint
from retclip.sweep.hooks import add_score_cache, score_cache_dir
from retclip.sweep.runner import SweepRunner
from retclip.testing.synthetic import make_and_register_synthetic

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "tests"
POINTS = [GridPoint(0.4, 0.7, 0.3), GridPoint(1.0, 1.0, 0.0), GridPoint(0.2, 0.9, 0.8)]

pytestmark = pytest.mark.slow


def _cfg(root, train, test, *opts):
    cfg = get_cfg()
    add_retclip_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "tiny_retclip_convnext.yaml"))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (test,)
    cfg.OUTPUT_DIR = root
    cfg.INPUT.MIN_SIZE_TEST = 64  # masks are resized back to 96 x 128: the resize path is exercised
    for key in ("SEMANTIC_ON", "PANOPTIC_ON", "INSTANCE_ON"):
        setattr(cfg.MODEL.MASK_FORMER.TEST, key, True)
    return cfg


def _rgb2id(rgb):
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _database(model, test, path):
    """The test images' ground-truth segments embedded by the model's own CLIP (tiny, random)."""
    fp = EncoderFingerprint.from_open_clip("retclip-tiny-convnext", "", model.backbone.dim_latent)
    db = FeatureDatabase.create(
        path, fp, model.vocabulary.class_names, source="sweep_test", dtype="float32"
    )
    with torch.no_grad():
        for record in DatasetCatalog.get(test):
            img = read_image(record["file_name"], format="RGB")
            images = model._preprocess([{"image": torch.as_tensor(img.transpose(2, 0, 1).copy())}])
            dense = model.backbone(images.tensor)["clip_vis_dense"]
            ids = _rgb2id(np.array(Image.open(record["pan_seg_file_name"])))
            segs = record["segments_info"]
            masks = torch.full((1, len(segs), *images.tensor.shape[-2:]), -1.0)
            for i, s in enumerate(segs):
                masks[0, i, : ids.shape[0], : ids.shape[1]] = (
                    torch.from_numpy(ids == s["id"]).float() * 2 - 1
                )
            emb, _ = model._clip_embeddings(dense, masks)
            db.append(
                emb[0].numpy(),
                np.array([s["category_id"] for s in segs]),
                [str(record["image_id"])] * len(segs),
            )
    return str(path)


def _full_eval(cfg, model, test, out_dir, extra=None):
    evaluator = build_evaluator(cfg, test, out_dir)
    if extra is not None:
        evaluator = extra(evaluator)
    return inference_on_dataset(model, build_detection_test_loader(cfg, test), evaluator)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sweep_e2e"))
    train, test = make_and_register_synthetic(
        root, prefix="sweepe2e", num_train=2, num_test=3, seed=4
    )
    torch.manual_seed(0)
    base = build_model(_cfg(root, train, test)).eval()  # no database yet: only to embed segments
    db = _database(base, test, tmp_path_factory.mktemp("db") / "tiny")
    cfg = _cfg(
        root, train, test, "MODEL.RETCLIP.DATABASE", db, "TEST.SCORE_CACHE_DIR", root + "/cache"
    )
    model = build_model(cfg).eval()
    model.load_state_dict(base.state_dict())
    with torch.no_grad():
        _full_eval(
            cfg, model, test, root + "/eval0", lambda e: add_score_cache(cfg, model, e, test)
        )
    model.return_ensemble_inputs = False
    return cfg, model, test, score_cache_dir(cfg, test), root


def _flat(results):
    return {(task, k): v for task, values in results.items() for k, v in values.items()}


def test_cache_is_complete_and_records_the_model(setup):
    cfg, model, test, cache_dir, _ = setup
    cache = ScoreCache(cache_dir, expected_fingerprint=model.ensemble_fingerprint())
    assert len(cache) == len(DatasetCatalog.get(test)) and not cache.missing_image_ids
    assert cache.manifest["complete"] is True
    image = cache.load(cache.image_ids[0])
    assert tuple(image.info["image_size"]) == (64, 85) and (
        image.info["height"],
        image.info["width"],
    ) == (96, 128)


def test_sweep_points_equal_full_evaluations(setup, tmp_path):
    cfg, model, test, cache_dir, root = setup
    swept = {}
    for backend in ("reference", "hotcoco"):
        rows = SweepRunner(
            cache_dir, str(tmp_path / backend), mode="arithmetic", backend=backend, cfg=cfg
        ).run(POINTS)
        swept[backend] = {(r["alpha"], r["beta"], r["gamma"]): _flat(r["results"]) for r in rows}
    fulls = []
    for i, p in enumerate(POINTS):
        model.alpha, model.beta, model.gamma = p.alpha, p.beta, p.gamma
        with torch.no_grad():
            full = _flat(_full_eval(cfg, model, test, f"{root}/full_{i}"))
        fulls.append(full)
        for backend, by_point in swept.items():
            got = by_point[(p.alpha, p.beta, p.gamma)]
            compared = 0
            for key, value in full.items():
                if key not in got:
                    assert backend == "hotcoco" and key == ("sem_seg", "mIoU_d2v06"), key
                    continue
                if math.isnan(value):
                    assert math.isnan(got[key]), (backend, key)
                elif backend == "reference":
                    assert got[key] == value, (
                        backend,
                        key,
                    )  # the same functions on the same tensors
                else:
                    assert got[key] == pytest.approx(value, abs=1e-9), (backend, key)
                compared += 1
            assert compared > 20
    model.alpha, model.beta, model.gamma = 0.4, 0.7, 0.3
    # The points really give different, non-trivial metrics (so the equalities are not vacuous).
    assert len({f[("sem_seg", "mIoU")] for f in fulls}) == 3
    assert all(f[("sem_seg", "mIoU")] > 0 for f in fulls)
