"""The common output of every mask proposal source and the registry that names the sources.

The database builder and the training-free model both need "some masks for this image, perhaps
with a class hint per mask"; keeping one dataclass, one call signature and one registry of names
(``DATABASE_BUILD.PROPOSALS`` and ``MODEL.TRAINING_FREE.PROPOSALS`` take the same values) lets
either of them swap ground-truth masks, SAM's point grid or Grounding DINO -> SAM by a config
string. The sources register in :mod:`retclip.proposals.build`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from retclip.utils.registry import NamedRegistry

__all__ = [
    "Proposals",
    "ProposalSource",
    "PROPOSAL_REGISTRY",
    "build_proposal_source",
    "masks_to_boxes",
]

#: Mask proposal sources by config name. An entry builds a source from a config's ``SAM`` and
#: ``GROUNDING_DINO`` blocks (:func:`retclip.config.sam_config`, ``grounding_dino_config``):
#: ``builder(sam, grounding_dino, device=..., batch_size=...) -> ProposalSource``, whose instances
#: are called as ``source(image, class_names=None, dataset_dict=None) -> Proposals`` with ``image``
#: an H x W x 3 uint8 RGB numpy array, ``class_names`` the vocabulary the class hints index into
#: (text-prompted sources) and ``dataset_dict`` a detectron2 dataset dict (ground truth).
PROPOSAL_REGISTRY: NamedRegistry = NamedRegistry("proposal source", "PROPOSALS")


@dataclass
class Proposals:
    """Mask proposals of one image.

    Attributes:
        masks: N x H x W bool tensor, at the resolution of the input image.
        scores: N float tensor (detector confidence, SAM's predicted IoU, or 1 for ground truth).
        labels: N long tensor of class hints (indices into the ``class_names`` the source was
            called with), or None for class-agnostic sources.
        boxes: N x 4 float tensor, XYXY in pixels of the input image.
    """

    masks: Tensor
    scores: Tensor
    labels: Optional[Tensor]
    boxes: Tensor

    def __post_init__(self) -> None:
        n = self.masks.shape[0]
        if self.masks.dim() != 3 or self.masks.dtype != torch.bool:
            raise ValueError(
                f"Proposals.masks must be an N x H x W bool tensor, got {self.masks.dtype} {tuple(self.masks.shape)}"
            )
        if self.scores.shape != (n,):
            raise ValueError(
                f"Proposals.scores must have shape ({n},), got {tuple(self.scores.shape)}"
            )
        if self.boxes.shape != (n, 4):
            raise ValueError(
                f"Proposals.boxes must have shape ({n}, 4), got {tuple(self.boxes.shape)}"
            )
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(
                f"Proposals.labels must have shape ({n},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple:
        """(H, W) of the masks."""
        return tuple(self.masks.shape[-2:])

    @classmethod
    def empty(cls, height: int, width: int, with_labels: bool = True) -> "Proposals":
        """No proposals for an image of the given size (an image with no detection is not an error)."""
        return cls(
            masks=torch.zeros((0, height, width), dtype=torch.bool),
            scores=torch.zeros(0),
            labels=torch.zeros(0, dtype=torch.long) if with_labels else None,
            boxes=torch.zeros((0, 4)),
        )

    def select(self, keep: Tensor) -> "Proposals":
        """The subset given by a bool mask or an index tensor."""
        return Proposals(
            masks=self.masks[keep],
            scores=self.scores[keep],
            labels=None if self.labels is None else self.labels[keep],
            boxes=self.boxes[keep],
        )


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight XYXY boxes (pixel edges, so x1 = last column + 1) of N x H x W bool masks; empty masks give zeros."""
    n = masks.shape[0]
    boxes = torch.zeros((n, 4))
    if n == 0:
        return boxes
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    for i in range(n):
        ys = torch.nonzero(rows[i]).flatten()
        xs = torch.nonzero(cols[i]).flatten()
        if len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


class ProposalSource:
    """Interface of a mask proposal source: ``__call__(image, class_names, dataset_dict)``."""

    #: Whether ``class_names`` must be given (text-prompted sources).
    needs_class_names: bool = False
    #: Whether ``dataset_dict`` must be given (ground truth).
    needs_dataset_dict: bool = False

    def __call__(
        self,
        image: np.ndarray,
        class_names: Optional[Sequence[str]] = None,
        dataset_dict: Optional[Dict[str, Any]] = None,
    ) -> Proposals:
        """Propose masks for one image.

        Args:
            image: H x W x 3 uint8 RGB.
            class_names: vocabulary the returned class hints index into.
            dataset_dict: detectron2 dataset dict of the image (ground-truth sources).
        Returns:
            :class:`Proposals` at H x W.
        """
        raise NotImplementedError

    def propose_batch(
        self,
        images: Sequence[np.ndarray],
        class_names: Sequence[Optional[Sequence[str]]],
        dataset_dicts: Sequence[Optional[Dict[str, Any]]],
    ) -> List[Proposals]:
        """Proposals of several images, each with its own class names and dataset dict.

        Sources whose models can embed several images in one forward override this; the
        result must equal calling the source on each image in turn.
        """
        check_batch_lengths(images, class_names, dataset_dicts)
        return [self(i, c, d) for i, c, d in zip(images, class_names, dataset_dicts)]


def check_batch_lengths(
    images: Sequence[Any], class_names: Sequence[Any], dataset_dicts: Sequence[Any]
) -> None:
    """Raise ValueError unless :meth:`ProposalSource.propose_batch` got one entry per image."""
    if not len(images) == len(class_names) == len(dataset_dicts):
        raise ValueError(
            f"propose_batch got {len(images)} images, {len(class_names)} class-name lists "
            f"and {len(dataset_dicts)} dataset dicts"
        )


def check_image(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is an H x W x 3 uint8 array."""
    if (
        not isinstance(image, np.ndarray)
        or image.ndim != 3
        or image.shape[2] != 3
        or image.dtype != np.uint8
    ):
        desc = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {desc}")


def build_proposal_source(
    name: str,
    sam: Any,
    grounding_dino: Any,
    *,
    device: str = "cpu",
    batch_size: int = 1,
    key: str = "PROPOSALS",
) -> ProposalSource:
    """The registered source ``name`` built from a config's SAM and GROUNDING_DINO blocks.

    Args:
        key: the config key that named the source, for the error listing the valid names.
        batch_size: images that may share one forward of the source's models.
    Raises:
        ValueError: ``name`` is not registered (the message names ``key`` and the valid names).
    """
    if name not in PROPOSAL_REGISTRY:
        raise ValueError(
            f"{key}: unknown proposal source {name!r}; valid: {PROPOSAL_REGISTRY.names()}"
        )
    return PROPOSAL_REGISTRY.get(name)(sam, grounding_dino, device=device, batch_size=batch_size)
