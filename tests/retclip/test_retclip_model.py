"""The RetCLIP meta-architecture on the tiny config: FC-CLIP's outputs exactly at gamma = 0 in
geometric mode, retrieval that changes scores when gamma > 0, ensemble inputs that reproduce the
outputs, and clear errors for databases that cannot be used."""
import copy

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from PIL import Image

from retclip.modeling.postprocessing import panoptic_inference
from retclip.retrieval import EncoderFingerprint, FeatureDatabase
from retclip.testing.synthetic import make_and_register_synthetic
from retclip.config_file import load_config

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"


def _cfg(name, *opts):
    cfg = load_config(str(CONFIGS / "tests" / name), opts, freeze=False)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_and_register_synthetic(str(tmp_path_factory.mktemp("syn")), prefix="synthetic", num_train=2, num_test=3)


def _inputs(test_name):
    out = []
    for record in DatasetCatalog.get(test_name):
        image = read_image(record["file_name"], format="RGB")
        out.append({"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": image.shape[0],
                    "width": image.shape[1], "record": record})
    return out


def _rgb2id(rgb):
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _build_database(model, inputs, path):
    """Database of the test images' own ground-truth segments, embedded by the model's CLIP."""
    fingerprint = EncoderFingerprint.from_open_clip("retclip-tiny-convnext", "", model.backbone.dim_latent)
    names = model.vocabulary.class_names
    db = FeatureDatabase.create(path, fingerprint, names, source="synthetic_test", dtype="float32")
    with torch.no_grad():
        for x in inputs:
            images = model._preprocess([x])
            dense = model.backbone(images.tensor)["clip_vis_dense"]
            ids = _rgb2id(np.array(Image.open(x["record"]["pan_seg_file_name"])))
            segs = x["record"]["segments_info"]
            masks = torch.zeros(1, len(segs), *images.tensor.shape[-2:])
            for i, s in enumerate(segs):
                masks[0, i, : ids.shape[0], : ids.shape[1]] = torch.from_numpy(ids == s["id"]).float() * 2 - 1
            emb, _ = model._clip_embeddings(dense, masks)
            db.append(emb[0].numpy(), np.array([s["category_id"] for s in segs]),
                      [str(x["record"]["image_id"])] * len(segs))
    return path


@pytest.fixture(scope="module")
def models(synthetic, tmp_path_factory):
    torch.manual_seed(0)
    fcclip = build_model(_cfg("tiny_fcclip_convnext.yaml")).eval()
    inputs = _inputs(synthetic[1])
    db_path = _build_database(fcclip, inputs, tmp_path_factory.mktemp("db") / "tiny")
    return fcclip, inputs, db_path


def _retclip(fcclip, db_path, *opts):
    model = build_model(_cfg("tiny_retclip_convnext.yaml", "MODEL.RETCLIP.DATABASE", str(db_path), *opts)).eval()
    model.load_state_dict(fcclip.state_dict())
    return model


def _strip(x):
    return {k: v for k, v in x.items() if k != "record"}


def test_geometric_with_gamma_zero_equals_fcclip_exactly(models):
    fcclip, inputs, db_path = models
    retclip = _retclip(fcclip, db_path, "MODEL.ENSEMBLE.MODE", "geometric", "MODEL.ENSEMBLE.ALPHA", "0.4",
                       "MODEL.ENSEMBLE.BETA", "0.8", "MODEL.ENSEMBLE.GAMMA", "0.0")
    with torch.no_grad():
        a = fcclip([_strip(x) for x in inputs])
        b = retclip([_strip(x) for x in inputs])
    for ra, rb in zip(a, b):
        assert torch.equal(ra["sem_seg"], rb["sem_seg"])
        assert torch.equal(ra["panoptic_seg"][0], rb["panoptic_seg"][0])
        assert ra["panoptic_seg"][1] == rb["panoptic_seg"][1]
        assert torch.equal(ra["instances"].scores, rb["instances"].scores)


def test_retrieval_changes_scores_and_ensemble_inputs_reproduce_outputs(models):
    fcclip, inputs, db_path = models
    retclip = _retclip(fcclip, db_path)
    retclip.return_ensemble_inputs = True
    with torch.no_grad():
        out = retclip([_strip(x) for x in inputs])
        base = fcclip([_strip(x) for x in inputs])
    assert any(not torch.equal(o["sem_seg"], b["sem_seg"]) for o, b in zip(out, base))
    for o in out:
        ens = o["ensemble_inputs"]
        assert ens["retrieval_available"].all()  # the database holds every test class
        assert ens["retrieval_scores"].max() > 0
        outputs = {"pred_logits": ens["in_vocab_logits"], "clip_logits": ens["clip_logits"],
                   "retrieval_scores": ens["retrieval_scores"], "retrieval_available": ens["retrieval_available"],
                   "valid": ens["valid"]}
        mask_cls = torch.log(retclip.ensemble_probabilities(outputs, 0.4, 0.7, 0.3) + 1e-8)
        padded = torch.nn.functional.interpolate(ens["mask_logits"][None], size=ens["padded_size"],
                                                 mode="bilinear", align_corners=False)
        h, w = ens["image_size"]
        masks = torch.nn.functional.interpolate(padded[:, :, :h, :w], size=ens["output_size"],
                                                mode="bilinear", align_corners=False)[0]
        seg, info = panoptic_inference(mask_cls, masks, object_mask_threshold=retclip.object_mask_threshold,
                                       overlap_threshold=retclip.overlap_threshold,
                                       thing_ids=retclip.vocabulary.thing_ids)
        assert torch.equal(seg, o["panoptic_seg"][0]) and info == o["panoptic_seg"][1]


def test_database_from_another_encoder_is_refused_naming_both(models, tmp_path):
    fcclip, _, _ = models
    other = EncoderFingerprint("ViT-B-16", "openai", 32)
    db = FeatureDatabase.create(tmp_path / "other", other, fcclip.vocabulary.class_names)
    db.append(np.eye(32, dtype=np.float32)[:2], np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="ViT-B-16.*retclip-tiny-convnext|retclip-tiny-convnext.*ViT-B-16"):
        build_model(_cfg("tiny_retclip_convnext.yaml", "MODEL.RETCLIP.DATABASE", str(tmp_path / "other")))


def test_relative_database_path_needs_the_databases_folder(monkeypatch):
    monkeypatch.delenv("RETCLIP_DATABASES", raising=False)
    with pytest.raises(ValueError, match="RETCLIP_DATABASES"):
        build_model(_cfg("tiny_retclip_convnext.yaml", "MODEL.RETCLIP.DATABASE", "ade20k_train_tiny"))


def test_empty_database_is_a_clear_error(models, tmp_path):
    fcclip, _, _ = models
    fingerprint = EncoderFingerprint.from_open_clip("retclip-tiny-convnext", "", 32)
    FeatureDatabase.create(tmp_path / "empty", fingerprint, fcclip.vocabulary.class_names)
    with pytest.raises(ValueError, match="empty"):
        build_model(_cfg("tiny_retclip_convnext.yaml", "MODEL.RETCLIP.DATABASE", str(tmp_path / "empty")))


def test_weights_outside_unit_interval_are_refused():
    with pytest.raises(ValueError, match="MODEL.ENSEMBLE.GAMMA"):
        build_model(_cfg("tiny_retclip_convnext.yaml", "MODEL.ENSEMBLE.GAMMA", "1.5"))
