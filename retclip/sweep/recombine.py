"""Cached scores -> outputs at a new (alpha, beta, gamma): the model's last two steps, replayed
through the model's own functions.

:func:`combine_scores` is :func:`retclip.ensemble.ensemble_log_probabilities`, the function
FC-CLIP's and RetCLIP's ``_combine_scores`` call, on the cached ensemble inputs (which are stored
under its argument names); :func:`postprocess` resizes the cached decoder-resolution mask logits
with :func:`retclip.modeling.postprocessing.output_mask_logits` and ends in
:func:`~retclip.modeling.postprocessing.image_outputs`, as the model's ``_postprocess`` does. The
post-processing settings are the model's own, recorded in the cache manifest. So a sweep point
gives the outputs of a full evaluation at that point, and an ensemble mode registered once in
:data:`retclip.ensemble.ENSEMBLE_MODES` is available to both.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from retclip.ensemble import ensemble_log_probabilities
from retclip.modeling.postprocessing import (
    MaskProbabilities,
    PostprocessSettings,
    image_outputs,
    output_mask_logits,
)

from .cache import CachedImage

__all__ = [
    "combine_scores",
    "postprocess",
    "postprocess_settings",
    "prepare_masks",
    "recombine",
]


def postprocess_settings(manifest: Mapping[str, Any]) -> PostprocessSettings:
    """The cached model's post-processing settings (``model.postprocess_settings()``)."""
    return PostprocessSettings.from_dict(manifest["model"]["postprocess"])


def combine_scores(
    tensors: Mapping[str, torch.Tensor], mode: str, alpha: float, beta: float, gamma: float
) -> torch.Tensor:
    """One image's cached ensemble inputs -> (Q, K+1) log-probabilities, void last.

    Args:
        tensors: a :class:`CachedImage`'s tensors; without "retrieval_scores" (a model without a
            database) gamma is 0, as in the model.
        mode: a name in :data:`retclip.ensemble.ENSEMBLE_MODES`.
    """
    return ensemble_log_probabilities(mode, tensors, alpha, beta, gamma)


def prepare_masks(image: CachedImage, settings: PostprocessSettings) -> MaskProbabilities:
    """The cached mask logits as post-processing uses them, with their sigmoid. They do not
    depend on the ensemble weights, so a pass over several grid points computes them once per
    image."""
    info = image.info
    masks = output_mask_logits(
        image.tensors["mask_logits"],
        info["padded_size"],
        info["image_size"],
        info["height"],
        info["width"],
        settings,
    )
    return MaskProbabilities(masks)


def postprocess(
    mask_cls: torch.Tensor,
    image: CachedImage,
    settings: PostprocessSettings,
    prepared: Optional[MaskProbabilities] = None,
    instance_mask_tensors: bool = True,
) -> Dict[str, Any]:
    """One image's outputs ("sem_seg", "panoptic_seg", "instances") from its class
    log-probabilities (Q, K+1) and cached mask logits, as ``FCCLIP._postprocess``.

    Args:
        prepared: :func:`prepare_masks` of the image, if already computed.
        instance_mask_tensors: False when the metrics take instance masks from per-query RLEs
            (:class:`retclip.sweep.metrics.QueryMaskRLEs`): no ``pred_masks`` then.
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
        instance_mask_tensors=instance_mask_tensors,
    )


def recombine(
    image: CachedImage,
    settings: PostprocessSettings,
    mode: str,
    alpha: float,
    beta: float,
    gamma: float,
) -> Dict[str, Any]:
    """:func:`combine_scores` then :func:`postprocess` for one cached image."""
    return postprocess(combine_scores(image.tensors, mode, alpha, beta, gamma), image, settings)
