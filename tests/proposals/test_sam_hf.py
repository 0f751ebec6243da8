"""HFSamBoxSegmenter (transformers SamModel) against transformers' own documented pipeline:
processor(images, input_boxes) -> model(**inputs) -> processor.post_process_masks."""

import numpy as np
import pytest
import torch

from retclip.proposals import HFSamBoxSegmenter
from retclip.proposals.testing import build_tiny_hf_sam

BOXES = torch.tensor(
    [
        [5.0, 6.0, 60.0, 70.0],
        [40.0, 10.0, 120.0, 90.0],
        [0.0, 0.0, 127.0, 95.0],
        [70.0, 2.0, 90.0, 30.0],
    ]
)


@pytest.fixture(scope="module")
def tiny_hf_sam():
    return build_tiny_hf_sam()


def _image(h, w, seed):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _count_rows(module):
    """Rows of the first positional argument of each forward call."""
    calls = []
    handle = module.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    return calls, handle


def _count_decoder_calls(module):
    """The decoder is called with keyword arguments only, so count calls, not rows."""
    calls = []
    handle = module.register_forward_hook(
        lambda m, a, k, o: calls.append(k["sparse_prompt_embeddings"].shape[1]), with_kwargs=True
    )
    return calls, handle


def _reference(model, processor, image, boxes, multimask_output):
    """transformers' documented box-prompt pipeline, every output mask upsampled."""
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, multimask_output=multimask_output)
    masks = processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0]
    return masks, out.iou_scores[0], inputs["input_boxes"][0]


def _assert_same(masks, ious, ref_masks, ref_ious):
    assert masks.shape == ref_masks.shape and masks.dtype == torch.bool
    for m, r in zip(masks, ref_masks):
        # same decoder, same embedding; batched maths may flip a border pixel
        assert (m == r).float().mean() > 0.999
    torch.testing.assert_close(ious, ref_ious, rtol=0, atol=1e-5)


def test_call_matches_transformers_pipeline(tiny_hf_sam, noise_image):
    model, processor = tiny_hf_sam
    seg = HFSamBoxSegmenter(model, processor)
    masks, ious = seg(noise_image, BOXES)
    ref_masks, ref_ious, ref_prompts = _reference(model, processor, noise_image, BOXES, False)
    assert ref_prompts.shape == (len(BOXES), 4) and ref_masks.shape == (len(BOXES), 1, 96, 128)
    # The processor maps the 128-wide image onto the 64 frame, so boxes really are rescaled.
    torch.testing.assert_close(ref_prompts.float(), BOXES * 0.5)
    assert ious.dtype == torch.float32 and masks.device.type == "cpu"
    _assert_same(masks, ious, ref_masks[:, 0], ref_ious[:, 0])
    assert not torch.equal(masks[0], masks[1])  # masks depend on the box (a test that can fail)
    # Boxes given unscaled would be a different prompt: the scaling is not a no-op.
    wrong, _ = seg(noise_image, BOXES * 2)
    assert (wrong != masks).any()


