"""Grounding DINO (Hugging Face transformers) as a class-aware box detector.

Class names are joined into "name . name . name ." prompts. A prompt holds at most the model's
``max_text_len`` tokens (256 for the released models), so a long label list is split into chunks;
all chunks of an image run as one batch, and a pair of forward hooks on the vision backbone lets
the Swin backbone run once per image for the whole batch (the text-image fusion encoder and the
decoder depend on the text, so they run once per chunk). :meth:`GroundingDinoDetector.detect_batch`
puts the chunks of several images whose resized inputs have equal sizes into one batch, so one
backbone call embeds them all, without padding any image. Each box is assigned to the class whose
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
def _share_backbone(backbone: nn.Module, row_image: Tensor) -> Iterator[None]:
    """While active, ``backbone`` computes each distinct image of a batch once and hands its
    features to every row showing that image (the prompt chunks of one image share its pixels).

    Args:
        row_image: for every batch row, the index of its image; rows of one image are
            consecutive and images are numbered 0, 1, ... in row order.
    """
    first_rows = torch.cat(
        [torch.zeros(1, dtype=torch.long), torch.nonzero(row_image[1:] != row_image[:-1]).flatten() + 1]
    )

    def pre_hook(module: nn.Module, args: tuple) -> tuple:
        pixel_values, pixel_mask = args[0], args[1]
        rows = first_rows.to(pixel_values.device)
        return (pixel_values[rows], pixel_mask[rows]) + tuple(args[2:])

    def post_hook(module: nn.Module, args: tuple, output: tuple) -> tuple:
        features, positions = output
        index = row_image.to(positions[0].device)
        features = [(f.index_select(0, index), m.index_select(0, index)) for f, m in features]
        positions = [p.index_select(0, index) for p in positions]
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
        max_images_per_batch: int = 4,
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
            max_images_per_batch: images (with all their prompt chunks) that
                :meth:`detect_batch` runs in one forward (memory).
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
        if max_images_per_batch < 1:
            raise ValueError(f"max_images_per_batch must be >= 1, got {max_images_per_batch}")
        self.max_images_per_batch = int(max_images_per_batch)
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

    def _text_rows(
        self, names: Sequence[str], chunks: List[List[int]]
    ) -> Tuple[List[List[int]], List[List[Tuple[int, int, int]]]]:
        """Token ids of each chunk's prompt and, per chunk, (class index, first token, end token)."""
        rows, spans = [], []
        for chunk in chunks:
            ids, chunk_spans = [self.tokenizer.cls_token_id], []
            for i in chunk:
                tokens = self._tokens(names[i])
                chunk_spans.append((i, len(ids), len(ids) + len(tokens)))
                ids += tokens + [self._dot]
            rows.append(ids + [self.tokenizer.sep_token_id])
            spans.append(chunk_spans)
        return rows, spans

    def _pad_text(self, rows: List[List[int]]) -> dict:
        """The model's text inputs for prompt rows padded to the longest one."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        attention = torch.tensor(
            [[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long
        )
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "token_type_ids": torch.zeros_like(input_ids),
        }

    @staticmethod
    def _empty() -> Detections:
        return Detections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long))

    def __call__(self, image: np.ndarray, names: Sequence[str]) -> Detections:
        """Detect the named classes in one image.

        Args:
            image: H x W x 3 uint8 RGB.
            names: class names (synonyms after commas are dropped from the prompt).
        Returns:
            :class:`Detections` in pixels of ``image``; labels index into ``names``.
        """
        return self.detect_batch([image], [names])[0]

    @torch.no_grad()
    def detect_batch(
        self, images: Sequence[np.ndarray], names: Sequence[Sequence[str]]
    ) -> List[Detections]:
        """Detect each image's own class names; per image the same result as :meth:`__call__`.

        Images whose resized inputs have the same size (up to ``max_images_per_batch`` of them)
        run as one forward: every prompt chunk of every image is a batch row, and the backbone
        embeds each image once. Images of other sizes go in other forwards, so no image is padded.
        """
        if len(images) != len(names):
            raise ValueError(f"got {len(images)} images but {len(names)} class-name lists")
        results: List[Detections] = [self._empty() for _ in images]
        groups: dict = {}
        prepared = {}
        for i, (image, image_names) in enumerate(zip(images, names)):
            check_image(image)
            if len(image_names) == 0:
                continue
            pixels = self.processor.image_processor(images=[image], return_tensors="pt")
            prepared[i] = pixels
            groups.setdefault(tuple(pixels["pixel_values"].shape), []).append(i)
        for members in groups.values():
            for start in range(0, len(members), self.max_images_per_batch):
                group = members[start : start + self.max_images_per_batch]
                for i, det in zip(group, self._detect_group(images, names, prepared, group)):
                    results[i] = det
        return results

    def _detect_group(
        self,
        images: Sequence[np.ndarray],
        names: Sequence[Sequence[str]],
        prepared: dict,
        group: List[int],
    ) -> List[Detections]:
        """One forward for images with equal input sizes: rows are their prompt chunks."""
        rows, spans, row_image = [], [], []
        for k, i in enumerate(group):
            image_rows, image_spans = self._text_rows(names[i], self.chunk(names[i]))
            rows += image_rows
            spans.append(image_spans)
            row_image += [k] * len(image_rows)
        index = torch.tensor(row_image, dtype=torch.long)
        inputs = {k: v.to(self.device) for k, v in self._pad_text(rows).items()}
        pixel_values = torch.cat([prepared[i]["pixel_values"] for i in group]).to(self.device)
        pixel_mask = torch.cat([prepared[i]["pixel_mask"] for i in group]).to(self.device)
        inputs["pixel_values"] = pixel_values[index.to(self.device)]
        inputs["pixel_mask"] = pixel_mask[index.to(self.device)]
        with _share_backbone(self.backbone, index):
            outputs = self.model(**inputs)
        probs = outputs.logits.sigmoid().float().cpu()  # rows x Q x max_text_len
        cxcywh = outputs.pred_boxes.float().cpu()  # rows x Q x 4, relative to the image
        out, row = [], 0
        for k, i in enumerate(group):
            n = len(spans[k])
            out.append(
                self._decode(
                    probs[row : row + n], cxcywh[row : row + n], spans[k], images[i].shape[:2]
                )
            )
            row += n
        return out

    def _decode(
        self,
        probs: Tensor,
        cxcywh: Tensor,
        spans: List[List[Tuple[int, int, int]]],
        image_size: Tuple[int, int],
    ) -> Detections:
        """Thresholds, class assignment, pixel boxes and NMS for one image's prompt chunks."""
        h, w = image_size
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
            return self._empty()
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
