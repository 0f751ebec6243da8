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
    text, spans = det._text_batch(NAMES, chunks)
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
