import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from retclip.proposals import (
    GroundingDinoDetector,
    GroundingDinoSamProposals,
    SamBoxSegmenter,
    SamGridProposals,
    load_sam,
)
from retclip.proposals.grounding_dino import prompt_name

NAMES = ["person, individual", "car", "wall", "sky", "grass", "cat"]


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    return calls, handle


def test_chunks_respect_token_limit(tiny_gdino_short_prompts):
    det = GroundingDinoDetector(*tiny_gdino_short_prompts)
    tok = det.tokenizer
    chunks = det.chunk(NAMES)
    assert len(chunks) > 1
    assert [i for c in chunks for i in c] == list(range(len(NAMES)))
    for c in chunks:
        text = " . ".join(prompt_name(NAMES[i]) for i in c) + " ."
        assert len(tok(text)["input_ids"]) <= 12  # [CLS] ... [SEP], counted by the tokenizer itself
    assert prompt_name("Person, individual") == "person"


def test_shared_backbone_matches_plain_batch(tiny_gdino_short_prompts, noise_image):
    """The backbone runs once for all prompt chunks and the outputs equal a plain batched run."""
    det = GroundingDinoDetector(
        *tiny_gdino_short_prompts, box_threshold=0.0, text_threshold=0.0, nms_threshold=1.0
    )
    calls, handle = _count_calls(det.backbone)
    out = det(noise_image, NAMES)
    handle.remove()
    chunks = det.chunk(NAMES)
    assert calls == [1]  # one image row through the Swin backbone for len(chunks) prompts
    # Reference: the model's own batched forward with the image repeated per chunk.
    rows, spans = det._text_rows(NAMES, chunks)
    text = det._pad_text(rows)
    pix = det.processor.image_processor(images=[noise_image], return_tensors="pt")
    n = len(chunks)
    with torch.no_grad():
        ref = det.model(
            pixel_values=pix["pixel_values"].repeat(n, 1, 1, 1),
            pixel_mask=pix["pixel_mask"].repeat(n, 1, 1),
            **text
        )
    probs = ref.logits.sigmoid()
    best = torch.stack(
        [
            torch.stack([probs[c, :, s:e].max(1).values for _, s, e in sp], 1).max(1).values
            for c, sp in enumerate(spans)
        ]
    )
    assert len(out) == best.numel()  # thresholds 0 keep every query of every chunk
    torch.testing.assert_close(
        out.scores.sort().values, best.flatten().sort().values, rtol=1e-4, atol=1e-5
    )
    assert out.labels.min() >= 0 and out.labels.max() < len(NAMES)
    h, w = noise_image.shape[:2]
    assert (
        (out.boxes[:, 0] >= 0).all()
        and (out.boxes[:, 2] <= w).all()
        and (out.boxes[:, 3] <= h).all()
    )


def test_no_detection_gives_empty_proposals_without_sam(tiny_gdino, tiny_sam, noise_image):
    det = GroundingDinoDetector(*tiny_gdino, box_threshold=1.0)
    source = GroundingDinoSamProposals(detector=det, segmenter=SamBoxSegmenter(tiny_sam))
    calls, handle = _count_calls(tiny_sam.image_encoder)
    props = source(noise_image, NAMES)
    handle.remove()
    assert len(props) == 0 and props.image_size == (96, 128) and calls == []
    with pytest.raises(ValueError, match="class_names"):
        source(noise_image)


def test_gdino_sam_one_sam_forward_for_all_boxes(tiny_gdino, tiny_sam, noise_image):
    det = GroundingDinoDetector(*tiny_gdino, box_threshold=0.3, text_threshold=0.0)
    source = GroundingDinoSamProposals(detector=det, segmenter=SamBoxSegmenter(tiny_sam))
    calls, handle = _count_calls(tiny_sam.image_encoder)
    props = source(noise_image, NAMES)
    handle.remove()
    assert len(props) > 1 and calls == [1]
    assert props.masks.shape == (len(props), 96, 128) and props.masks.dtype == torch.bool
    assert props.labels.max() < len(NAMES)
    torch.testing.assert_close(props.boxes, det(noise_image, NAMES).boxes)


def test_batched_box_masks_equal_one_box_at_a_time(tiny_sam, noise_image):
    boxes = torch.tensor(
        [[5.0, 6.0, 60.0, 70.0], [40.0, 10.0, 120.0, 90.0], [0.0, 0.0, 127.0, 95.0]]
    )
    masks, ious = SamBoxSegmenter(tiny_sam)(noise_image, boxes)
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(noise_image)
    for i, box in enumerate(boxes.numpy()):
        ref, ref_iou, _ = predictor.predict(box=box, multimask_output=False)
        overlap = (masks[i].numpy() == ref[0]).mean()
        assert (
            overlap > 0.999
        )  # same decoder, same embedding; batched maths may flip a border pixel
        assert abs(float(ious[i]) - float(ref_iou[0])) < 1e-4
    empty, _ = SamBoxSegmenter(tiny_sam)(noise_image, torch.zeros((0, 4)))
    assert empty.shape == (0, 96, 128)


def test_sam_grid_proposals(tiny_sam, noise_image):
    props = SamGridProposals(
        sam=tiny_sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )(noise_image)
    assert props.labels is None and len(props) >= 1
    assert props.masks.shape[1:] == (96, 128)
    assert (props.boxes[:, 2] >= props.boxes[:, 0]).all() and (props.boxes[:, 3] <= 96).all()
    none = SamGridProposals(sam=tiny_sam, points_per_side=2, pred_iou_thresh=2.0)(noise_image)
    assert len(none) == 0 and none.labels is None


