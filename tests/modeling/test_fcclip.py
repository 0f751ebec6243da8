"""FCCLIP end to end on the tiny configs: outputs, losses, gradients, vocabulary, ensemble, bad input."""

import math

import pytest
import torch
from detectron2.structures import Instances
from fcclip_testutils import build_tiny, image, synthetic_test_classes

SEEN = [True, True, True, True, False, True, False, False]  # synthetic test classes, by hand


@pytest.fixture(scope="module", params=["convnext", "resnet"])
def model(request):
    m = build_tiny(request.param)
    m.eval()
    return m


@pytest.fixture(scope="module")
def convnext_model():
    m = build_tiny("convnext")
    m.eval()
    return m


def _instances(h, w):
    inst = Instances((h, w))
    inst.gt_classes = torch.tensor([0, 4])
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, : h // 2, : w // 3] = True
    masks[1, h // 2 :, :] = True
    inst.gt_masks = masks
    return inst


def test_eval_outputs_for_odd_sizes(model):
    inputs = [image(61, 83, seed=1), {"image": image(37, 50, seed=2)["image"]}]
    with torch.no_grad():
        outs = model(inputs)
    assert len(outs) == 2
    for out, (h, w) in zip(outs, [(61, 83), (37, 50)]):
        assert out["sem_seg"].shape == (8, h, w) and out["sem_seg"].dtype == torch.float32
        assert torch.isfinite(out["sem_seg"]).all()
        seg, info = out["panoptic_seg"]
        assert seg.shape == (h, w) and seg.dtype == torch.int32
        assert sorted(int(i) for i in seg.unique() if i != 0) == sorted(s["id"] for s in info)
        for s in info:
            assert 0 <= s["category_id"] < 8 and s["isthing"] == (s["category_id"] in {2, 4, 5, 7})
        inst = out["instances"]
        assert isinstance(inst, Instances) and inst.image_size == (h, w)
        assert inst.pred_masks.shape[1:] == (h, w) and torch.isfinite(inst.scores).all()
        assert set(inst.pred_classes.tolist()) <= {2, 4, 5, 7}  # thing classes only (panoptic on)


def test_default_vocabulary_is_test_dataset_with_seen_rule(convnext_model):
    vocab = convnext_model.vocabulary
    assert list(vocab.class_names) == synthetic_test_classes()
    assert vocab.seen.tolist() == SEEN
    assert vocab.thing_ids == {2, 4, 5, 7}


def test_training_losses_and_gradients():
    model = build_tiny("convnext", seed=1)
    model.train()
    inputs = [
        {"image": image(64, 96, 3)["image"], "instances": _instances(64, 96)},
        {"image": image(57, 70, 4)["image"], "instances": _instances(57, 70)},
    ]
    losses = model(inputs)
    base = ["loss_ce", "loss_mask", "loss_dice"]
    assert set(losses) == set(base) | {f"{k}_{i}" for k in base for i in range(9)}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad, name
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.void_embedding.weight.grad.abs().sum() > 0


def test_combine_scores_is_fcclip_geometric_ensemble(convnext_model):
    model = convnext_model
    g = torch.Generator().manual_seed(0)
    pred, clip = torch.randn(1, 2, 9, generator=g), torch.randn(1, 2, 9, generator=g)
    valid = torch.tensor([[True, False]])
    out = model._combine_scores({"pred_logits": pred, "clip_logits": clip, "valid": valid}).exp()
    for q in range(2):
        e_in = [math.exp(v) for v in pred[0, q, :8].tolist()]
        e_out = [math.exp(v) for v in clip[0, q, :8].tolist()]
        p_in = [v / sum(e_in) for v in e_in]
        p_out = [v / sum(e_out) for v in e_out]
        s = [
            (pi ** (1 - (0.4 if seen else 0.8))) * (po ** (0.4 if seen else 0.8))
            for pi, po, seen in zip(p_in, p_out, SEEN)
        ]  # ENSEMBLE_ON_VALID_MASK off for ConvNeXt
        all_e = [math.exp(v) for v in pred[0, q].tolist()]
        void = all_e[-1] / sum(all_e)
        ref = [v / sum(s) * (1 - void) for v in s] + [void]
        for a, b in zip(out[0, q].tolist(), ref):
            assert abs(a - (b + 1e-8)) < 1e-5


def test_resnet_empty_masks_give_no_nan():
    model = build_tiny("resnet")
    model.eval()
    assert model.ensemble_on_valid_mask
    images = model._preprocess([image(64, 64, 5)])
    feats = model.backbone(images.tensor)
    pred_masks = torch.full((1, 10, 16, 16), 5.0)
    pred_masks[0, :4] = -5.0  # four empty masks
    pred_masks[0, 5, 8:] = -5.0  # a partial one
    with torch.no_grad():
        emb, valid = model._clip_embeddings(feats["clip_vis_dense"], pred_masks)
        text, counts = model.get_text_classifier(model.vocabulary.class_names)
        from retclip.modeling.mask_pooling import get_classification_logits

        clip_logits = get_classification_logits(
            emb, text, model.backbone.clip_model.logit_scale, counts
        )
        outputs = {"pred_logits": torch.randn(1, 10, 9), "clip_logits": clip_logits, "valid": valid}
        mask_cls = model._combine_scores(outputs)
    assert valid[0, :4].tolist() == [False] * 4 and valid[0, 4:].all()
    assert torch.isfinite(emb).all() and torch.isfinite(mask_cls).all()
    # empty-mask queries use the in-vocabulary classifier alone
    p_in = outputs["pred_logits"][0, 0].softmax(-1)
    torch.testing.assert_close(mask_cls[0, 0].exp(), p_in + 1e-8, rtol=1e-5, atol=1e-6)


def test_custom_vocabulary_and_text_cache(convnext_model, monkeypatch, tmp_path):
    monkeypatch.setenv("RETCLIP_CACHE", str(tmp_path))  # empty on-disk cache: first call encodes
    model = convnext_model
    calls = {"n": 0}

    def counting(module, args):
        calls["n"] += 1

    hook = model.backbone.clip_model.transformer.register_forward_pre_hook(counting)
    try:
        vocab = model.set_vocabulary(
            ["cat, kitty", "lamp", "sky"], thing_classes=["cat, kitty", "lamp"]
        )
        assert vocab.seen.tolist() == [True, False, True] and vocab.thing_ids == {0, 1}
        with torch.no_grad():
            out1 = model([image(40, 40, 6)])
            first = calls["n"]
            out2 = model([image(45, 33, 7)])
        assert first >= 1 and calls["n"] == first  # second image: no text-tower call
        assert out1[0]["sem_seg"].shape == (3, 40, 40) and out2[0]["sem_seg"].shape == (3, 45, 33)
        model.set_vocabulary(["lamp"], seen=[False])
        with torch.no_grad():
            assert model([image(20, 20, 8)])[0]["sem_seg"].shape == (1, 20, 20)
        assert calls["n"] > first
    finally:
        hook.remove()
        model.set_metadata(model.test_metadata)
    assert len(model.vocabulary) == 8


def test_bad_vocabularies_are_refused(convnext_model):
    with pytest.raises(ValueError, match="empty"):
        convnext_model.set_vocabulary([])
    with pytest.raises(ValueError, match="'lamp'"):
        convnext_model.set_vocabulary(["lamp", "sky", "lamp"])
    with pytest.raises(ValueError, match="'a,,b'"):
        convnext_model.set_vocabulary(["a,,b"])
    with pytest.raises(ValueError, match="dog"):
        convnext_model.set_vocabulary(["cat"], thing_classes=["dog"])
    assert len(convnext_model.vocabulary) == 8  # unchanged


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 20, 20), "3 RGB channels"),
        ((4, 20, 20), "got 4"),
        ((20, 20), "CHW"),
        ((3, 0, 5), "empty"),
    ],
)
def test_bad_images_are_refused(convnext_model, shape, match):
    bad = {"image": torch.zeros(shape, dtype=torch.uint8), "file_name": "bad.png"}
    with pytest.raises(ValueError, match=match) as err:
        convnext_model([image(20, 20), bad])
    assert "image 1" in str(err.value) and "bad.png" in str(err.value)


def test_missing_image_key_is_named(convnext_model):
    with pytest.raises(KeyError, match="image"):
        convnext_model([{"height": 3}])


def test_one_pixel_image(convnext_model):
    with torch.no_grad():
        tiny = convnext_model([image(1, 1)])[0]
    assert tiny["sem_seg"].shape == (8, 1, 1) and tiny["panoptic_seg"][0].shape == (1, 1)
    assert torch.isfinite(tiny["sem_seg"]).all()


@pytest.mark.slow
def test_large_image(convnext_model):
    with torch.no_grad():
        large = convnext_model([image(1024, 1536, 9)])[0]
    assert large["sem_seg"].shape == (8, 1024, 1536) and torch.isfinite(large["sem_seg"]).all()
    assert large["panoptic_seg"][0].shape == (1024, 1536)
