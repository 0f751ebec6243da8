"""TrainingFreeRetCLIP end to end with tiny random models on the synthetic ADE-like dataset."""

import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data.detection_utils import read_image
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from retclip.evaluation.build import build_evaluator
from retclip.modeling.meta_arch.training_free import TrainingFreeRetCLIP
from retclip.proposals import HFSamBoxSegmenter, Proposals, ProposalSource
from retclip.proposals.ground_truth import read_panoptic_segments
from retclip.proposals.testing import build_tiny_grounding_dino, build_tiny_hf_sam
from retclip.retrieval import FeatureDatabase
from retclip.testing.synthetic import make_and_register_synthetic
from retclip.config_file import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tests"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf_synthetic")
    _, test = make_and_register_synthetic(
        str(root), prefix="tf_model_synth", num_train=1, num_test=4
    )
    return test


@pytest.fixture(scope="module")
def gdino_dirs(tmp_path_factory):
    """Tiny Grounding DINO saved to folders: the default text limit, and a 16-token one."""
    dirs = {}
    for limit in (256, 16):
        model, processor = build_tiny_grounding_dino(max_text_len=limit, num_queries=4)
        path = tmp_path_factory.mktemp(f"gdino_{limit}")
        model.save_pretrained(path)
        processor.save_pretrained(path)
        dirs[limit] = str(path)
    return dirs


def make_cfg(dataset, tmp_path, config="tiny_training_free_gt.yaml", **opts):
    cfg = load_config(str(CONFIGS / config), [x for kv in opts.items() for x in kv], freeze=False)
    cfg.DATASETS.TEST = (dataset,)
    cfg.OUTPUT_DIR = str(tmp_path)
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)  # the same seed gives the same random CLIP (databases must match)
    return build_model(cfg).eval()


@functools.lru_cache(maxsize=4)
def images_and_segments(dataset):
    """[(dataset dict, 3 x H x W float image, GT masks N x H x W bool, labels N)]."""
    out = []
    for d in DatasetCatalog.get(dataset):
        image = torch.from_numpy(np.array(read_image(d["file_name"], format="RGB"))).permute(
            2, 0, 1
        )
        masks, labels, _ = read_panoptic_segments(d)
        out.append((d, image.float(), torch.from_numpy(masks), torch.from_numpy(labels)))
    return out


@pytest.fixture(scope="module")
def self_database(dataset, tmp_path_factory):
    """A database of the test images' own GT segments, pooled by the seed-0 tiny ViT."""
    tmp = tmp_path_factory.mktemp("tf_db")
    model = build(make_cfg(dataset, tmp))
    meta_names = list(model.vocabulary.class_names)
    db = FeatureDatabase.create(
        tmp / "self_db", model.clip.fingerprint, meta_names, source=dataset, dtype="float32"
    )
    for d, image, masks, labels in images_and_segments(dataset):
        with torch.no_grad():
            feats = model.segment_embeddings(image, masks)
        db.append(feats.numpy(), labels.numpy(), [d["image_id"]] * len(labels))
    return db


def evaluate(model, cfg, dataset):
    loader = build_detection_test_loader(cfg, dataset)
    return inference_on_dataset(model, loader, build_evaluator(cfg, dataset))


def test_retrieval_on_own_segments_classifies_nearly_all(dataset, self_database, tmp_path):
    cfg_clip = make_cfg(dataset, tmp_path / "clip")
    cfg_ret = make_cfg(
        dataset,
        tmp_path / "ret",
        **{
            "MODEL.TRAINING_FREE.MODE": "retrieval",
            "MODEL.RETCLIP.DATABASE": str(self_database.path),
        },
    )
    clip_model, ret_model = build(cfg_clip), build(cfg_ret)
    for a, b in zip(clip_model.clip.state_dict().values(), ret_model.clip.state_dict().values()):
        assert torch.equal(a, b)
    correct = total = 0
    for _, image, masks, labels in images_and_segments(dataset):
        with torch.no_grad():
            probs = ret_model.classify(
                ret_model.segment_embeddings(image, masks), masks.flatten(1).any(1)
            )
        correct += int((probs.argmax(1) == labels).sum())
        total += len(labels)
    assert total >= 8 and correct / total >= 0.9
    pq_ret = evaluate(ret_model, cfg_ret, dataset)["panoptic_seg"]["PQ"]
    pq_clip = evaluate(clip_model, cfg_clip, dataset)["panoptic_seg"]["PQ"]
    assert pq_ret >= 80.0 and pq_ret >= pq_clip + 40.0, (pq_ret, pq_clip)


