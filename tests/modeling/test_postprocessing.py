"""Semantic, panoptic and instance post-processing against hand-built cases and loop references."""

import itertools
import math

import pytest
import torch
from detectron2.structures import Boxes, Instances

from retclip.modeling.postprocessing import (
    MaskProbabilities,
    instance_inference,
    panoptic_inference,
    semantic_inference,
    WINNER_TILE,
    winning_queries,
)

P, N = 10.0, -10.0


def test_semantic_equals_loop_reference():
    g = torch.Generator().manual_seed(0)
    mask_cls, mask_pred = torch.randn(3, 5, generator=g), torch.randn(3, 4, 6, generator=g)
    out = semantic_inference(mask_cls, mask_pred)
    assert out.shape == (4, 4, 6)
    for c, y, x in itertools.product(range(4), range(4), range(6)):
        ref = 0.0
        for q in range(3):
            e = [math.exp(v) for v in mask_cls[q].tolist()]
            ref += e[c] / sum(e) / (1 + math.exp(-mask_pred[q, y, x].item()))
        assert abs(out[c, y, x].item() - ref) < 1e-5


def _panoptic_case():
    # classes: 0 thing, 1 stuff, 2 stuff, void = 3
    mask_cls = torch.tensor(
        [[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 4.0, 0, 0], [0, 0, 0, 5.0], [0, 0, 3.0, 0]]
    )
    m = torch.full((5, 4, 4), N)
    m[0, :, 0:2] = P  # thing, left half
    m[1, 0:2, 2:4] = P  # stuff 1, top right
    m[2, 2:4, 3] = P  # stuff 1, bottom right column
    m[3] = P  # void query covering everything
    m[4, :, 1:3] = P  # stuff 2: wins only (2,2) and (3,2): 2 of its 8 pixels
    return mask_cls, m


def test_panoptic_merges_stuff_drops_void_and_low_overlap():
    mask_cls, m = _panoptic_case()
    seg, info = panoptic_inference(
        mask_cls, m, object_mask_threshold=0.0, overlap_threshold=0.8, thing_ids={0}
    )
    expected = torch.tensor(
        [[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 0, 2], [1, 1, 0, 2]], dtype=torch.int32
    )
    assert seg.dtype == torch.int32 and torch.equal(seg, expected)
    assert info == [
        {"id": 1, "isthing": True, "category_id": 0},
        {"id": 2, "isthing": False, "category_id": 1},
    ]


def test_panoptic_overlap_threshold_keeps_partly_covered_segment():
    mask_cls, m = _panoptic_case()
    seg, info = panoptic_inference(
        mask_cls, m, object_mask_threshold=0.0, overlap_threshold=0.2, thing_ids={0}
    )
    assert seg[2, 2].item() == seg[3, 2].item() == 3
    assert info[-1] == {"id": 3, "isthing": False, "category_id": 2}


def _panoptic_loop_reference(mask_cls, mask_pred, object_mask_threshold, overlap_threshold, thing_ids):
    """Mask2Former's per-query loop, written out: one pass over the image per kept query."""
    probs = torch.softmax(mask_cls, -1)
    scores, labels = probs.max(-1)
    keep = (labels != mask_cls.shape[-1] - 1) & (scores > object_mask_threshold)
    s, c, m = scores[keep], labels[keep], mask_pred[keep].sigmoid()
    seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32)
    info, stuff, next_id = [], {}, 0
    if len(s) == 0:
        return seg, info
    winner = (s[:, None, None] * m).argmax(0)
    for k in range(len(s)):
        cls = int(c[k])
        won, own = winner == k, m[k] >= 0.5
        region = won & own
        if won.sum() == 0 or own.sum() == 0 or region.sum() == 0:
            continue
        if won.sum().item() / own.sum().item() < overlap_threshold:
            continue
        if cls not in thing_ids and cls in stuff:
            seg[region] = stuff[cls]
            continue
        next_id += 1
        if cls not in thing_ids:
            stuff[cls] = next_id
        seg[region] = next_id
        info.append({"id": next_id, "isthing": cls in thing_ids, "category_id": cls})
    return seg, info


