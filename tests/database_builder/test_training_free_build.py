"""A database built for the training-free variant uses its dense CLIP ViT, so the
TrainingFreeRetCLIP model accepts it (same encoder fingerprint) and retrieves from it."""
from pathlib import Path

import open_clip
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from retclip.database_builder.factory import build_encoder, run_build, setup_build_config
from retclip.modeling.segment_embedding import ViTSegmentEmbedding
from retclip.retrieval import FeatureDatabase
from retclip.config_file import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit") / "tiny_vit.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("retclip-tiny-vit").state_dict(), path)
    return str(path)


CONFIG = str(ROOT / "configs/database/tiny_test_training_free.yaml")


def _vit_opts(vit_file):
    return ["MODEL.TRAINING_FREE.CLIP_PRETRAINED_WEIGHTS", vit_file]


def test_training_free_configs_build_with_the_dense_vit(vit_file):
    cfg = setup_build_config(CONFIG, _vit_opts(vit_file))
    encoder = build_encoder(cfg)
    assert isinstance(encoder, ViTSegmentEmbedding)
    assert encoder.fingerprint.model_name.startswith("retclip-tiny-vit+dense")
    assert encoder.fingerprint.weights.startswith("sha256:")


@pytest.mark.slow
def test_database_from_the_builder_serves_the_training_free_model(vit_file, tmp_path):
    db_dir = tmp_path / "db"
    run_build(CONFIG, _vit_opts(vit_file) + ["DATABASE_BUILD.OUTPUT_DIR", str(db_dir)], progress=False)
    db = FeatureDatabase.open(db_dir)
    assert len(db) > 0
    cfg = load_config(str(ROOT / "configs/tests/tiny_training_free_gt.yaml"),
                      ["MODEL.TRAINING_FREE.CLIP_PRETRAINED_WEIGHTS", vit_file,
                       "MODEL.TRAINING_FREE.MODE", "retrieval", "MODEL.RETCLIP.DATABASE", str(db_dir)],
                      freeze=False)
    model = build_model(cfg).eval()  # refuses a database from another encoder
    record = DatasetCatalog.get("retclip_synthetic_test")[0]
    image = read_image(record["file_name"], format="RGB")
    x = dict(record, image=torch.as_tensor(image.transpose(2, 0, 1).copy()))
    with torch.no_grad():
        seg, segments = model([x])[0]["panoptic_seg"]
    # The database holds this image's own ground-truth segments: retrieval names them right.
    truth = {s["category_id"] for s in record["segments_info"]}
    predicted = {s["category_id"] for s in segments}
    assert len(predicted & truth) >= 0.75 * len(truth)