SOURCES = {
    "ground_truth": "tiny_training_free_gt.yaml",
    "sam_grid": "tiny_training_free_sam_grid.yaml",
    "grounding_dino_sam": "tiny_training_free_gdino_sam.yaml",
}


# One mode per source runs by default; the other six combinations are slow tests.
_FAST = {("ground_truth", "retclip"), ("sam_grid", "retrieval"), ("grounding_dino_sam", "clip")}
COMBINATIONS = [
    pytest.param(
        source,
        mode,
        marks=() if (source, mode) in _FAST else pytest.mark.slow,
        id=f"{source}-{mode}",
    )
    for source in SOURCES
    for mode in ("clip", "retrieval", "retclip")
]


@pytest.mark.parametrize("source,mode", COMBINATIONS)
def test_every_source_and_mode_gives_detectron2_outputs(
    dataset, self_database, gdino_dirs, tmp_path, source, mode
):
    cfg = make_cfg(
        dataset,
        tmp_path,
        SOURCES[source],
        **{
            "MODEL.TRAINING_FREE.MODE": mode,
            "MODEL.RETCLIP.DATABASE": "" if mode == "clip" else str(self_database.path),
            "MODEL.TRAINING_FREE.GROUNDING_DINO.MODEL": gdino_dirs[256],
        },
    )
    model = build(cfg)
    d, image, _, _ = images_and_segments(dataset)[0]
    x = {
        "image": image.to(torch.uint8),
        "height": image.shape[1],
        "width": image.shape[2],
        **{k: d[k] for k in ("file_name", "image_id", "pan_seg_file_name", "segments_info")},
    }
    out = model([x])[0]
    k, (h, w) = len(model.vocabulary), image.shape[1:]
    assert out["num_proposals"] > 0
    assert out["sem_seg"].shape == (k, h, w) and torch.isfinite(out["sem_seg"]).all()
    pan, info = out["panoptic_seg"]
    assert pan.shape == (h, w) and len(info) > 0
    assert set(torch.unique(pan).tolist()) - {0} == {s["id"] for s in info}
    inst = out["instances"]
    assert inst.image_size == (h, w) and len(inst) > 0
    assert set(inst.pred_classes.tolist()) <= model.vocabulary.thing_ids
    if mode == "clip":  # softmax over K classes: a pixel's scores sum to its number of proposals
        covered = out["sem_seg"].sum(0)
        assert torch.allclose(covered, covered.round(), atol=1e-4) and covered.max() >= 1 - 1e-4


def test_no_proposals_gives_empty_outputs(dataset, gdino_dirs, tmp_path):
    cfg = make_cfg(
        dataset,
        tmp_path,
        SOURCES["grounding_dino_sam"],
        **{
            "MODEL.TRAINING_FREE.GROUNDING_DINO.MODEL": gdino_dirs[256],
            "MODEL.TRAINING_FREE.GROUNDING_DINO.BOX_THRESHOLD": 1.0,  # nothing passes a sigmoid > 1
        },
    )
    model = build(cfg)
    _, image, _, _ = images_and_segments(dataset)[0]
    out = model([{"image": image.to(torch.uint8)}])[0]
    h, w = image.shape[1:]
    assert out["num_proposals"] == 0
    pan, info = out["panoptic_seg"]
    assert info == [] and pan.shape == (h, w) and int(pan.abs().sum()) == 0
    assert torch.equal(out["sem_seg"], torch.zeros(len(model.vocabulary), h, w))
    assert len(out["instances"]) == 0