def test_panoptic_equals_per_query_loop_on_random_cases():
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        q, k = 30, 6
        mask_cls = torch.randn(q, k + 1, generator=g) * 3
        mask_pred = torch.randn(q, 24, 32, generator=g) * 4 + torch.randn(q, 1, 1, generator=g) * 3
        for obj_t, ov_t in ((0.0, 0.8), (0.5, 0.3), (0.0, 0.0)):
            args = dict(object_mask_threshold=obj_t, overlap_threshold=ov_t, thing_ids={0, 2, 3})
            seg, info = panoptic_inference(mask_cls, mask_pred, **args)
            ref_seg, ref_info = _panoptic_loop_reference(mask_cls, mask_pred, obj_t, ov_t, {0, 2, 3})
            assert torch.equal(seg, ref_seg), (trial, obj_t, ov_t)
            assert info == ref_info, (trial, obj_t, ov_t)


def test_panoptic_object_threshold_and_empty():
    mask_cls, m = _panoptic_case()
    # class-2 query scores e^3 / (e^3 + 3) = 0.87 < 0.9: not a candidate at all
    seg, info = panoptic_inference(
        mask_cls, m, object_mask_threshold=0.9, overlap_threshold=0.2, thing_ids={0}
    )
    assert [s["category_id"] for s in info] == [0, 1]
    seg, info = panoptic_inference(
        mask_cls[3:4], m[3:4], object_mask_threshold=0.0, overlap_threshold=0.8, thing_ids={0}
    )
    assert info == [] and int(seg.abs().sum()) == 0 and seg.shape == (4, 4)


def test_instances_topk_scores_and_things_only():
    g = torch.Generator().manual_seed(1)
    mask_cls, mask_pred = torch.randn(2, 4, generator=g), torch.randn(2, 5, 5, generator=g)
    probs = mask_cls.softmax(-1)[:, :-1]
    pairs = sorted(((probs[q, c].item(), q, c) for q in range(2) for c in range(3)), reverse=True)[
        :4
    ]
    out = instance_inference(mask_cls, mask_pred, topk=4, thing_ids={0, 1, 2}, things_only=False)
    assert isinstance(out, Instances) and out.image_size == (5, 5) and len(out) == 4
    assert isinstance(out.pred_boxes, Boxes) and float(out.pred_boxes.tensor.abs().sum()) == 0.0
    got = sorted(zip(out.pred_classes.tolist(), out.scores.tolist()), key=lambda t: -t[1])
    expected = []
    for p, q, c in pairs:
        binary = mask_pred[q] > 0
        inside = mask_pred[q].sigmoid()[binary].sum().item() / (binary.sum().item() + 1e-6)
        expected.append((c, p * inside))
    expected.sort(key=lambda t: -t[1])
    for (c1, s1), (c2, s2) in zip(got, expected):
        assert c1 == c2 and abs(s1 - s2) < 1e-6
    assert set(out.pred_masks.unique().tolist()) <= {0.0, 1.0}

    things = instance_inference(mask_cls, mask_pred, topk=100, thing_ids={1}, things_only=True)
    assert len(things) == 2 and things.pred_classes.tolist() == [1, 1]  # k capped at Q*K = 6