def test_load_sam_errors(tmp_path):
    with pytest.raises(KeyError, match="vit_b"):
        load_sam("vit_q", "")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_sam("tiny", str(tmp_path / "missing.pth"))
    sam = load_sam("tiny", "")
    torch.save(sam.state_dict(), tmp_path / "tiny.pth")
    again = load_sam("tiny", str(tmp_path / "tiny.pth"))
    for (k, a), (_, b) in zip(sam.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_detector_from_local_directory(tiny_gdino, tmp_path, noise_image):
    model, processor = tiny_gdino
    model.save_pretrained(tmp_path / "gdino")
    processor.save_pretrained(tmp_path / "gdino")
    det = GroundingDinoDetector.from_pretrained(
        str(tmp_path / "gdino"), box_threshold=0.0, text_threshold=0.0, nms_threshold=1.0
    )
    ref = GroundingDinoDetector(
        model, processor, box_threshold=0.0, text_threshold=0.0, nms_threshold=1.0
    )
    torch.testing.assert_close(det(noise_image, NAMES).scores, ref(noise_image, NAMES).scores)
    with pytest.raises(ValueError, match="threshold"):
        GroundingDinoDetector(model, processor, box_threshold=1.5)


def _images(sizes, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in sizes]


def test_detect_batch_equals_one_image_at_a_time(tiny_gdino_short_prompts):
    """Images with equal input sizes share one forward (the backbone embeds each once); images
    of another size go in their own forward; every image gets its own prompt chunks."""
    det = GroundingDinoDetector(
        *tiny_gdino_short_prompts, box_threshold=0.0, text_threshold=0.0, nms_threshold=0.5,
        max_detections=40,
    )
    images = _images([(96, 128), (96, 128), (64, 64), (96, 128)])
    names = [NAMES, NAMES[:2], NAMES[3:], []]
    calls, handle = _count_calls(det.backbone)
    batched = det.detect_batch(images, names)
    handle.remove()
    # The two labelled 96 x 128 images in one call, the 64 x 64 one alone, the unlabelled none.
    assert sorted(calls) == [1, 2]
    single = [det(image, n) for image, n in zip(images, names)]
    for i, (b, s) in enumerate(zip(batched, single)):
        assert len(b) == len(s) and (len(s) > 0) == (i < 3), i
        assert torch.equal(b.labels, s.labels), i
        torch.testing.assert_close(b.scores, s.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.boxes, s.boxes, rtol=1e-4, atol=1e-3)
        assert all(int(label) < len(names[i]) for label in b.labels)
    det.max_images_per_batch = 1
    calls, handle = _count_calls(det.backbone)
    det.detect_batch(images, names)
    handle.remove()
    assert calls == [1, 1, 1]
    with pytest.raises(ValueError, match="2 images but 1 class-name lists"):
        det.detect_batch(images[:2], names[:1])


def test_segment_batch_equals_one_image_at_a_time(tiny_sam):
    """SAM pads every image to its square input, so any images share one encoder forward."""
    seg = SamBoxSegmenter(tiny_sam, max_images_per_batch=2)
    images = _images([(96, 128), (50, 70), (80, 60), (40, 40)])
    boxes = [
        torch.tensor([[5.0, 6.0, 60.0, 70.0], [40.0, 10.0, 120.0, 90.0]]),
        torch.zeros((0, 4)),
        torch.tensor([[0.0, 0.0, 59.0, 79.0]]),
        torch.tensor([[10.0, 10.0, 30.0, 35.0], [0.0, 0.0, 20.0, 20.0]]),
    ]
    calls, handle = _count_calls(tiny_sam.image_encoder)
    batched = seg.segment_batch(images, boxes)
    handle.remove()
    assert calls == [2, 1]  # three images with boxes, at most two per forward
    for image, b, (masks, ious) in zip(images, boxes, batched):
        ref_masks, ref_ious = seg(image, b)
        assert masks.shape == (len(b),) + image.shape[:2] and masks.dtype == torch.bool
        assert (masks == ref_masks).float().mean() > 0.999 if len(b) else masks.numel() == 0
        torch.testing.assert_close(ious, ref_ious, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="boxes of image 0 must be N x 4"):
        seg.segment_batch(images[:1], [torch.zeros(4)])
    with pytest.raises(ValueError, match="2 images but 1 box tensors"):
        seg.segment_batch(images[:2], boxes[:1])


def test_propose_batch_equals_calls(tiny_gdino, tiny_sam):
    det = GroundingDinoDetector(*tiny_gdino, box_threshold=0.3, text_threshold=0.0)
    source = GroundingDinoSamProposals(detector=det, segmenter=SamBoxSegmenter(tiny_sam))
    images = _images([(96, 128), (96, 128), (70, 90)], seed=3)
    names = [NAMES, NAMES[:3], NAMES]
    batched = source.propose_batch(images, names, [None] * 3)
    assert sum(len(p) for p in batched) > 0
    for image, n, props in zip(images, names, batched):
        ref = source(image, n)
        assert torch.equal(props.labels, ref.labels)
        torch.testing.assert_close(props.boxes, ref.boxes, rtol=1e-4, atol=1e-3)
        assert (props.masks == ref.masks).float().mean() > 0.999 if len(ref) else len(props) == 0
    with pytest.raises(ValueError, match="needs class_names"):
        source.propose_batch(images[:1], [None], [None])
