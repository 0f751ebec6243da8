"""End-to-end builds in-process: tiny Grounding DINO + tiny SAM + tiny CLIP on synthetic images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from retclip.database_builder import (
    ConvSegmentEmbedding,
    DatabaseBuilder,
    FolderSource,
    ForwardCounter,
    masks_to_logits,
    watch_models,
)
from retclip.proposals import GroundingDinoDetector, GroundingDinoSamProposals, SamBoxSegmenter
from retclip.retrieval import FeatureDatabase


@pytest.fixture(scope="module")
def folder(tmp_path_factory, folder_labels):
    """Four synthetic images labelled from their annotations, plus a corrupt file, a missing file
    and an image without labels."""
    root = tmp_path_factory.mktemp("src")
    _, labels = folder_labels(root, num_images=4, seed=2)
    (root / "train" / "images" / "zz_corrupt.jpg").write_bytes(b"this is not a jpeg")
    labels["zz_corrupt.jpg"] = ["cat"]
    labels["zz_missing.jpg"] = ["car"]
    Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(
        root / "train" / "images" / "zz_unlabelled.jpg"
    )
    labels["zz_unlabelled.jpg"] = []
    (root / "labels.json").write_text(json.dumps(labels))
    return str(root / "train" / "images"), str(root / "labels.json")


def _builder(
    out, tiny_gdino, tiny_sam, clip_file, box_threshold=0.3, clip_name="retclip-tiny-convnext",
    batch_size=1,
):
    encoder = ConvSegmentEmbedding.from_names(clip_name, clip_file, min_size=128, max_size=400)
    detector = GroundingDinoDetector(
        *tiny_gdino, box_threshold=box_threshold, text_threshold=0.0, max_detections=5
    )
    proposals = GroundingDinoSamProposals(detector=detector, segmenter=SamBoxSegmenter(tiny_sam))
    counter = ForwardCounter()
    watch_models(counter, encoder, proposals)
    builder = DatabaseBuilder(
        encoder=encoder,
        proposals=proposals,
        output_dir=str(out),
        shard_size=3,
        batch_size=batch_size,
        dtype="float32",
        counter=counter,
        progress=False,
    )
    return builder, counter


@pytest.fixture(scope="module")
def built(tmp_path_factory, folder, tiny_gdino, tiny_sam, tiny_clip_file):
    out = tmp_path_factory.mktemp("db") / "db"
    builder, counter = _builder(out, tiny_gdino, tiny_sam, tiny_clip_file)
    source = FolderSource(*folder)
    report = builder.build(source)
    yield builder, source, report, FeatureDatabase.open(out)
    counter.close()


def test_manifest_and_report(built):
    builder, source, report, db = built
    assert db.fingerprint == builder.encoder.fingerprint
    assert db.class_names == source.vocabulary and len(db) == report["vectors"] > 0
    assert len(db.shard_names) == 3  # 7 images / 3 per shard
    imgs = report["images"]
    assert imgs["total"] == 7 and imgs["ok"] == 4
    assert sorted(u["image_id"] for u in imgs["unreadable"]) == ["zz_corrupt.jpg", "zz_missing.jpg"]
    assert imgs["no_labels"] == ["zz_unlabelled.jpg"]
    assert sum(report["segments_per_class"].values()) == len(db)


def test_one_forward_per_model_per_image(built):
    _, _, report, db = built
    f = report["forwards"]
    images_with_rows = len(set(db.load_all().image_ids))
    assert (
        f["grounding_dino.image"] == 4
    )  # every readable labelled image, however many prompt chunks
    assert f["grounding_dino.text_prompts"] >= 4
    assert f["sam.image"] <= 4 and f["clip.image"] <= f["sam.image"]
    assert f["clip.image"] == images_with_rows
    assert report["images_per_second"] > 0


def test_features_equal_independent_pooling(built, numpy_embedding):
    builder, source, _, db = built
    rows = db.load_all()
    record = next(r for r in source.records() if r.image_id in set(rows.image_ids))
    image = np.asarray(Image.open(record.path).convert("RGB"))
    props = builder.proposals(image, record.labels)
    enc = builder.encoder
    x, resized = enc.preprocess(image)
    dense = enc.dense_features(x[None])[0]
    mine = [i for i, img in enumerate(rows.image_ids) if img == record.image_id]
    logits = masks_to_logits(props.masks, resized, tuple(x.shape[-2:]))
    valid = enc.pool(dense[None], logits[None])[1][0]
    assert len(mine) == int(valid.sum())
    kept = np.flatnonzero(valid.numpy())
    for row, p in zip(mine, kept):
        ref = numpy_embedding(
            enc, dense.double().numpy(), props.masks[p].numpy(), resized, tuple(x.shape[-2:])
        )
        np.testing.assert_allclose(rows.features[row], ref, atol=3e-5)
        assert source.vocabulary[rows.labels[row]] == record.labels[int(props.labels[p])]
        np.testing.assert_allclose(rows.boxes[row], props.boxes[p].numpy(), atol=1e-4)
        assert rows.mask_areas[row] == props.masks[p].sum()


def test_labels_without_detection_are_counted(
    tmp_path, folder, tiny_gdino, tiny_sam, tiny_clip_file
):
    builder, counter = _builder(
        tmp_path / "db", tiny_gdino, tiny_sam, tiny_clip_file, box_threshold=1.0
    )
    report = builder.build(FolderSource(*folder))
    counter.close()
    assert report["vectors"] == 0
    labels = json.load(open(folder[1]))
    expected = {}
    for image, names in labels.items():
        if not image.startswith("zz_"):  # unreadable images' labels are not "undetected"
            for n in names:
                expected[n] = expected.get(n, 0) + 1
    assert report["labels_without_detection"] == expected
    assert "sam.image" not in report["forwards"] and "clip.image" not in report["forwards"]


def test_other_encoder_is_refused(built, folder, tiny_gdino, tiny_sam):
    builder, _, _, db = built
    other, counter = _builder(db.path, tiny_gdino, tiny_sam, "", clip_name="retclip-tiny-resnet")
    with pytest.raises(ValueError) as err:
        other.build(FolderSource(*folder))
    counter.close()
    assert str(builder.encoder.fingerprint) in str(err.value) and str(
        other.encoder.fingerprint
    ) in str(err.value)


def test_class_agnostic_proposals_are_refused(tmp_path, folder, tiny_sam, tiny_clip_file):
    from retclip.proposals import SamGridProposals

    encoder = ConvSegmentEmbedding.from_names(
        "retclip-tiny-convnext", tiny_clip_file, min_size=128, max_size=400
    )
    grid = SamGridProposals(
        sam=tiny_sam, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    builder = DatabaseBuilder(
        encoder=encoder, proposals=grid, output_dir=str(tmp_path / "db"), progress=False
    )
    with pytest.raises(ValueError, match="SamGridProposals gives no class hints"):
        builder.build(FolderSource(*folder))


def test_batched_forwards_give_the_same_rows(built, tmp_path, tiny_gdino, tiny_sam, tiny_clip_file):
    """Images of one shard go through Grounding DINO, SAM and CLIP together (batch_size 4);
    the rows are those of the one-image-at-a-time build, and every image still goes through
    each model exactly once."""
    _, source, report, db = built
    builder, counter = _builder(tmp_path / "db", tiny_gdino, tiny_sam, tiny_clip_file, batch_size=4)
    batched_report = builder.build(source)
    counter.close()
    batched = FeatureDatabase.open(tmp_path / "db").load_all()
    single = db.load_all()
    assert list(batched.image_ids) == list(single.image_ids)
    assert np.array_equal(batched.labels, single.labels)
    np.testing.assert_allclose(batched.features, single.features, atol=1e-5)
    np.testing.assert_allclose(batched.boxes, single.boxes, atol=1e-3)
    np.testing.assert_array_equal(batched.mask_areas, single.mask_areas)
    for model in ("grounding_dino.image", "sam.image", "clip.image"):
        assert batched_report["forwards"][model] == report["forwards"][model], model
        assert report["calls"][model] == report["forwards"][model], model  # one image per call
    # 4 labelled readable 96 x 128 images in shards of 3 (3 + 1 + the unreadable ones): one
    # batched call per shard and model instead of one per image.
    assert report["forwards"]["grounding_dino.image"] == 4
    assert batched_report["calls"]["grounding_dino.image"] == 2
    assert batched_report["calls"]["sam.image"] == 2 and report["calls"]["sam.image"] == 4
    assert report["forwards"]["clip.image"] == 4
    assert batched_report["calls"]["clip.image"] == 2
