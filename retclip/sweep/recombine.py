"""Cached scores -> outputs at a new (alpha, beta, gamma): the model's last two steps, replayed.

:func:`combine_scores` is the ensemble of the chosen mode followed by ``log(probs + 1e-8)``
(what FC-CLIP / RetCLIP's ``_combine_scores`` return); :func:`postprocess` is the per-image part of
``FCCLIP._postprocess`` on the cached mask logits (already upsampled and cropped to the image size):
resize to the output size, then :func:`retclip.modeling.postprocessing.image_outputs`, the
function the model itself ends with, so a sweep point gives the outputs of a full evaluation at
that point.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess

from retclip.ensemble import arithmetic_ensemble, geometric_ensemble
from retclip.modeling.postprocessing import MaskProbabilities, PostprocessSettings, image_outputs

from .cache import CachedImage

__all__ = [
    "ENSEMBLE_MODES",
    "PostprocessSettings",
    "combine_scores",
    "has_retrieval",
    "postprocess",
    "recombine",
]

ENSEMBLE_MODES = ("arithmetic", "geometric")


def combine_scores(
    tensors: Mapping[str, torch.Tensor],
    mode: str,
    alpha: float,
    beta: float,
    gamma: float,
    has_retrieval: bool = True,
) -> torch.Tensor:
    """Ensemble of one image's cached scores -> (Q, K+1) log-probabilities, void last.

    Args:
        tensors: a :class:`CachedImage`'s tensors (in_vocab_logits, clip_logits (Q, K+1),
            retrieval_scores (Q, K), retrieval_available, seen (K,), optional valid (Q,)).
        mode: "arithmetic" (the paper's) or "geometric" (FC-CLIP's).
        has_retrieval: False for a model without a database; gamma is then 0, as the model does.
    """
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"unknown ensemble mode {mode!r}; valid: {ENSEMBLE_MODES}")
    if not has_retrieval:
        gamma = 0.0
    common = {
        "valid": tensors.get("valid"),
        "retrieval_scores": tensors["retrieval_scores"],
        "retrieval_available": tensors["retrieval_available"],
    }
    if mode == "geometric":
        probs = geometric_ensemble(
            tensors["in_vocab_logits"],
            tensors["clip_logits"],
            tensors["seen"],
            alpha,
            beta,
            gamma=gamma,
            **common,
        )
    else:
        probs = arithmetic_ensemble(
            tensors["in_vocab_logits"],
            tensors["clip_logits"],
            seen=tensors["seen"],
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            **common,
        )
    return torch.log(probs + 1e-8)


def prepare_masks(image: CachedImage, settings: PostprocessSettings) -> MaskProbabilities:
    """The cached mask logits as post-processing uses them: upsampled from the decoder's
    resolution to the padded input (as ``FCCLIP._postprocess``), then cropped and resized to the
    output size when ``sem_seg_postprocess_before_inference``; with their sigmoid. They do not
    depend on the ensemble weights, so a pass over several grid points computes them once per
    image."""
    padded = tuple(image.info["padded_size"])
    masks = F.interpolate(image.tensors["mask_logits"][None], size=padded, mode="bilinear", align_corners=False)[0]
    if settings.sem_seg_postprocess_before_inference:
        size = tuple(image.info["image_size"])
        masks = sem_seg_postprocess(masks, size, image.info["height"], image.info["width"])
    return MaskProbabilities(masks)


def postprocess(
    mask_cls: torch.Tensor,
    image: CachedImage,
    settings: PostprocessSettings,
    prepared: Optional[MaskProbabilities] = None,
) -> Dict[str, Any]:
    """One image's outputs ("sem_seg", "panoptic_seg", "instances") from its class
    log-probabilities (Q, K+1) and cached decoder-resolution mask logits, as
    ``FCCLIP._postprocess``.

    Args:
        prepared: :func:`prepare_masks` of the image, if already computed.
    """
    if prepared is None:
        prepared = prepare_masks(image, settings)
    return image_outputs(
        mask_cls,
        prepared.logits,
        settings,
        tuple(image.info["image_size"]),
        image.info["height"],
        image.info["width"],
        mask_prob=prepared,
    )


def recombine(
    image: CachedImage,
    settings: PostprocessSettings,
    mode: str,
    alpha: float,
    beta: float,
    gamma: float,
    has_retrieval: bool = True,
) -> Dict[str, Any]:
    """:func:`combine_scores` then :func:`postprocess` for one cached image."""
    return postprocess(
        combine_scores(image.tensors, mode, alpha, beta, gamma, has_retrieval), image, settings
    )


def has_retrieval(manifest: Mapping[str, Any]) -> bool:
    """Whether the cached model had a database (its fingerprint's "databases" entry)."""
    fingerprint = manifest.get("fingerprint", {})
    return fingerprint.get("databases") is not None if "databases" in fingerprint else True
