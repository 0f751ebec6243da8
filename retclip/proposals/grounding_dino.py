"""Grounding DINO (Hugging Face transformers) as a class-aware box detector.

Class names are joined into "name . name . name ." prompts. A prompt holds at most the model's
``max_text_len`` tokens (256 for the released models), so a long label list is split into chunks;
all chunks of an image run as one batch, and a pair of forward hooks on the vision backbone lets
the Swin backbone run once per image for the whole batch (the text-image fusion encoder and the
decoder depend on the text, so they run once per chunk). Each box is assigned to the class whose
tokens score highest, which is more robust than decoding token phrases back to text.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .base import check_image

logger = logging.getLogger(__name__)

__all__ = ["Detections", "GroundingDinoDetector", "prompt_name"]


@dataclass
class Detections:
    """Boxes of one image: boxes N x 4 XYXY pixels, scores N, labels N (indices into the names)."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def prompt_name(name: str) -> str:
    """The text Grounding DINO sees for a class: its first synonym, lower case, without dots."""
    first = name.split(",")[0].strip().lower().replace(".", " ")
    if not first:
        raise ValueError(f"class name {name!r} has an empty first synonym")
    return " ".join(first.split())


@contextlib.contextmanager
def _share_backbone(backbone: nn.Module, batch: int) -> Iterator[None]:
    """While active, ``backbone`` computes only the first image of a batch of identical images
    and hands the same features to every row (the chunks of one image share its pixels)."""

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        pixel_values, pixel_mask = args[0], args[1]
        return (pixel_values[:1], pixel_mask[:1]) + tuple(args[2:])

    def post_hook(module: nn.Module, args: tuple, output: tuple) -> tuple:
        features, positions = output
        features = [
            (f.expand(batch, *f.shape[1:]), m.expand(batch, *m.shape[1:])) for f, m in features
        ]
        positions = [p.expand(batch, *p.shape[1:]) for p in positions]
        return features, positions

    handles = [
        backbone.register_forward_pre_hook(pre_hook, prepend=True),
        backbone.register_forward_hook(post_hook, prepend=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class GroundingDinoDetector:
    """Boxes for given class names with ``GroundingDinoForObjectDetection`` + its processor."""

    def __init__(
        self,
        model: nn.Module,
        processor,
        *,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        nms_threshold: float = 0.8,
        max_detections: int = 100,
        device: str = "cpu",
    ) -> None:
        """
        Args:
            model: a ``transformers.GroundingDinoForObjectDetection``.
            processor: its ``GroundingDinoProcessor`` (image processor + BERT tokenizer).
            box_threshold: keep a box whose best class-token probability exceeds this.
            text_threshold: and whose assigned class's best token probability exceeds this.
            nms_threshold: per-class box NMS IoU threshold (>= 1 disables NMS).
            max_detections: keep at most this many boxes per image, best scores first.
        """
        for name, value in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.model = model.to(device).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.nms_threshold = nms_threshold
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        self.max_detections = int(max_detections)
        self.device = torch.device(device)
        self.max_text_len = int(model.config.max_text_len)
        self._dot = self.tokenizer.convert_tokens_to_ids(".")
        if self._dot == self.tokenizer.unk_token_id:
            raise ValueError("the Grounding DINO tokenizer has no '.' token")
        self._token_cache: dict = {}

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, device: str = "cpu", **kwargs
    ) -> "GroundingDinoDetector":
        """Load model and processor from a Hugging Face hub name or a local directory."""
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        if not name_or_path:
            raise ValueError(
                "Grounding DINO needs a hub name or a local directory (DATABASE_BUILD.GROUNDING_DINO.MODEL)"
            )
        processor = GroundingDinoProcessor.from_pretrained(name_or_path)
        model = GroundingDinoForObjectDetection.from_pretrained(name_or_path)
        return cls(model, processor, device=device, **kwargs)

    @property
    def backbone(self) -> nn.Module:
        """The vision backbone (runs once per image)."""
        return self.model.model.backbone

    def _tokens(self, name: str) -> List[int]:
        if name not in self._token_cache:
            ids = self.tokenizer(prompt_name(name), add_special_tokens=False)["input_ids"]
            limit = self.max_text_len - 3  # [CLS], ".", [SEP]
            if len(ids) > limit:
                logger.warning(
                    "class name %r has %d tokens; truncated to %d", name, len(ids), limit
                )
                ids = ids[:limit]
            self._token_cache[name] = list(ids)
        return self._token_cache[name]

    def chunk(self, names: Sequence[str]) -> List[List[int]]:
        """Split class indices into prompts of at most ``max_text_len`` tokens, in order."""
        chunks: List[List[int]] = []
        length = self.max_text_len + 1
        for i, name in enumerate(names):
            cost = len(self._tokens(name)) + 1
            if length + cost > self.max_text_len:
                chunks.append([])
                length = 2
            chunks[-1].append(i)
            length += cost
        return chunks

    def _text_batch(
        self, names: Sequence[str], chunks: List[List[int]]
    ) -> Tuple[dict, List[List[Tuple[int, int, int]]]]:
        """Padded input ids of the chunks and, per chunk, (class index, first token, end token)."""
        rows, spans = [], []
        for chunk in chunks:
            ids, chunk_spans = [self.tokenizer.cls_token_id], []
            for i in chunk:
                tokens = self._tokens(names[i])
                chunk_spans.append((i, len(ids), len(ids) + len(tokens)))
                ids += tokens + [self._dot]
            rows.append(ids + [self.tokenizer.sep_token_id])
            spans.append(chunk_spans)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        attention = torch.tensor(
            [[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long
        )
        text = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "token_type_ids": torch.zeros_like(input_ids),
        }
        return text, spans

    @torch.no_grad()
    def __call__(self, image: np.ndarray, names: Sequence[str]) -> Detections:
        """Detect the named classes in one image.

        Args:
            image: H x W x 3 uint8 RGB.
            names: class names (synonyms after commas are dropped from the prompt).
        Returns:
            :class:`Detections` in pixels of ``image``; labels index into ``names``.
        """
        check_image(image)
        h, w = image.shape[:2]
        if len(names) == 0:
            return Detections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long))
        chunks = self.chunk(names)
        text, spans = self._text_batch(names, chunks)
        pixels = self.processor.image_processor(images=[image], return_tensors="pt")
        batch = len(chunks)
        inputs = {k: v.to(self.device) for k, v in text.items()}
        inputs["pixel_values"] = pixels["pixel_values"].to(self.device).expand(batch, -1, -1, -1)
        inputs["pixel_mask"] = pixels["pixel_mask"].to(self.device).expand(batch, -1, -1)
        with _share_backbone(self.backbone, batch):
            outputs = self.model(**inputs)
        probs = outputs.logits.sigmoid().float().cpu()  # C x Q x max_text_len
        cxcywh = outputs.pred_boxes.float().cpu()  # C x Q x 4, relative to the image
        boxes, scores, labels = [], [], []
        for c, chunk_spans in enumerate(spans):
            per_class = torch.stack(
                [probs[c, :, s:e].max(dim=1).values for _, s, e in chunk_spans], dim=1
            )
            best, arg = per_class.max(dim=1)
            keep = (best > self.box_threshold) & (best > self.text_threshold)
            if keep.any():
                class_ids = torch.tensor([i for i, _, _ in chunk_spans], dtype=torch.long)
                boxes.append(cxcywh[c, keep])
                scores.append(best[keep])
                labels.append(class_ids[arg[keep]])
        if not boxes:
            return Detections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long))
        box = torch.cat(boxes)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        xyxy = torch.cat([box[:, :2] - box[:, 2:] / 2, box[:, :2] + box[:, 2:] / 2], dim=1) * scale
        xyxy = torch.minimum(xyxy.clamp(min=0), scale)
        score, label = torch.cat(scores), torch.cat(labels)
        if self.nms_threshold < 1.0:
            from torchvision.ops import batched_nms

            order = batched_nms(xyxy, score, label, self.nms_threshold)
        else:
            order = torch.argsort(score, descending=True, stable=True)
        order = order[: self.max_detections]
        return Detections(xyxy[order], score[order], label[order])
