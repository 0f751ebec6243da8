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
    PostprocessBuffers,
    PostprocessSettings,
    image_outputs,
    output_mask_logits,
)

from .cache import SUMMARY_TENSOR_FIELDS, CachedImage
from .metrics import QueryMaskRLEs

__all__ = [
    "combine_scores",
    "instance_rles",
    "mask_summaries",
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


def prepare_masks(
    image: CachedImage,
    settings: PostprocessSettings,
    buffers: Optional[PostprocessBuffers] = None,
) -> MaskProbabilities:
    """The cached mask logits as post-processing uses them, with their sigmoid. They do not
    depend on the ensemble weights, so a pass over several grid points computes them once per
    image.

    Args:
        buffers: memory reused from image to image (a sweep's): the result is valid until the
            next call with the same buffers.
    """
    info = image.info
    masks = output_mask_logits(
        image.tensors["mask_logits"],
        info["padded_size"],
        info["image_size"],
        info["height"],
        info["width"],
        settings,
        buffers,
    )
    prepared = MaskProbabilities(masks, buffers)
    stored = {
        field[len(_SUMMARY_PREFIX) :]: image.tensors[field]
        for field in SUMMARY_TENSOR_FIELDS
        if field in image.tensors and not field.startswith("mask_rle_")
    }
    if stored:
        prepared.restore(stored, where=f"score cache image {info.get('image_id')}")
    return prepared


#: ``SUMMARY_TENSOR_FIELDS`` are ``MaskProbabilities.summaries()`` names with this prefix.
_SUMMARY_PREFIX = "mask_"


def mask_summaries(
    image: CachedImage,
    settings: PostprocessSettings,
    buffers: Optional[PostprocessBuffers] = None,
) -> Dict[str, torch.Tensor]:
    """What the cache writer stores next to an image's mask logits (the
    :data:`~retclip.sweep.cache.SUMMARY_TENSOR_FIELDS`): :meth:`MaskProbabilities.summaries` of
    :func:`prepare_masks`, and with instance output every query's instance-mask RLE. Computed by
    the sweep's own functions from the logits as stored, so a sweep reading them gets the values
    it would compute."""
    prepared = prepare_masks(image, settings, buffers)
    out = {
        _SUMMARY_PREFIX + name: value.cpu()
        for name, value in prepared.summaries(settings.panoptic_on, settings.instance_on).items()
    }
    if settings.instance_on:
        counts, offsets = QueryMaskRLEs(prepared.positive).pack(prepared.prob.shape[0])
        out["mask_rle_counts"], out["mask_rle_offsets"] = counts, offsets
    return out


def instance_rles(image: CachedImage, prepared: MaskProbabilities) -> QueryMaskRLEs:
    """The image's instance masks per query as RLEs: those the cache stores, else encoded from
    ``prepared`` on first use."""
    if "mask_rle_counts" in image.tensors and "mask_rle_offsets" in image.tensors:
        return QueryMaskRLEs.unpack(
            image.tensors["mask_rle_counts"],
            image.tensors["mask_rle_offsets"],
            prepared.prob.shape[-2:],
            where=f"score cache image {image.info['image_id']}",
        )
    return QueryMaskRLEs(prepared.positive)


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
