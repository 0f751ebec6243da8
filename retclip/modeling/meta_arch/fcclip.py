"""FC-CLIP (Yu et al., NeurIPS 2023): Mask2Former on a frozen convolutional CLIP, open vocabulary.

Checkpoint-compatible with bytedance/fc-clip (same module tree and keys) and numerically the same
at inference: the in-vocabulary classifier of the transformer decoder and the frozen CLIP's
mask-pooled classifier are combined by the ensemble of ``MODEL.ENSEMBLE.MODE`` ("geometric",
:func:`retclip.ensemble.geometric_ensemble`, with ALPHA 0.4 / BETA 0.8 is FC-CLIP's), then
Mask2Former's semantic/panoptic/instance post-processing runs.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, build_sem_seg_head
from detectron2.structures import BitMasks, ImageList
from detectron2.utils.memory import retry_if_cuda_oom
from torch import nn

from ...ensemble import ENSEMBLE_MODES, ensemble_log_probabilities, ensemble_probabilities
from ..criterion import SetCriterion
from ..mask_pooling import get_classification_logits
from ..postprocessing import PostprocessSettings, image_outputs, output_mask_logits
from ..segment_embedding import ConvSegmentEmbedding
from ..text_classifier import TextEmbeddingCache, append_void
from ..vocabulary import (
    Vocabulary,
    class_names_from_metadata,
    make_vocabulary,
    thing_ids_of,
    vocabulary_from_metadata,
)
from .inputs import check_batched_inputs

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class FCCLIP(nn.Module):
    """FC-CLIP meta-architecture.

    Inference is split into small overridable steps (RetCLIP adds a retrieval score by
    overriding :meth:`_combine_scores`):

    1. :meth:`_preprocess`: check and normalise the images, pad into an ``ImageList``.
    2. :meth:`_predict_queries`: backbone, text classifier, head and the out-of-vocabulary
       branch; returns ``pred_logits`` (B, Q, K+1) in-vocabulary logits, ``pred_masks``
       (B, Q, H/4, W/4) mask logits, ``clip_embeddings`` (B, Q, D) mask-pooled CLIP embeddings,
       ``clip_logits`` (B, Q, K+1) and ``valid`` (B, Q) bool (mask non-empty at CLIP resolution).
    3. :meth:`_combine_scores`: ensemble -> ``mask_cls`` (B, Q, K+1) log-probabilities.
    4. :meth:`_postprocess`: per-image ``sem_seg`` / ``panoptic_seg`` / ``instances``.

    The vocabulary is the test dataset's (MetadataCatalog of DATASETS.TEST[0]) unless
    :meth:`set_vocabulary` sets a custom one; text embeddings are cached per vocabulary.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        object_mask_threshold: float,
        overlap_threshold: float,
        train_metadata: Any,
        test_metadata: Any,
        segment_embedding: ConvSegmentEmbedding,
        sem_seg_postprocess_before_inference: bool,
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        test_topk_per_image: int,
        ensemble_mode: str,
        alpha: float,
        beta: float,
        ensemble_on_valid_mask: bool,
    ) -> None:
        super().__init__()
        ENSEMBLE_MODES.get(ensemble_mode)  # an unknown mode fails here, listing the valid ones
        for name, value in (("ALPHA", alpha), ("BETA", beta)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"MODEL.ENSEMBLE.{name} must lie in [0, 1], got {value}")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.train_metadata = train_metadata
        self.test_metadata = test_metadata
        # Normalisation, padding and mask-pooled CLIP embeddings: the recipe the database
        # builder uses too (plain object over ``backbone``: no new state-dict keys).
        self.segment_embedding = segment_embedding
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        self.void_embedding = nn.Embedding(1, backbone.dim_latent)
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.test_topk_per_image = test_topk_per_image
        self.ensemble_mode = ensemble_mode
        self.alpha, self.beta = float(alpha), float(beta)
        self.ensemble_on_valid_mask = ensemble_on_valid_mask
        self.text_cache = TextEmbeddingCache(backbone.text_encoder)
        self._custom_vocabulary: Optional[Vocabulary] = None
        self._dataset_vocabulary: Optional[Vocabulary] = None
        # New weights make cached text embeddings stale.
        self._register_load_state_dict_pre_hook(self._clear_text_cache)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        mf = cfg.MODEL.MASK_FORMER
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        if cfg.MODEL.FC_CLIP.EMBED_DIM != backbone.dim_latent:
            raise ValueError(
                f"MODEL.FC_CLIP.EMBED_DIM is {cfg.MODEL.FC_CLIP.EMBED_DIM} but CLIP "
                f"{cfg.MODEL.FC_CLIP.CLIP_MODEL_NAME!r} embeds in {backbone.dim_latent} dims"
            )
        criterion = SetCriterion(cfg)
        test = mf.TEST
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "train_metadata": (
                MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
            ),
            "test_metadata": (
                MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
            ),
            "segment_embedding": ConvSegmentEmbedding.from_config(cfg, backbone),
            "sem_seg_postprocess_before_inference": (
                test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or test.PANOPTIC_ON or test.INSTANCE_ON
            ),
            "semantic_on": test.SEMANTIC_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "ensemble_mode": cfg.MODEL.ENSEMBLE.MODE,
            "alpha": cfg.MODEL.ENSEMBLE.ALPHA,
            "beta": cfg.MODEL.ENSEMBLE.BETA,
            "ensemble_on_valid_mask": cfg.MODEL.FC_CLIP.ENSEMBLE_ON_VALID_MASK,
        }

    #: Retrieval weight; FC-CLIP has no retrieval (RetCLIP sets MODEL.ENSEMBLE.GAMMA).
    gamma: float = 0.0

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def _clear_text_cache(self, *args: Any, **kwargs: Any) -> None:
        self.text_cache.clear()

    # ---------------------------------------------------------------- vocabulary
    @property
    def train_class_names(self) -> List[str]:
        """Training classes (DATASETS.TRAIN[0]); they define the seen classes and the loss."""
        if self.train_metadata is None:
            raise KeyError("DATASETS.TRAIN is empty: the training vocabulary is unknown")
        return class_names_from_metadata(self.train_metadata)

    @property
    def vocabulary(self) -> Vocabulary:
        """The classes scored at inference: the custom one if set, else the test dataset's."""
        if self._custom_vocabulary is not None:
            return self._custom_vocabulary
        if self._dataset_vocabulary is None:
            if self.test_metadata is None:
                raise KeyError("DATASETS.TEST is empty: call set_vocabulary(class_names) first")
            self._dataset_vocabulary = vocabulary_from_metadata(
                self.test_metadata, self.train_class_names
            )
        return self._dataset_vocabulary

    def set_vocabulary(
        self,
        class_names: Sequence[str],
        seen: Optional[Sequence[bool]] = None,
        thing_classes: Optional[Sequence[str]] = None,
    ) -> Vocabulary:
        """Score these classes for the next images, without retraining.

        Args:
            class_names: K names, synonyms comma-separated ("sofa, couch").
            seen: K flags for the ensemble (alpha if seen, else beta); None decides them from
                the training classes (FC-CLIP's synonym-overlap rule).
            thing_classes: names (from ``class_names``) that are things; None: all are things.
        Returns:
            The vocabulary now in use (contiguous ids follow ``class_names`` order).
        """
        names = list(class_names) if not isinstance(class_names, str) else class_names
        thing_ids = thing_ids_of(names, thing_classes)
        train = self.train_class_names if seen is None else None
        self._custom_vocabulary = make_vocabulary(
            names, train_classes=train, seen=seen, thing_ids=thing_ids
        )
        return self._custom_vocabulary

    def set_metadata(self, test_metadata: Any) -> None:
        """Use a dataset's classes (``stuff_classes`` or ``thing_classes``) from now on."""
        self.test_metadata = test_metadata
        self._custom_vocabulary = None
        self._dataset_vocabulary = None

    def get_text_classifier(self, class_names: Sequence[str]) -> Tuple[torch.Tensor, List[int]]:
        """(ΣSyn+1, D) text classifier (void row last, trainable) and synonyms per class."""
        embeddings, num_synonyms = self.text_cache.get(class_names, self.device)
        return append_void(embeddings, self.void_embedding.weight), num_synonyms

    # ---------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict[str, Any]]) -> Any:
        """detectron2's meta-architecture contract.

        Args:
            batched_inputs: one dict per image with "image": (3, H, W) RGB tensor, 0-255
                (uint8 or float; other channel counts are refused, convert in the mapper);
                optional "height"/"width": output size (default: the input size); in training,
                "instances" with ``gt_classes`` (N,) and ``gt_masks`` (N, H, W) (tensor or
                BitMasks).
        Returns:
            Training: dict of weighted losses (``loss_ce``, ``loss_mask``, ``loss_dice`` and
            ``_0``..``_{L-2}`` copies for the auxiliary outputs).
            Inference: one dict per image with, as configured, "sem_seg" (K, height, width)
            float scores, "panoptic_seg" ((height, width) int32 ids, segments_info list) and
            "instances" (``Instances`` with pred_masks, pred_boxes (zeros), scores, pred_classes).
        """
        check_batched_inputs(batched_inputs, training=self.training)
        images = self._preprocess(batched_inputs)
        if self.training:
            return self._forward_train(batched_inputs, images)
        outputs = self._predict_queries(images)
        mask_cls = self._combine_scores(outputs)
        return self._postprocess(mask_cls, outputs["pred_masks"], batched_inputs, images)

    def _preprocess(self, batched_inputs: List[Dict[str, Any]]) -> ImageList:
        images = [x["image"].to(self.device) for x in batched_inputs]
        return self.segment_embedding.normalise_and_pad(images)

    def _forward_train(
        self, batched_inputs: List[Dict[str, Any]], images: ImageList
    ) -> Dict[str, torch.Tensor]:
        class_names = self.train_class_names
        if len(class_names) != self.sem_seg_head.num_classes:
            raise ValueError(
                f"training dataset has {len(class_names)} classes but MODEL.SEM_SEG_HEAD.NUM_CLASSES "
                f"is {self.sem_seg_head.num_classes}"
            )
        features = self.backbone(images.tensor)
        text_classifier, num_synonyms = self.get_text_classifier(class_names)
        outputs = self.sem_seg_head(features, text_classifier, num_synonyms)
        losses = self.criterion(outputs, self._prepare_targets(batched_inputs, images))
        weights = self.criterion.weight_dict
        return {k: v * weights[k] for k, v in losses.items() if k in weights}

    def _prepare_targets(
        self, batched_inputs: List[Dict[str, Any]], images: ImageList
    ) -> List[Dict]:
        """GT masks zero-padded to the batch size: [{"labels": (N,), "masks": (N, Hp, Wp)}]."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            masks = inst.gt_masks.tensor if isinstance(inst.gt_masks, BitMasks) else inst.gt_masks
            padded = torch.zeros(
                (masks.shape[0], h_pad, w_pad), dtype=masks.dtype, device=masks.device
            )
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": inst.gt_classes, "masks": padded})
        return targets

    def _predict_queries(self, images: ImageList) -> Dict[str, Any]:
        """Backbone, head and out-of-vocabulary branch for the current vocabulary."""
        features = self.backbone(images.tensor)
        text_classifier, num_synonyms = self.get_text_classifier(self.vocabulary.class_names)
        outputs = self.sem_seg_head(features, text_classifier, num_synonyms)
        clip_embeddings, valid = self._clip_embeddings(
            features["clip_vis_dense"], outputs["pred_masks"]
        )
        clip_logits = get_classification_logits(
            clip_embeddings, text_classifier, self.backbone.clip_model.logit_scale, num_synonyms
        )
        return {
            "pred_logits": outputs["pred_logits"],
            "pred_masks": outputs["pred_masks"],
            "clip_embeddings": clip_embeddings,
            "clip_logits": clip_logits,
            "valid": valid,
        }

    def _clip_embeddings(
        self, dense: torch.Tensor, pred_masks: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frozen-CLIP embeddings of each query's mask (B, Q, D), and whether the mask is non-empty
        at CLIP resolution (B, Q): the segment-embedding recipe's pooling (also the retrieval key)."""
        return self.segment_embedding.pool(dense, pred_masks)

    def ensemble_inputs(self, outputs: Dict[str, Any]) -> Dict[str, Optional[torch.Tensor]]:
        """What the ensemble reads from :meth:`_predict_queries`'s outputs, under the names of
        :func:`retclip.ensemble.ensemble_probabilities` (and of the score cache)."""
        return {
            "in_vocab_logits": outputs["pred_logits"],
            "clip_logits": outputs["clip_logits"],
            "seen": self.vocabulary.seen.to(outputs["pred_logits"].device),
            "valid": outputs["valid"] if self.ensemble_on_valid_mask else None,
            "retrieval_scores": outputs.get("retrieval_scores"),
            "retrieval_available": outputs.get("retrieval_available"),
        }

    def ensemble_probabilities(
        self, outputs: Dict[str, Any], alpha: float, beta: float, gamma: float
    ) -> torch.Tensor:
        """Class probabilities (B, Q, K+1) of this model's ensemble mode at the given weights."""
        return ensemble_probabilities(
            self.ensemble_mode, self.ensemble_inputs(outputs), alpha, beta, gamma
        )

    def _combine_scores(self, outputs: Dict[str, Any]) -> torch.Tensor:
        """The configured ensemble -> (B, Q, K+1) log-probabilities, void last (FC-CLIP: the
        geometric one; there is no retrieval, so gamma is 0)."""
        return ensemble_log_probabilities(
            self.ensemble_mode, self.ensemble_inputs(outputs), self.alpha, self.beta, self.gamma
        )

    def _postprocess(
        self,
        mask_cls: torch.Tensor,
        pred_masks: torch.Tensor,
        batched_inputs: List[Dict[str, Any]],
        images: ImageList,
    ) -> List[Dict[str, Any]]:
        """Per image: masks to the output size (:func:`output_mask_logits`), then the outputs."""
        padded_size = tuple(images.tensor.shape[-2:])
        settings = self.postprocess_settings()
        results = []
        for cls_i, masks_i, x, size in zip(
            mask_cls, pred_masks, batched_inputs, images.image_sizes
        ):
            height, width = x.get("height", size[0]), x.get("width", size[1])
            masks_i = output_mask_logits(masks_i, padded_size, size, height, width, settings)
            results.append(
                retry_if_cuda_oom(image_outputs)(cls_i, masks_i, settings, size, height, width)
            )
        return results

    def postprocess_settings(self) -> PostprocessSettings:
        """This model's post-processing (the thing ids follow the current vocabulary)."""
        return PostprocessSettings(
            semantic_on=self.semantic_on,
            panoptic_on=self.panoptic_on,
            instance_on=self.instance_on,
            object_mask_threshold=self.object_mask_threshold,
            overlap_threshold=self.overlap_threshold,
            sem_seg_postprocess_before_inference=self.sem_seg_postprocess_before_inference,
            topk=self.test_topk_per_image,
            thing_ids=frozenset(self.vocabulary.thing_ids),
        )
