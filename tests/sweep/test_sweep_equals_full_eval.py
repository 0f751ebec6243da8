"""A sweep point gives the metrics of a full evaluation at that point: the tiny RetCLIP (random
weights, a database of the synthetic test segments) is evaluated with the score cache writer on,
then at three (alpha, beta, gamma) points both by full re-evaluation and by the sweep runner."""

import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data.detection_utils import read_image
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from PIL import Image

from retclip.engine import evaluate_checkpoint
from retclip.ensemble import ENSEMBLE_MODES
from retclip.evaluation import build_evaluator
from retclip.retrieval import EncoderFingerprint, FeatureDatabase
from retclip.sweep.cache import ScoreCache
from retclip.sweep.grid import GridPoint
from retclip.sweep.hooks import score_cache_dir
from retclip.sweep.runner import SweepRunner
from retclip.testing.synthetic import make_and_register_synthetic
from retclip.config_file import load_config

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs" / "tests"
POINTS = [GridPoint(0.4, 0.7, 0.3), GridPoint(1.0, 1.0, 0.0), GridPoint(0.2, 0.9, 0.8)]

pytestmark = pytest.mark.slow


def _cfg(root, train, test, *opts):
    cfg = load_config(str(CONFIGS / "tiny_retclip_convnext.yaml"), opts, freeze=False)
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
    weights = root + "/tiny_retclip.pth"
    torch.save({"model": base.state_dict()}, weights)
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    # The cache is written the one way there is: the --eval-only evaluation of train_net.py.
    evaluate_checkpoint(cfg)
    assert os.path.isfile(os.path.join(root, "metrics_eval.json"))
    model = build_model(cfg).eval()
    model.load_state_dict(base.state_dict())
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


def _harmonic_ensemble(
    in_vocab_logits, clip_logits, seen, alpha, beta, gamma, valid=None, retrieval_scores=None,
    retrieval_available=None,
):
    """A mode defined only here: weighted harmonic mean of p_in and p_out (alpha for all
    classes), plus gamma * s_ret, renormalised; void as the other modes."""
    _harmonic_ensemble.calls += 1
    p_in = in_vocab_logits[..., :-1].softmax(-1)
    p_out = clip_logits[..., :-1].softmax(-1)
    s = 1.0 / ((1.0 - alpha) / p_in.clamp_min(1e-12) + alpha / p_out.clamp_min(1e-12))
    if retrieval_scores is not None:
        s = s + gamma * retrieval_scores
    s = s / s.sum(-1, keepdim=True)
    void = in_vocab_logits.softmax(-1)[..., -1:]
    return torch.cat([s * (1.0 - void), void], dim=-1)


@pytest.fixture
def harmonic_mode():
    _harmonic_ensemble.calls = 0
    ENSEMBLE_MODES.register("harmonic_test")(_harmonic_ensemble)
    yield "harmonic_test"
    ENSEMBLE_MODES.unregister("harmonic_test")


def test_a_mode_registered_once_serves_inference_and_the_sweep(setup, harmonic_mode, tmp_path):
    import sys

    cfg, model, test, cache_dir, root = setup
    sys.path.insert(0, str(CONFIGS.parents[1] / "tools"))
    from sweep_ensemble import build_parser

    # the command line accepts it (its choices are the registry's)
    args = build_parser().parse_args(
        ["--cache", cache_dir, "--output-dir", "x", "--mode", harmonic_mode]
    )
    assert args.mode == harmonic_mode
    point = GridPoint(0.6, 0.5, 0.4)
    rows = SweepRunner(
        cache_dir, str(tmp_path / "sweep"), mode=harmonic_mode, backend="reference", cfg=cfg
    ).run([point])
    swept_calls = _harmonic_ensemble.calls
    assert swept_calls == 3  # once per cached image
    model.ensemble_mode = harmonic_mode
    model.alpha, model.beta, model.gamma = point.alpha, point.beta, point.gamma
    try:
        with torch.no_grad():
            full = _flat(_full_eval(cfg, model, test, f"{root}/full_harmonic"))
        assert _harmonic_ensemble.calls == swept_calls + 3  # inference used it too
        batch = next(iter(build_detection_test_loader(cfg, test)))
        with torch.no_grad():
            harmonic_out = model(batch)[0]["sem_seg"]
            model.ensemble_mode = "arithmetic"
            arithmetic_out = model(batch)[0]["sem_seg"]
    finally:
        model.ensemble_mode = "arithmetic"
        model.alpha, model.beta, model.gamma = 0.4, 0.7, 0.3
    got = _flat(rows[0]["results"])
    assert rows[0]["mode"] == harmonic_mode
    compared = 0
    for key, value in full.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == value, key
            compared += 1
    assert compared > 20
    # the new mode really changed the predictions (the equality above is not arithmetic's)
    assert not torch.allclose(harmonic_out, arithmetic_out)