def test_shared_mask_probabilities_give_the_same_outputs():
    """Passing MaskProbabilities (as a sweep does for all grid points of an image) changes
    nothing, and probabilities of other masks are refused."""
    g = torch.Generator().manual_seed(7)
    mask_cls = torch.randn(12, 6, generator=g) * 3
    mask_pred = torch.randn(12, 20, 28, generator=g) * 4
    shared = MaskProbabilities(mask_pred)
    assert torch.equal(
        semantic_inference(mask_cls, mask_pred, shared), semantic_inference(mask_cls, mask_pred)
    )
    args = dict(object_mask_threshold=0.0, overlap_threshold=0.5, thing_ids={0, 1})
    seg, info = panoptic_inference(mask_cls, mask_pred, mask_prob=shared, **args)
    ref_seg, ref_info = panoptic_inference(mask_cls, mask_pred, **args)
    assert torch.equal(seg, ref_seg) and info == ref_info and len(info) > 0
    assert torch.equal(shared.own_area, (mask_pred.sigmoid() >= 0.5).flatten(1).sum(1).int())
    kw = dict(topk=10, thing_ids={0, 1, 2}, things_only=True)
    a = instance_inference(mask_cls, mask_pred, mask_prob=shared, **kw)
    b = instance_inference(mask_cls, mask_pred, **kw)
    assert len(a) == len(b) > 0
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_masks, b.pred_masks)
    assert torch.equal(a.pred_classes, b.pred_classes)
    with pytest.raises(ValueError, match=r"\(12, 20, 28\).*\(12, 10, 28\)"):
        semantic_inference(mask_cls, mask_pred[:, :10], shared)


def _blob_masks(g, q, h, w, levels=None):
    """Sharp blob-shaped mask logits (as a trained model's), optionally quantised to a few values
    so that many pixels tie."""
    centers = torch.rand(q, 2, generator=g) * torch.tensor([h, w])
    radius = 5 + torch.rand(q, 1, 1, generator=g) * 25
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dist = ((ys - centers[:, 0, None, None]) ** 2 + (xs - centers[:, 1, None, None]) ** 2).sqrt()
    logits = (radius - dist) * 0.8
    if levels is not None:
        logits = (logits / levels).round().clamp(-3, 3) * levels
    return logits


@pytest.mark.parametrize("levels", [None, 2.0])
def test_winning_queries_equal_the_full_argmax(levels):
    """The tiled winner search equals numpy's argmax of score x probability over all competing
    queries (first maximum on ties), with pruning active and partial edge tiles (diffuse masks,
    where the whole-image argmax is taken, are the random cases above)."""
    import numpy as np

    g = torch.Generator().manual_seed(11)
    h, w = 2 * WINNER_TILE + 7, 3 * WINNER_TILE + 5
    for trial in range(6):
        q = 40
        logits = _blob_masks(g, q, h, w, levels)
        logits[5] = logits[4]  # a duplicate query: ties go to the lower index
        prob = MaskProbabilities(logits)
        scores = torch.rand(q, generator=g).clamp(0.05)
        scores[5] = scores[4]
        queries = torch.nonzero(torch.rand(q, generator=g) < 0.8)[:, 0]
        winner, own = winning_queries(scores[queries], queries, prob)
        product = scores[queries].numpy()[:, None, None] * prob.prob[queries].numpy()
        ref = np.argmax(product, axis=0)
        assert np.array_equal(winner.numpy(), ref), trial
        ref_own = np.take_along_axis(prob.prob[queries].numpy(), ref[None], 0)[0] >= 0.5
        assert np.array_equal(own.numpy(), ref_own), trial
        low, high = prob.tile_bounds
        floor = (scores[queries, None, None] * low[queries]).amax(0)
        # most (query, tile) pairs are skipped, so the tiled search (not the fallback) ran
        assert float(((scores[queries, None, None] * high[queries]) >= floor).float().mean()) < 0.5
        assert tuple(low.shape[1:]) == (3, 4)
        assert torch.equal(high[:, -1, -1], prob.prob[:, 2 * WINNER_TILE :, 3 * WINNER_TILE :].amax((1, 2)))


def test_first_argmax_equals_numpy_argmax_with_ties():
    import numpy as np

    from retclip.modeling.postprocessing import first_argmax

    g = torch.Generator().manual_seed(3)
    for shape in [(1, 5, 7), (9, 31, 17), (40, 8, 8)]:
        values = torch.randint(0, 4, shape, generator=g).float()  # many exact ties
        assert np.array_equal(first_argmax(values).numpy(), np.argmax(values.numpy(), axis=0))
        values = torch.randn(shape, generator=g)
        assert np.array_equal(first_argmax(iter(values)).numpy(), np.argmax(values.numpy(), axis=0))


