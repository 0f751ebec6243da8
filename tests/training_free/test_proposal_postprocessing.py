"""Proposal post-processing against hand-computed tiny examples."""

import pytest
import torch

from retclip.modeling.proposal_postprocessing import (
    proposal_instances,
    proposal_panoptic,
    proposal_scores,
    proposal_semantic,
)


def _masks(*rows_per_mask):
    return torch.tensor([[[c == "#" for c in row] for row in m] for m in rows_per_mask])


# 4 x 4 image, 4 proposals, 3 classes; class 0 is stuff, 1 and 2 are things.
A = ["##..", "##..", "....", "...."]  # score 0.9, class 1 (thing)
B = [".###", ".###", "....", "...."]  # score 0.8, class 2; 4 of its 6 pixels stay free (0.67)
C = ["....", "....", "####", "####"]  # score 0.7, class 0 (stuff)
D = ["....", "....", "..##", "..##"]  # score 0.6, class 0 (stuff); fully under C -> dropped
PROBS = torch.tensor(
    [
        [0.05, 0.90, 0.05],
        [0.10, 0.10, 0.80],
        [0.70, 0.20, 0.10],
        [0.60, 0.30, 0.10],
    ]
)


def test_panoptic_paints_by_descending_score_and_drops_covered():
    masks = _masks(A, B, C, D)
    # threshold 0.5: B keeps 4/6 >= 0.5 -> kept; D keeps 0/4 -> dropped
    pan, info = proposal_panoptic(masks, PROBS, thing_ids={1, 2}, overlap_threshold=0.5)
    expected = torch.tensor(
        [
            [1, 1, 2, 2],
            [1, 1, 2, 2],
            [3, 3, 3, 3],
            [3, 3, 3, 3],
        ],
        dtype=torch.int32,
    )
    assert torch.equal(pan, expected)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in info] == [
        (1, 1, True),
        (2, 2, True),
        (3, 0, False),
    ]
    assert info[0]["score"] == pytest.approx(0.9)
    # threshold 0.8: B keeps only 0.67 of its area -> dropped; its free pixels stay void
    pan, info = proposal_panoptic(masks, PROBS, thing_ids={1, 2}, overlap_threshold=0.8)
    expected_b_dropped = torch.tensor(
        [
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [2, 2, 2, 2],
            [2, 2, 2, 2],
        ],
        dtype=torch.int32,
    )
    assert torch.equal(pan, expected_b_dropped)
    assert [s["category_id"] for s in info] == [1, 0]


def test_panoptic_merges_stuff_and_applies_score_threshold_and_confidence():
    left = ["##..", "##..", "##..", "##.."]
    right = ["..##", "..##", "..##", "..##"]
    masks = _masks(left, right)
    probs = torch.tensor([[0.6, 0.4], [0.9, 0.1]])  # both class 0 (stuff)
    pan, info = proposal_panoptic(masks, probs, thing_ids={1}, overlap_threshold=0.8)
    assert len(info) == 1 and info[0]["category_id"] == 0 and not info[0]["isthing"]
    assert torch.equal(pan, torch.ones(4, 4, dtype=torch.int32))  # one merged segment
    # as things they stay separate; the higher score (right) is painted first -> id 1
    pan, info = proposal_panoptic(masks, probs, thing_ids={0}, overlap_threshold=0.8)
    assert pan[0, 3] == 1 and pan[0, 0] == 2
    # score threshold drops the 0.6 proposal
    pan, info = proposal_panoptic(
        masks, probs, thing_ids={0}, overlap_threshold=0.8, object_score_threshold=0.7
    )
    assert len(info) == 1 and int((pan == 0).sum()) == 8
    # confidence reorders: 0.6 * 1.0 > 0.9 * 0.5 -> left painted first; right keeps 4/12 free
    overlapping = _masks(["###.", "###.", "###.", "###."], [".###", ".###", ".###", ".###"])
    pan, info = proposal_panoptic(
        overlapping,
        probs,
        thing_ids={0},
        overlap_threshold=0.3,
        confidence=torch.tensor([1.0, 0.5]),
    )
    assert pan[0, 1] == 1 and pan[0, 2] == 1 and pan[0, 3] == 2
    assert info[0]["score"] == pytest.approx(0.6) and info[1]["score"] == pytest.approx(0.45)


def test_semantic_sums_class_probabilities_over_covering_proposals():
    masks = _masks(A, B, C, D)
    sem = proposal_semantic(masks, PROBS)
    assert sem.shape == (3, 4, 4)
    # pixel (0, 2): covered by B only; (0, 1): A and B; (3, 3): C and D; nothing uncovered here
    assert torch.allclose(sem[:, 0, 2], torch.tensor([0.10, 0.10, 0.80]))
    assert torch.allclose(sem[:, 0, 1], torch.tensor([0.15, 1.00, 0.85]))
    assert torch.allclose(sem[:, 3, 3], torch.tensor([1.30, 0.50, 0.20]))
    uncovered = proposal_semantic(_masks(A), PROBS[:1])
    assert torch.equal(uncovered[:, 3, 3], torch.zeros(3))


def test_instances_top_pairs_things_only_with_boxes():
    masks = _masks(A, B, C, D)
    inst = proposal_instances(masks, PROBS, topk=3, thing_ids={1, 2}, things_only=True)
    # top-3 pairs: (A,1) .9, (B,2) .8, (C,0) .7 -> stuff (C,0) filtered out
    assert inst.pred_classes.tolist() == [1, 2]
    assert torch.allclose(inst.scores, torch.tensor([0.9, 0.8]))
    assert torch.equal(inst.pred_masks[0], masks[0]) and torch.equal(inst.pred_masks[1], masks[1])
    assert inst.pred_boxes.tensor.tolist() == [[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 4.0, 2.0]]
    all_pairs = proposal_instances(masks, PROBS, topk=100, thing_ids={1, 2}, things_only=False)
    assert len(all_pairs) == 12  # N x K pairs, fewer than topk


def test_empty_proposals_give_empty_outputs():
    masks = torch.zeros((0, 5, 6), dtype=torch.bool)
    probs = torch.zeros((0, 3))
    pan, info = proposal_panoptic(masks, probs, thing_ids={1}, overlap_threshold=0.8)
    assert pan.shape == (5, 6) and int(pan.abs().sum()) == 0 and info == []
    assert torch.equal(proposal_semantic(masks, probs), torch.zeros(3, 5, 6))
    inst = proposal_instances(masks, probs, topk=10, thing_ids={1}, things_only=True)
    assert len(inst) == 0 and inst.image_size == (5, 6)


def test_bad_inputs_name_the_shapes():
    with pytest.raises(ValueError, match="bool"):
        proposal_panoptic(
            torch.zeros(1, 2, 2), torch.ones(1, 2), thing_ids=set(), overlap_threshold=0.5
        )
    with pytest.raises(ValueError, match="N x K with N = 2"):
        proposal_semantic(torch.zeros(2, 2, 2, dtype=torch.bool), torch.ones(3, 2))
    with pytest.raises(ValueError, match="empty vocabulary"):
        proposal_scores(torch.zeros(2, 0))
