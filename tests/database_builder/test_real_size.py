"""The build with real-size model classes (random weights) on one real photo: Grounding DINO-T
(Swin-T + BERT-base), SAM ViT-B, CLIP RN50 (convnext_large_d_320 is too heavy for this budget)."""

import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from retclip.database_builder import (
    ConvSegmentEmbedding,
    DatabaseBuilder,
    FolderSource,
    ForwardCounter,
    watch_models,
)
from retclip.proposals import GroundingDinoDetector, GroundingDinoSamProposals, SamBoxSegmenter
from retclip.proposals.testing import build_grounding_dino_random, build_sam_vit_b_random
from retclip.retrieval import FeatureDatabase


@pytest.mark.slow
def test_real_size_pipeline_on_astronaut(tmp_path):
    Image.fromarray(skimage.data.astronaut()).save(
        tmp_path / "astronaut.png"
    )  # public domain (NASA)
    (tmp_path / "labels.json").write_text(
        json.dumps({"astronaut.png": ["person", "flag", "rocket"]})
    )
    encoder = ConvSegmentEmbedding.from_names("RN50", "", min_size=512, max_size=1333)
    detector = GroundingDinoDetector(
        *build_grounding_dino_random(), box_threshold=0.0, text_threshold=0.0, max_detections=4
    )
    proposals = GroundingDinoSamProposals(
        detector=detector, segmenter=SamBoxSegmenter(build_sam_vit_b_random())
    )
    counter = ForwardCounter()
    watch_models(counter, encoder, proposals)
    builder = DatabaseBuilder(
        encoder=encoder,
        proposals=proposals,
        output_dir=str(tmp_path / "db"),
        shard_size=1,
        counter=counter,
        progress=False,
    )
    report = builder.build(FolderSource(str(tmp_path), str(tmp_path / "labels.json")))
    assert report["forwards"] == {
        "clip.image": 1,
        "grounding_dino.calls": 1,
        "grounding_dino.image": 1,
        "grounding_dino.text_prompts": 1,
        "sam.image": 1,
        "sam.mask_decoder_calls": 1,
    }
    db = FeatureDatabase.open(tmp_path / "db")
    rows = db.load_all()
    assert db.fingerprint.model_name == "RN50" and db.embed_dim == 1024
    assert 1 <= len(rows) <= 4 and report["masks_empty_at_clip_resolution"] == 4 - len(rows)
    np.testing.assert_allclose(
        np.linalg.norm(rows.features.astype(np.float32), axis=1), 1.0, atol=2e-3
    )  # float16 storage
    assert (rows.boxes[:, 2] <= 512).all() and (rows.mask_areas > 0).all()
    assert report["images_per_second"] > 0
