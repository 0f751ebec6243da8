"""SAM (segment-anything) as a mask source: box prompts (all boxes of an image decoded in one
batch over a single image embedding) and the automatic point-grid generator."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .base import Proposals, ProposalSource, check_image

logger = logging.getLogger(__name__)

__all__ = ["load_sam", "SamBoxSegmenter", "SamGridProposals", "build_box_segmenter", "SAM_BACKENDS"]

#: Libraries a box segmenter can come from.
SAM_BACKENDS = ("segment_anything", "transformers")


def load_sam(model_type: str, checkpoint: str, device: str = "cpu") -> torch.nn.Module:
    """Build SAM ``model_type`` ("vit_b", "vit_l", "vit_h") and load a local checkpoint.

    The weights load with ``torch.load(weights_only=True)`` (the released ``.pth`` files hold
    only tensors). ``checkpoint=""`` keeps random weights (tests, speed measurements).
    ``model_type="tiny"`` is the test-only model of :mod:`retclip.proposals.testing`.
    """
    from segment_anything import sam_model_registry

    if model_type == "tiny":
        from .testing import build_tiny_sam

        sam = build_tiny_sam()
    elif model_type not in sam_model_registry:
        valid = sorted(k for k in sam_model_registry if k != "default") + ["tiny"]
        raise KeyError(f"unknown SAM model type {model_type!r}; valid: {valid}")
    else:
        sam = sam_model_registry[model_type](checkpoint=None)
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
    else:
        logger.warning("SAM %s has random weights (no checkpoint given)", model_type)
    return sam.to(device).eval()


class SamBoxSegmenter:
    """Masks for box prompts: one image-encoder forward per image (several images share one
    batched forward: SAM pads every image to the same 1024 x 1024 input), all boxes of an image
    in one decoder batch.

    Builds on segment-anything's public pieces: ``ResizeLongestSide``, ``Sam.preprocess``, the
    image encoder, prompt encoder, mask decoder and ``Sam.postprocess_masks``, in the order
    ``SamPredictor`` uses them.
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        *,
        multimask_output: bool = False,
        max_boxes_per_batch: int = 256,
        max_images_per_batch: int = 4,
    ) -> None:
        """
        Args:
            sam: a ``segment_anything.modeling.Sam``.
            multimask_output: ask SAM for 3 masks per box and keep the one with the best
                predicted IoU (False: SAM's single-mask output, the usual choice for boxes).
            max_boxes_per_batch: decoder batch size limit (memory), not a per-image cap.
            max_images_per_batch: images embedded by one image-encoder forward in
                :meth:`segment_batch` (memory).
        """
        from segment_anything.utils.transforms import ResizeLongestSide

        for name, value in (
            ("max_boxes_per_batch", max_boxes_per_batch),
            ("max_images_per_batch", max_images_per_batch),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.sam = sam
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.multimask_output = multimask_output
        self.max_boxes_per_batch = int(max_boxes_per_batch)
        self.max_images_per_batch = int(max_images_per_batch)

    @property
    def image_encoder(self) -> torch.nn.Module:
        """The module that embeds images (hooked to count image forwards)."""
        return self.sam.image_encoder

    @property
    def mask_decoder(self) -> torch.nn.Module:
        """The prompt decoder (runs once per box batch)."""
        return self.sam.mask_decoder

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def __call__(self, image: np.ndarray, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """Segment the boxes of one image.

        Args:
            image: H x W x 3 uint8 RGB.
            boxes: N x 4 XYXY in pixels of ``image``.
        Returns:
            (masks N x H x W bool, predicted IoU N float). N = 0 runs no forward.
        """
        return self.segment_batch([image], [boxes])[0]

    @torch.no_grad()
    def segment_batch(
        self, images: Sequence[np.ndarray], boxes: Sequence[Tensor]
    ) -> List[Tuple[Tensor, Tensor]]:
        """Segment the boxes of several images; per image the same result as :meth:`__call__`.

        The image encoder runs once per group of up to ``max_images_per_batch`` images that
        have boxes; images without boxes run nothing.
        """
        if len(images) != len(boxes):
            raise ValueError(f"got {len(images)} images but {len(boxes)} box tensors")
        results: List[Optional[Tuple[Tensor, Tensor]]] = [None] * len(images)
        todo = []
        for i, (image, b) in enumerate(zip(images, boxes)):
            check_image(image)
            h, w = image.shape[:2]
            if b.numel() == 0:
                results[i] = (torch.zeros((0, h, w), dtype=torch.bool), torch.zeros(0))
                continue
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes of image {i} must be N x 4 XYXY, got {tuple(b.shape)}")
            todo.append(i)
        for start in range(0, len(todo), self.max_images_per_batch):
            group = todo[start : start + self.max_images_per_batch]
            inputs, input_sizes = [], []
            for i in group:
                resized = self.transform.apply_image(images[i])
                x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
                input_sizes.append(tuple(x.shape[-2:]))
                inputs.append(self.sam.preprocess(x[None]))  # normalise, pad to the square input
            embeddings = self.sam.image_encoder(torch.cat(inputs))
            for k, i in enumerate(group):
                results[i] = self._decode(
                    embeddings[k : k + 1], input_sizes[k], images[i].shape[:2], boxes[i]
                )
        return results  # type: ignore[return-value]

    def _decode(
        self, embedding: Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int], boxes: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """All boxes of one image against its embedding, ``max_boxes_per_batch`` at a time."""
        prompts = self.transform.apply_boxes_torch(boxes.float().to(self.device), original_size)
        dense_pe = self.sam.prompt_encoder.get_dense_pe()
        masks, ious = [], []
        for start in range(0, len(prompts), self.max_boxes_per_batch):
            sparse, dense = self.sam.prompt_encoder(
                points=None, boxes=prompts[start : start + self.max_boxes_per_batch], masks=None
            )
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=self.multimask_output,
            )
            best = iou.argmax(dim=1)
            rows = torch.arange(len(best), device=best.device)
            logits = self.sam.postprocess_masks(low_res[rows, best][:, None], input_size, original_size)
            masks.append((logits[:, 0] > self.sam.mask_threshold).cpu())
            ious.append(iou[rows, best].float().cpu())
        return torch.cat(masks), torch.cat(ious)


def build_box_segmenter(sam_cfg: Any, *, device: str = "cpu", max_images_per_batch: int = 4):
    """The box-prompt SAM of a config's SAM block (``DATABASE_BUILD.SAM`` or
    ``MODEL.TRAINING_FREE.SAM``): ``BACKEND`` "segment_anything" (``MODEL_TYPE`` + local
    ``CHECKPOINT``) or "transformers" (``HF_MODEL``: hub name or local directory), ``MULTIMASK``.

    Both give the same interface (``__call__``, ``segment_batch``, ``image_encoder``,
    ``mask_decoder``), so the database builder and the training-free model take either.
    """
    backend = sam_cfg.BACKEND
    if backend == "segment_anything":
        sam = load_sam(sam_cfg.MODEL_TYPE, sam_cfg.CHECKPOINT, device=device)
        return SamBoxSegmenter(
            sam, multimask_output=sam_cfg.MULTIMASK, max_images_per_batch=max_images_per_batch
        )
    if backend == "transformers":
        from .sam_hf import HFSamBoxSegmenter

        if not sam_cfg.HF_MODEL:
            raise ValueError("SAM.BACKEND 'transformers' needs SAM.HF_MODEL (hub name or local directory)")
        return HFSamBoxSegmenter.from_pretrained(
            sam_cfg.HF_MODEL,
            device=device,
            multimask_output=sam_cfg.MULTIMASK,
            max_images_per_batch=max_images_per_batch,
        )
    raise ValueError(f"SAM.BACKEND must be one of {list(SAM_BACKENDS)}, got {backend!r}")


class SamGridProposals(ProposalSource):
    """Class-agnostic masks from SAM prompted with a regular point grid
    (segment-anything's ``SamAutomaticMaskGenerator``); labels are None."""

    def __init__(
        self,
        *,
        sam: torch.nn.Module,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
        min_mask_region_area: int = 0,
    ) -> None:
        """
        Args:
            sam: a ``segment_anything.modeling.Sam``.
            points_per_side: the grid has points_per_side^2 point prompts.
            points_per_batch: prompts decoded together.
            pred_iou_thresh: drop masks whose predicted IoU is below this.
            stability_score_thresh: drop masks whose stability score is below this.
            box_nms_thresh: IoU threshold of the box NMS between masks.
            min_mask_region_area: remove small holes/islands below this area (needs OpenCV).
        """
        from segment_anything import SamAutomaticMaskGenerator

        if points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
        self.generator = SamAutomaticMaskGenerator(
            sam,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            box_nms_thresh=box_nms_thresh,
            min_mask_region_area=min_mask_region_area,
        )

    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray,
        class_names: Optional[Sequence[str]] = None,
        dataset_dict: Optional[Dict[str, Any]] = None,
    ) -> Proposals:
        check_image(image)
        records = self.generator.generate(image)
        if not records:
            return Proposals.empty(*image.shape[:2], with_labels=False)
        masks = torch.from_numpy(np.stack([r["segmentation"] for r in records])).bool()
        xywh = torch.tensor([r["bbox"] for r in records], dtype=torch.float32)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        scores = torch.tensor([r["predicted_iou"] for r in records], dtype=torch.float32)
        return Proposals(masks=masks, scores=scores, labels=None, boxes=boxes)