def test_transformers_sam_backend(dataset, gdino_dirs, tmp_path):
    """SAM.BACKEND "transformers": box prompts go to a SamModel loaded from a directory."""
    model, processor = build_tiny_hf_sam()
    model.save_pretrained(tmp_path / "hf_sam")
    processor.save_pretrained(tmp_path / "hf_sam")
    cfg = make_cfg(
        dataset,
        tmp_path,
        SOURCES["grounding_dino_sam"],
        **{
            "MODEL.TRAINING_FREE.GROUNDING_DINO.MODEL": gdino_dirs[256],
            "MODEL.TRAINING_FREE.SAM.BACKEND": "transformers",
            "MODEL.TRAINING_FREE.SAM.HF_MODEL": str(tmp_path / "hf_sam"),
        },
    )
    tf_model = build(cfg)
    segmenter = tf_model.proposal_source.segmenter
    assert isinstance(segmenter, HFSamBoxSegmenter)
    calls = []
    handle = segmenter.image_encoder.register_forward_hook(lambda m, a, o: calls.append(1))
    _, image, _, _ = images_and_segments(dataset)[0]
    out = tf_model([{"image": image.to(torch.uint8)}])[0]
    handle.remove()
    assert out["num_proposals"] > 0 and calls == [1]
    assert out["sem_seg"].shape[1:] == image.shape[1:]


class _WrongSizeProposals(ProposalSource):
    """A proposal source returning masks one row taller than the image (a buggy source)."""

    def __call__(self, image, class_names=None, dataset_dict=None):
        h, w = image.shape[:2]
        masks = torch.ones((1, h + 1, w), dtype=torch.bool)
        return Proposals(masks=masks, scores=torch.ones(1), labels=None, boxes=torch.zeros((1, 4)))


def test_masks_of_wrong_size_are_an_error_naming_both_sizes(dataset, tmp_path):
    kwargs = TrainingFreeRetCLIP.from_config(make_cfg(dataset, tmp_path))
    kwargs["proposal_source"] = _WrongSizeProposals()
    model = TrainingFreeRetCLIP(**kwargs).eval()
    _, image, _, _ = images_and_segments(dataset)[0]
    h, w = image.shape[1:]
    with pytest.raises(ValueError, match=rf"_WrongSizeProposals.*\({h + 1}, {w}\).*\({h}, {w}\)"):
        model([{"image": image.to(torch.uint8)}])


def test_long_vocabulary_prompt_is_chunked(dataset, gdino_dirs, tmp_path):
    cfg = make_cfg(
        dataset,
        tmp_path,
        SOURCES["grounding_dino_sam"],
        **{
            "MODEL.TRAINING_FREE.GROUNDING_DINO.MODEL": gdino_dirs[16],
        },
    )
    model = build(cfg)
    detector = model.proposal_source.detector
    names = list(model.vocabulary.class_names)
    chunks = detector.chunk(names)
    assert len(chunks) > 1 and sorted(i for c in chunks for i in c) == list(range(len(names)))
    text_batches = []
    handle = detector.model.model.text_backbone.register_forward_hook(
        lambda module, args, output: text_batches.append(int(output[0].shape[0]))
    )
    try:
        _, image, _, _ = images_and_segments(dataset)[0]
        out = model([{"image": image.to(torch.uint8)}])[0]
    finally:
        handle.remove()
    assert text_batches == [len(chunks)]  # one text forward holding every chunk
    assert out["num_proposals"] > 0


def test_class_missing_from_database_falls_back_to_clip(dataset, self_database, tmp_path, caplog):
    missing = ["sky", "lamp"]
    partial = self_database.remove_classes(missing, tmp_path / "partial_db")
    cfg_ret = make_cfg(
        dataset,
        tmp_path / "r",
        **{"MODEL.TRAINING_FREE.MODE": "retrieval", "MODEL.RETCLIP.DATABASE": str(partial.path)},
    )
    ret_model, clip_model = build(cfg_ret), build(make_cfg(dataset, tmp_path / "c"))
    names = list(ret_model.vocabulary.class_names)
    absent = [names.index(n) for n in missing]
    present = [i for i in range(len(names)) if i not in absent]
    _, image, masks, labels = images_and_segments(dataset)[0]
    valid = masks.flatten(1).any(1)
    with caplog.at_level(
        logging.WARNING, logger="retclip.modeling.meta_arch.training_free"
    ), torch.no_grad():
        probs = ret_model.classify(ret_model.segment_embeddings(image, masks), valid)
        s_clip = clip_model.classify(clip_model.segment_embeddings(image, masks), valid)
    torch.testing.assert_close(probs[:, absent], s_clip[:, absent])
    assert not torch.allclose(probs[:, present], s_clip[:, present])
    assert any(
        "fall back to CLIP" in r.message and "sky" in r.message and "lamp" in r.message
        for r in caplog.records
    )


