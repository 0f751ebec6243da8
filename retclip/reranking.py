"""Run the network once per image, then re-rank at any (alpha, beta, gamma) without it.

A model's inference is three steps: ``_predict_queries`` (backbone, decoder, CLIP and retrieval
scores: the costly part), ``_combine_scores`` (the ensemble) and ``_postprocess``. ``forward``
is exactly these three in a row. :func:`predict_queries` runs the first step and keeps its outputs
(what the sweep's score cache keeps: s_iv and CLIP logits, s_ret, validity, mask logits);
:func:`rerank` runs the model's own ensemble at other weights and the sweep's post-processing
(which ends in the model's own ``image_outputs``), with the weight-independent mask work done
once per image. So a slider move in the web demo shows what a full inference at those weights
shows (tests/retclip/test_reranking.py pins it) for a few percent of a forward pass.
"""
from __future__ import annotations

from retclip import compat as _compat

_compat.apply_all()  # before detectron2 is first imported

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T

from .modeling.postprocessing import MaskProbabilities, PostprocessSettings
from .sweep.cache import CachedImage
from .sweep.recombine import postprocess, prepare_masks

logger = logging.getLogger(__name__)

__all__ = [
    "EnsembleWeights",
    "QueryOutputs",
    "ensemble_weights",
    "model_input",
    "model_weights",
    "predict_queries",
    "rerank",
]


@dataclass(frozen=True)
class EnsembleWeights:
    """alpha (seen classes), beta (unseen classes), gamma (retrieval share; RetCLIP only)."""

    alpha: float
    beta: float
    gamma: float = 0.0


def _weight_attributes(model: torch.nn.Module) -> Tuple[str, ...]:
    """The model attributes its ``_combine_scores`` reads (RetCLIP: alpha, beta, gamma; FC-CLIP:
    the geometric ensemble's alpha, beta)."""
    if all(hasattr(model, a) for a in ("alpha", "beta", "gamma")):
        return ("alpha", "beta", "gamma")
    if hasattr(model, "geometric_ensemble_alpha"):
        return ("geometric_ensemble_alpha", "geometric_ensemble_beta")
    raise TypeError(f"{type(model).__name__} has no ensemble weights (not an FC-CLIP/RetCLIP model)")


def model_weights(model: torch.nn.Module) -> EnsembleWeights:
    """The weights the model was configured with."""
    values = [float(getattr(model, a)) for a in _weight_attributes(model)]
    return EnsembleWeights(*values)


@contextlib.contextmanager
def ensemble_weights(model: torch.nn.Module, weights: EnsembleWeights) -> Iterator[None]:
    """Temporarily give the model other ensemble weights (restored on exit, even on error)."""
    for name, value in zip(("alpha", "beta", "gamma"), (weights.alpha, weights.beta, weights.gamma)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    names = _weight_attributes(model)
    saved = [getattr(model, a) for a in names]
    values = (weights.alpha, weights.beta, weights.gamma)[: len(names)]
    try:
        for name, value in zip(names, values):
            setattr(model, name, float(value))
        yield
    finally:
        for name, value in zip(names, saved):
            setattr(model, name, value)


@dataclass
class QueryOutputs:
    """One image after the network: everything the ensemble and post-processing need.

    Attributes:
        outputs: the model's ``_predict_queries`` dict (batch of one): pred_logits / clip_logits
            (1, Q, K+1), valid (1, Q), pred_masks (1, Q, h, w), retrieval_scores (1, Q, K) or
            None, retrieval_available (K,), retrieval_votes (RetCLIP with votes).
        cached: the image as the sweep's score cache holds it (sizes and mask logits).
        masks: the sweep's prepared masks (logits at the output size and their sigmoid): they
            do not depend on the weights, so a re-ranking reuses them.
        query_masks: (Q, height, width) bool, each query's mask at the output size.
    """

    outputs: Dict[str, Any]
    cached: CachedImage
    masks: MaskProbabilities

    @property
    def query_masks(self) -> torch.Tensor:
        return (self.masks.logits > 0).cpu()


def model_input(image: np.ndarray, min_size: int, max_size: int) -> Dict[str, Any]:
    """(H, W, 3) uint8 RGB -> the model's input dict, resized as at test time."""
    height, width = image.shape[:2]
    resized = T.ResizeShortestEdge(min_size, max_size).get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return {"image": tensor, "height": height, "width": width}


def _settings(model: torch.nn.Module) -> PostprocessSettings:
    """The model's post-processing, panoptic output only (what the demos show; it does not
    depend on the semantic and instance outputs)."""
    return dataclasses.replace(model.postprocess_settings(), semantic_on=False, instance_on=False, panoptic_on=True)


def predict_queries(model: torch.nn.Module, inputs: Dict[str, Any], votes: bool = True) -> QueryOutputs:
    """The network part of inference for one image (the only costly step)."""
    from .modeling.meta_arch.inputs import check_batched_inputs

    check_batched_inputs([inputs], training=False)
    has_votes = hasattr(model, "return_retrieval_votes")
    saved = getattr(model, "return_retrieval_votes", False)
    try:
        if has_votes:
            model.return_retrieval_votes = votes
        with torch.no_grad():
            images = model._preprocess([inputs])
            outputs = model._predict_queries(images)
    finally:
        if has_votes:
            model.return_retrieval_votes = saved
    size = images.image_sizes[0]
    info = {
        "padded_size": [int(v) for v in images.tensor.shape[-2:]],
        "image_size": [int(size[0]), int(size[1])],
        "height": int(inputs["height"]), "width": int(inputs["width"]),
    }
    cached = CachedImage(info=info, tensors={"mask_logits": outputs["pred_masks"][0]})
    return QueryOutputs(outputs, cached, prepare_masks(cached, _settings(model)))


def rerank(model: torch.nn.Module, queries: QueryOutputs, weights: Optional[EnsembleWeights] = None) -> Dict[str, Any]:
    """The model's ensemble and the sweep's post-processing at ``weights`` (default: the
    model's own) -> the "panoptic_seg" a full inference at those weights gives, plus "mask_cls"
    (Q, K+1) log-probabilities."""
    weights = weights or model_weights(model)
    with torch.no_grad(), ensemble_weights(model, weights):
        mask_cls = model._combine_scores(queries.outputs)[0]
        result = postprocess(mask_cls, queries.cached, _settings(model), queries.masks)
    result["mask_cls"] = mask_cls.cpu()
    return result