@pytest.mark.parametrize("sizes", [((30, 41), 30, 41), ((30, 41), 45, 61), ((30, 41), 20, 27)])
def test_crop_and_resize_equals_detectron2(sizes):
    """The same-size shortcut is exact: it equals detectron2's sem_seg_postprocess bit for bit."""
    from detectron2.modeling.postprocessing import sem_seg_postprocess

    from retclip.modeling.postprocessing import crop_and_resize

    image_size, height, width = sizes
    logits = torch.randn(6, 32, 48, generator=torch.Generator().manual_seed(5)) * 30
    got = crop_and_resize(logits, image_size, height, width)
    assert torch.equal(got, sem_seg_postprocess(logits, image_size, height, width))


def test_instances_without_mask_tensors_keep_everything_else():
    g = torch.Generator().manual_seed(8)
    mask_cls, mask_pred = torch.randn(12, 6, generator=g), torch.randn(12, 20, 24, generator=g)
    kwargs = dict(topk=10, thing_ids={0, 2, 3}, things_only=True)
    full = instance_inference(mask_cls, mask_pred, **kwargs)
    light = instance_inference(mask_cls, mask_pred, mask_tensors=False, **kwargs)
    assert not light.has("pred_masks") and full.has("pred_masks")
    for field in ("scores", "pred_classes", "pred_queries"):
        assert torch.equal(getattr(full, field), getattr(light, field))
    # each instance's mask is its query's own positive mask
    assert torch.equal(full.pred_masks.bool(), mask_pred[light.pred_queries] > 0)


def test_buffers_give_the_values_of_fresh_tensors_image_after_image():
    """A sweep reuses one PostprocessBuffers for every image: the upsample, the resize to the
    output size and the sigmoid written into it equal fresh tensors bit for bit, also when a
    larger image follows a smaller one (the memory grows) and a smaller one a larger one."""
    from retclip.modeling.postprocessing import (
        PostprocessBuffers,
        PostprocessSettings,
        output_mask_logits,
    )

    settings = PostprocessSettings(
        semantic_on=True,
        panoptic_on=True,
        instance_on=True,
        object_mask_threshold=0.0,
        overlap_threshold=0.8,
        sem_seg_postprocess_before_inference=True,
        topk=10,
        thing_ids=frozenset({0, 1}),
    )
    g = torch.Generator().manual_seed(11)
    buffers = PostprocessBuffers()
    # (decoder size, padded size, image size, output size): same-size crop, up- and down-resize
    cases = [
        ((8, 12), (32, 48), (30, 41), (30, 41)),
        ((16, 16), (64, 64), (60, 57), (90, 85)),
        ((8, 12), (32, 48), (29, 47), (20, 31)),
    ]
    pointers = []
    for low, padded, image, (height, width) in cases:
        logits = torch.randn(7, *low, generator=g) * 8
        fresh = output_mask_logits(logits, padded, image, height, width, settings)
        reused = output_mask_logits(logits, padded, image, height, width, settings, buffers)
        assert torch.equal(reused, fresh)
        fresh_prob = MaskProbabilities(fresh)
        reused_prob = MaskProbabilities(reused, buffers)
        assert torch.equal(reused_prob.prob, fresh_prob.prob)
        assert torch.equal(reused_prob.positive([3, 0, 3]), fresh_prob.positive([3, 0, 3]))
        assert torch.equal(reused_prob.positive([3, 0, 3]), fresh[[3, 0, 3]] > 0)
        queries = torch.tensor([6, 2])
        assert torch.equal(reused_prob.inside(queries), fresh_prob.inside(queries))
        pointers.append(reused_prob.prob.data_ptr())
    # the third image is smaller than the second: it reuses the second's memory
    assert pointers[2] == pointers[1] != pointers[0]