def test_bad_configuration_is_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match="needs a feature database"):
        build(make_cfg(dataset, tmp_path, **{"MODEL.TRAINING_FREE.MODE": "retclip"}))
    unknown_source = r"MODEL.TRAINING_FREE.PROPOSALS: unknown proposal source 'boxes'; valid"
    with pytest.raises(ValueError, match=unknown_source):
        build(make_cfg(dataset, tmp_path, **{"MODEL.TRAINING_FREE.PROPOSALS": "boxes"}))
    unknown_mode = r"MODEL.TRAINING_FREE.MODE: unknown training-free mode 'ensemble'; valid"
    with pytest.raises(ValueError, match=unknown_mode):
        build(make_cfg(dataset, tmp_path, **{"MODEL.TRAINING_FREE.MODE": "ensemble"}))
    grid_with_hf = {"MODEL.TRAINING_FREE.SAM.BACKEND": "transformers"}
    with pytest.raises(ValueError, match="'sam_grid' uses segment-anything"):
        build(make_cfg(dataset, tmp_path, SOURCES["sam_grid"], **grid_with_hf))
    model = build(make_cfg(dataset, tmp_path))
    with pytest.raises(RuntimeError, match="--eval-only"):
        model.train()([{"image": torch.zeros(3, 32, 32)}])


@pytest.mark.parametrize("short_side", [0, 64])
def test_database_encoder_gives_the_model_retrieval_keys(dataset, tmp_path, short_side):
    """The builder's path over the model's own recipe reproduces the model's keys (the masks
    are area-pooled at their own resolution on both sides, whatever the ViT input size)."""
    cfg = make_cfg(dataset, tmp_path, **{"MODEL.TRAINING_FREE.CLIP_SHORT_SIDE": short_side})
    model = build(cfg)
    encoder = model.segment_embedding
    assert encoder.fingerprint == model.clip.fingerprint
    _, image, masks, _ = images_and_segments(dataset)[1]
    x, resized = encoder.preprocess(image.permute(1, 2, 0).to(torch.uint8).numpy())
    dense = encoder.dense_features(x[None])[0]
    got, valid = encoder.embed_masks(dense, masks, resized, tuple(x.shape[-2:]))
    assert bool(valid.all())
    keys = torch.nn.functional.normalize(model.segment_embeddings(image, masks), dim=-1)
    torch.testing.assert_close(got, keys, rtol=1e-4, atol=1e-5)


def test_restrict_to_detected_classes_zeroes_undetected_ones(dataset, gdino_dirs, tmp_path):
    cfg = make_cfg(
        dataset,
        tmp_path,
        SOURCES["grounding_dino_sam"],
        **{
            "MODEL.TRAINING_FREE.GROUNDING_DINO.MODEL": gdino_dirs[256],
            "MODEL.TRAINING_FREE.RESTRICT_TO_DETECTED_CLASSES": True,
        },
    )
    model = build(cfg)
    _, image, _, _ = images_and_segments(dataset)[0]
    array = image.permute(1, 2, 0).to(torch.uint8).numpy()
    detected = set(model.proposal_source(array, list(model.vocabulary.class_names)).labels.tolist())
    assert 0 < len(detected) < len(model.vocabulary)
    out = model([{"image": image.to(torch.uint8)}])[0]
    undetected = [k for k in range(len(model.vocabulary)) if k not in detected]
    assert float(out["sem_seg"][undetected].abs().sum()) == 0.0
    assert {s["category_id"] for s in out["panoptic_seg"][1]} <= detected
    assert out["sem_seg"][sorted(detected)].sum() > 0
