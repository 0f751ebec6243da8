import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from retclip.proposals import (
    PROPOSAL_REGISTRY,
    GroundTruthProposals,
    Proposals,
    build_proposal_source,
    masks_to_boxes,
)
from retclip.testing.synthetic import TRAIN_CLASSES, make_synthetic_panoptic


def test_proposals_validate_shapes():
    masks = torch.zeros((2, 4, 5), dtype=torch.bool)
    with pytest.raises(ValueError, match="scores"):
        Proposals(masks=masks, scores=torch.zeros(3), labels=None, boxes=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="bool"):
        Proposals(masks=masks.float(), scores=torch.zeros(2), labels=None, boxes=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="labels"):
        Proposals(
            masks=masks, scores=torch.zeros(2), labels=torch.zeros(1), boxes=torch.zeros(2, 4)
        )
    empty = Proposals.empty(4, 5)
    assert len(empty) == 0 and empty.image_size == (4, 5) and empty.labels.dtype == torch.long


def test_masks_to_boxes_matches_numpy():
    rng = np.random.default_rng(1)
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 3:9, 4:25] = True
    masks[1][rng.random((20, 30)) > 0.97] = True
    boxes = masks_to_boxes(torch.from_numpy(masks)).numpy()
    for m, b in zip(masks[:2], boxes[:2]):
        ys, xs = np.where(m)
        np.testing.assert_array_equal(b, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    np.testing.assert_array_equal(boxes[2], [0, 0, 0, 0])


def test_registry_lists_sources():
    from retclip.config import grounding_dino_config, sam_config

    assert {"ground_truth", "sam_grid", "grounding_dino_sam"} <= set(PROPOSAL_REGISTRY.names())
    with pytest.raises(ValueError, match=r"DATABASE_BUILD.PROPOSALS: .*'NoSuchSource'.*sam_grid"):
        build_proposal_source(
            "NoSuchSource", sam_config(), grounding_dino_config(), key="DATABASE_BUILD.PROPOSALS"
        )
    source = build_proposal_source("ground_truth", sam_config(), grounding_dino_config())
    assert isinstance(source, GroundTruthProposals)


def test_ground_truth_proposals_match_coco_rle(tmp_path):
    split = make_synthetic_panoptic(str(tmp_path), "train", TRAIN_CLASSES, num_images=2, seed=3)
    pan = json.load(open(split.panoptic_json))
    inst = json.load(open(split.instances_json))
    contiguous = {c["id"]: i for i, c in enumerate(TRAIN_CLASSES)}
    ann = pan["annotations"][0]
    dataset_dict = {
        "file_name": f"{split.image_dir}/{pan['images'][0]['file_name']}",
        "pan_seg_file_name": f"{split.panoptic_dir}/{ann['file_name']}",
        "segments_info": [
            dict(s, category_id=contiguous[s["category_id"]]) for s in ann["segments_info"]
        ],
    }
    image = np.zeros((96, 128, 3), np.uint8)
    props = GroundTruthProposals()(image, [c["name"] for c in TRAIN_CLASSES], dataset_dict)
    assert len(props) == len(ann["segments_info"])
    assert props.labels.tolist() == [contiguous[s["category_id"]] for s in ann["segments_info"]]
    # Thing masks equal the instance JSON's RLE masks (an independent encoding of the same pixels).
    rles = [a for a in inst["annotations"] if a["image_id"] == ann["image_id"]]
    assert rles
    for a in rles:
        ref = mask_utils.decode(a["segmentation"]).astype(bool)
        assert any(torch.equal(m, torch.from_numpy(ref)) for m in props.masks)
    # Areas agree with the panoptic JSON.
    assert sorted(props.masks.flatten(1).sum(1).tolist()) == sorted(
        s["area"] for s in ann["segments_info"]
    )
    with pytest.raises(ValueError, match="dataset_dict"):
        GroundTruthProposals()(image)
    with pytest.raises(FileNotFoundError):
        GroundTruthProposals()(
            image, None, dict(dataset_dict, pan_seg_file_name=str(tmp_path / "none.png"))
        )