def test_segment_batch_one_encoder_forward(tiny_hf_sam):
    model, processor = tiny_hf_sam
    images = [_image(96, 128, 1), _image(50, 40, 2), _image(33, 70, 3)]
    boxes = [
        BOXES[:3],
        torch.zeros((0, 4)),
        torch.tensor([[1.0, 2.0, 30.0, 20.0], [10.0, 5.0, 69.0, 32.0]]),
    ]
    seg = HFSamBoxSegmenter(model, processor, max_boxes_per_batch=2)
    singles = [seg(im, b) for im, b in zip(images, boxes)]

    enc_calls, enc_handle = _count_rows(seg.image_encoder)
    dec_calls, dec_handle = _count_decoder_calls(seg.mask_decoder)
    batched = seg.segment_batch(images, boxes)
    enc_handle.remove()
    dec_handle.remove()
    assert enc_calls == [2]  # the box-less image is not embedded
    assert dec_calls == [2, 1, 2]  # 3 boxes in chunks of 2, then the third image's 2 boxes
    assert len(batched) == 3
    for (m, i), (rm, ri), im in zip(batched, singles, images):
        assert m.shape[1:] == im.shape[:2]
        _assert_same(m, i, rm, ri)
    assert batched[1][0].shape == (0, 50, 40) and batched[1][1].shape == (0,)
    # Independent reference for the non-square, upright image too.
    ref_masks, ref_ious, _ = _reference(model, processor, images[2], boxes[2], False)
    _assert_same(batched[2][0], batched[2][1], ref_masks[:, 0], ref_ious[:, 0])

    one = HFSamBoxSegmenter(model, processor, max_images_per_batch=1)
    enc_calls, enc_handle = _count_rows(one.image_encoder)
    again = one.segment_batch(images, boxes)
    enc_handle.remove()
    assert enc_calls == [1, 1]
    for (m, i), (rm, ri) in zip(again, batched):
        _assert_same(m, i, rm, ri)
    assert one.segment_batch([], []) == []


def test_multimask_keeps_best_iou(tiny_hf_sam, noise_image):
    model, processor = tiny_hf_sam
    masks, ious = HFSamBoxSegmenter(model, processor, multimask_output=True)(noise_image, BOXES)
    ref_masks, ref_ious, _ = _reference(model, processor, noise_image, BOXES, True)
    assert ref_ious.shape == (len(BOXES), 3)
    best = ref_ious.argmax(dim=1)
    assert len(set(best.tolist())) > 1  # the choice matters: not always the same output slot
    rows = torch.arange(len(BOXES))
    _assert_same(masks, ious, ref_masks[rows, best], ref_ious[rows, best])
    single, _ = HFSamBoxSegmenter(model, processor)(noise_image, BOXES)
    assert (single != masks).any()


def test_empty_and_invalid_inputs(tiny_hf_sam, noise_image):
    seg = HFSamBoxSegmenter(*tiny_hf_sam)
    calls, handle = _count_rows(seg.image_encoder)
    for empty in (torch.zeros((0, 4)), torch.zeros(0)):
        masks, ious = seg(noise_image, empty)
        assert masks.shape == (0, 96, 128) and masks.dtype == torch.bool and ious.shape == (0,)
    handle.remove()
    assert calls == []
    with pytest.raises(ValueError, match="N x 4"):
        seg(noise_image, torch.zeros((3, 5)))
    with pytest.raises(ValueError, match="N x 4"):
        seg(noise_image, torch.zeros(4))
    with pytest.raises(ValueError, match="2 images but 1 box"):
        seg.segment_batch([noise_image, noise_image], [BOXES])
    with pytest.raises(ValueError, match="uint8"):
        seg(noise_image.astype(np.float32), BOXES)
    with pytest.raises(ValueError, match="max_boxes_per_batch"):
        HFSamBoxSegmenter(*tiny_hf_sam, max_boxes_per_batch=0)
    with pytest.raises(ValueError, match="max_images_per_batch"):
        HFSamBoxSegmenter(*tiny_hf_sam, max_images_per_batch=0)


def test_from_local_directory(tiny_hf_sam, tmp_path, noise_image):
    model, processor = tiny_hf_sam
    model.save_pretrained(tmp_path / "sam")
    processor.save_pretrained(tmp_path / "sam")
    loaded = HFSamBoxSegmenter.from_pretrained(str(tmp_path / "sam"), max_boxes_per_batch=3)
    assert loaded.max_boxes_per_batch == 3 and not loaded.model.training
    masks, ious = loaded(noise_image, BOXES)
    ref_masks, ref_ious = HFSamBoxSegmenter(model, processor)(noise_image, BOXES)
    assert torch.equal(masks, ref_masks)
    torch.testing.assert_close(ious, ref_ious)
    for name in ("", "  "):
        with pytest.raises(ValueError, match="model name"):
            HFSamBoxSegmenter.from_pretrained(name)
