"""Config wiring of the two SAM libraries: DATABASE_BUILD.SAM.BACKEND "transformers" builds the
same database as the HFSamBoxSegmenter put together by hand, and bad values are named."""

import json
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg

from retclip import add_retclip_config
from retclip.database_builder import (
    ClipSegmentEncoder,
    DatabaseBuilder,
    FolderSource,
    build_database_builder,
    build_source,
)
from retclip.proposals import (
    GroundingDinoDetector,
    GroundingDinoSamProposals,
    HFSamBoxSegmenter,
    build_box_segmenter,
)
from retclip.proposals.testing import build_tiny_hf_sam
from retclip.retrieval import FeatureDatabase

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "database" / "tiny_test.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_gdino, folder_labels):
    root = tmp_path_factory.mktemp("hf_sam")
    image_dir, labels = folder_labels(root, num_images=3, seed=5)
    (root / "labels.json").write_text(json.dumps(labels))
    for name, (model, processor) in {"gdino": tiny_gdino, "sam": build_tiny_hf_sam()}.items():
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return root, image_dir


def _cfg(root, image_dir, clip_file, out, **extra):
    cfg = get_cfg()
    add_retclip_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    opts = {
        "DATABASE_BUILD.OUTPUT_DIR": str(out),
        "DATABASE_BUILD.PROPOSALS": "grounding_dino_sam",
        "DATABASE_BUILD.SOURCE.TYPE": "folder",
        "DATABASE_BUILD.SOURCE.IMAGE_DIR": image_dir,
        "DATABASE_BUILD.SOURCE.LABELS_FILE": str(root / "labels.json"),
        "DATABASE_BUILD.GROUNDING_DINO.MODEL": str(root / "gdino"),
        "DATABASE_BUILD.GROUNDING_DINO.BOX_THRESHOLD": "0.3",
        "DATABASE_BUILD.GROUNDING_DINO.TEXT_THRESHOLD": "0.0",
        "DATABASE_BUILD.GROUNDING_DINO.MAX_DETECTIONS": "5",
        "DATABASE_BUILD.SAM.BACKEND": "transformers",
        "DATABASE_BUILD.SAM.HF_MODEL": str(root / "sam"),
        "DATABASE_BUILD.BATCH_SIZE": "2",
        "MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS": clip_file,
        "INPUT.MIN_SIZE_TEST": "128",
    }
    opts.update(extra)
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def test_transformers_sam_backend_from_config(setup, tmp_path, tiny_clip_file):
    root, image_dir = setup
    cfg = _cfg(root, image_dir, tiny_clip_file, tmp_path / "db")
    builder = build_database_builder(cfg, progress=False)
    assert isinstance(builder.proposals.segmenter, HFSamBoxSegmenter)
    report = builder.build(build_source(cfg))
    assert report["images"]["ok"] == 3 and report["vectors"] > 0
    assert report["forwards"]["sam.image"] >= 1
    assert report["calls"]["sam.image"] == 2  # 3 images with boxes, 2 per batch (BATCH_SIZE)
    db = FeatureDatabase.open(tmp_path / "db")
    assert db.manifest["build_args"]["sam"]["backend"] == "transformers"

    # The same models assembled by hand, one image at a time.
    model, processor = build_tiny_hf_sam()
    by_hand = DatabaseBuilder(
        encoder=ClipSegmentEncoder.from_names(
            "retclip-tiny-convnext", tiny_clip_file, min_size=128, max_size=512
        ),
        proposals=GroundingDinoSamProposals(
            detector=GroundingDinoDetector.from_pretrained(
                str(root / "gdino"), box_threshold=0.3, text_threshold=0.0, max_detections=5
            ),
            segmenter=HFSamBoxSegmenter(model, processor),
        ),
        output_dir=str(tmp_path / "by_hand"),
        shard_size=2,
        dtype="float32",
        progress=False,
    )
    by_hand.build(FolderSource(image_dir, str(root / "labels.json")))
    a, b = db.load_all(), FeatureDatabase.open(tmp_path / "by_hand").load_all()
    assert list(a.image_ids) == list(b.image_ids) and np.array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.mask_areas, b.mask_areas)
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)


def test_bad_sam_backend_is_named(setup, tmp_path, tiny_clip_file):
    root, image_dir = setup
    cfg = _cfg(
        root, image_dir, tiny_clip_file, tmp_path / "db", **{"DATABASE_BUILD.SAM.BACKEND": "sam2"}
    )
    with pytest.raises(ValueError, match="SAM.BACKEND must be one of .*'sam2'"):
        build_database_builder(cfg, progress=False)
    cfg.DATABASE_BUILD.SAM.BACKEND, cfg.DATABASE_BUILD.SAM.HF_MODEL = "transformers", ""
    with pytest.raises(ValueError, match="needs SAM.HF_MODEL"):
        build_box_segmenter(cfg.DATABASE_BUILD.SAM)
