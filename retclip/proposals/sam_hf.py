"""SAM box prompts through Hugging Face ``transformers`` (``SamModel`` + ``SamProcessor``).

An alternative to :class:`retclip.proposals.sam.SamBoxSegmenter` (segment-anything) with the same
interface, for checkpoints published on the Hub (``facebook/sam-vit-base`` ...) and for batching
the image encoder over several images: the processor resizes every image to the longest side
``S`` (1024 for the released models) and pads it to ``S x S``, so any images stack into one batch.
"""

from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .base import check_image

logger = logging.getLogger(__name__)

__all__ = ["HFSamBoxSegmenter"]


def _check_boxes(boxes: Tensor) -> Tensor:
    """Float N x 4 boxes; a 1-D empty tensor counts as no boxes (as ``SamBoxSegmenter`` allows)."""
    boxes = torch.as_tensor(boxes)
    if boxes.dim() == 1 and boxes.numel() == 0:
        return boxes.reshape(0, 4).float()
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be N x 4 XYXY, got {tuple(boxes.shape)}")
    return boxes.float()


class HFSamBoxSegmenter:
    """Masks for box prompts from a ``transformers.SamModel``.

    The image encoder runs once per group of images (all boxes of an image share its embedding),
    then each image's boxes go through the prompt encoder + mask decoder in chunks.
    """

    def __init__(
        self,
        model: nn.Module,
        processor,
        *,
        multimask_output: bool = False,
        max_boxes_per_batch: int = 256,
        max_images_per_batch: int = 4,
        device: str = "cpu",
    ) -> None:
        """
        Args:
            model: a ``transformers.SamModel``.
            processor: its ``transformers.SamProcessor`` (resize / pad / normalise of the images,
                upsampling of the masks).
            multimask_output: ask SAM for 3 masks per box and keep the one with the best
                predicted IoU (False: SAM's single-mask output, the usual choice for boxes).
            max_boxes_per_batch: decoder batch size limit (memory), not a per-image cap.
            max_images_per_batch: image-encoder batch size limit (memory).
            device: where the model runs; results always come back on the CPU.
        """
        if max_boxes_per_batch < 1:
            raise ValueError(f"max_boxes_per_batch must be >= 1, got {max_boxes_per_batch}")
        if max_images_per_batch < 1:
            raise ValueError(f"max_images_per_batch must be >= 1, got {max_images_per_batch}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.multimask_output = bool(multimask_output)
        self.max_boxes_per_batch = int(max_boxes_per_batch)
        self.max_images_per_batch = int(max_images_per_batch)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, device: str = "cpu", **kwargs
    ) -> "HFSamBoxSegmenter":
        """Load model and processor from a Hub name (``facebook/sam-vit-base``) or a local
        directory written by ``save_pretrained``; ``kwargs`` go to ``__init__``."""
        from transformers import SamModel, SamProcessor

        if not isinstance(name_or_path, str) or not name_or_path.strip():
            raise ValueError(
                f"HFSamBoxSegmenter needs a model name or directory, got {name_or_path!r}"
            )
        processor = SamProcessor.from_pretrained(name_or_path)
        model = SamModel.from_pretrained(name_or_path)
        return cls(model, processor, device=device, **kwargs)

    @property
    def image_encoder(self) -> nn.Module:
        """The module that embeds images; called as ``image_encoder(pixel_values)``, once per
        image group (a forward hook sees ``args[0]`` = the pixel batch)."""
        return self.model.vision_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        """The prompt decoder, called once per box chunk (with keyword arguments only)."""
        return self.model.mask_decoder

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """Segment the boxes of one image.

        Args:
            image: H x W x 3 uint8 RGB.
            boxes: N x 4 XYXY in pixels of ``image``.
        Returns:
            (masks N x H x W bool, predicted IoU N float), on the CPU. N = 0 runs no forward.
        """
        return self.segment_batch([image], [boxes])[0]

    @torch.no_grad()
    def segment_batch(
        self, images: Sequence[np.ndarray], boxes: Sequence[Tensor]
    ) -> List[Tuple[Tensor, Tensor]]:
        """Segment the boxes of several images, one image-encoder forward per group of up to
        ``max_images_per_batch`` images that have boxes (images without boxes run nothing).

        Args:
            images: H_i x W_i x 3 uint8 RGB images (any sizes).
            boxes: per image an N_i x 4 XYXY tensor in pixels of that image.
        Returns:
            per image (masks N_i x H_i x W_i bool, predicted IoU N_i float), as ``__call__``.
        """
        if len(images) != len(boxes):
            raise ValueError(f"got {len(images)} images but {len(boxes)} box tensors")
        for image in images:
            check_image(image)
        boxes = [_check_boxes(b) for b in boxes]
        results: List[Tuple[Tensor, Tensor]] = [
            (torch.zeros((0, *im.shape[:2]), dtype=torch.bool), torch.zeros(0))
            for im in images
        ]
        todo = [i for i, b in enumerate(boxes) if len(b) > 0]
        for start in range(0, len(todo), self.max_images_per_batch):
            group = todo[start : start + self.max_images_per_batch]
            encoded = self.processor.image_processor(
                images=[images[i] for i in group], return_tensors="pt"
            )
            pixels = encoded["pixel_values"].to(self.device, self._dtype())
            # One encoder forward for the whole group (the processor pads every image to S x S).
            embeddings = self.image_encoder(pixels)[0]
            for row, i in enumerate(group):
                original = tuple(int(v) for v in encoded["original_sizes"][row])
                resized = tuple(int(v) for v in encoded["reshaped_input_sizes"][row])
                results[i] = self._decode(embeddings[row : row + 1], boxes[i], original, resized)
        return results

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _decode(
        self,
        embedding: Tensor,
        boxes: Tensor,
        original: Tuple[int, int],
        resized: Tuple[int, int],
    ) -> Tuple[Tensor, Tensor]:
        """Masks of one image's boxes from its 1 x C x h x w embedding, in decoder chunks."""
        (old_h, old_w), (new_h, new_w) = original, resized
        # The prompt encoder expects boxes in the resized (unpadded) frame, as the processor
        # rescales them: x by new_w / old_w and y by new_h / old_h.
        scale = torch.tensor([new_w / old_w, new_h / old_h, new_w / old_w, new_h / old_h])
        prompts = (boxes * scale).to(self.device)
        masks, ious = [], []
        for start in range(0, len(prompts), self.max_boxes_per_batch):
            chunk = prompts[start : start + self.max_boxes_per_batch]
            out = self.model(
                image_embeddings=embedding,
                input_boxes=chunk[None],
                multimask_output=self.multimask_output,
            )
            low_res, iou = out.pred_masks[0], out.iou_scores[0]  # n x k x h x w, n x k
            best = iou.argmax(dim=1)
            rows = torch.arange(len(best), device=best.device)
            # Pick before upsampling: interpolation is per channel, so this is the same result.
            chosen = low_res[rows, best][:, None].float()
            full = self.processor.post_process_masks(
                [chosen], [original], [resized], binarize=True
            )[0]
            masks.append(full[:, 0].cpu())
            ious.append(iou[rows, best].float().cpu())
        return torch.cat(masks).bool(), torch.cat(ious)
