"""Training-free RetCLIP (paper §2.2, Tables 2 and 3): proposals + dense CLIP ViT + retrieval.

Per image: a proposal source gives binary masks (ground truth, SAM on a point grid, or Grounding
DINO boxes -> SAM); a frozen CLIP ViT gives a dense map in the image-text space
(:mod:`retclip.modeling.vit_dense`); each mask is pooled from it into a segment embedding; the
embedding is classified by ``MODEL.TRAINING_FREE.MODE``:

* ``"clip"``: s = s_clip, softmax over the K classes of CLIP's cosine logits (text classifier
  with synonyms and the 14 templates, CLIP's own temperature);
* ``"retrieval"``: s = s_ret (:class:`~retclip.retrieval.RetrievalScorer`); a class
  that no database covers falls back to its s_clip (logged once per vocabulary), as in the
  label matching's fallback rule;
* ``"retclip"``: s = gamma * s_ret + (1 - gamma) * s_clip (gamma = MODEL.ENSEMBLE.GAMMA; 0 for
  classes no database covers).

Masks and scores become detectron2 outputs by :mod:`retclip.modeling.proposal_postprocessing`.
There is no void class and nothing to train.

Proposals are made on the image at its output size (``height`` x ``width``). Masks of any other
size are an error naming both sizes, not resized: a source returning them is misaligned with the
image (a wrong annotation file, a detector run on another resize), and resizing would hide that.
An image without proposals gives empty outputs (void panoptic map, zero scores, no instances).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ...ensemble import TRAINING_FREE_MODES, training_free_scores
from ...proposals import Proposals, ProposalSource, build_proposal_source
from ...retrieval import RetrievalConfig, RetrievalScorer
from ..mask_pooling import get_classification_logits
from ..proposal_postprocessing import proposal_instances, proposal_panoptic, proposal_semantic
from ..text_classifier import TextEmbeddingCache, encode_vocabulary
from ..segment_embedding import DatabaseRecipeCheck, ViTSegmentEmbedding
from ..vit_dense import DenseCLIPViT
from ..vocabulary import (
    Vocabulary,
    class_names_from_metadata,
    make_vocabulary,
    thing_ids_of,
    thing_ids_from_metadata,
)
from .inputs import check_batched_inputs

logger = logging.getLogger(__name__)

__all__ = ["TrainingFreeRetCLIP", "build_training_free_proposals"]


def build_training_free_proposals(cfg) -> ProposalSource:
    """The proposal source named by ``MODEL.TRAINING_FREE.PROPOSALS``, on ``MODEL.DEVICE``."""
    tf = cfg.MODEL.TRAINING_FREE
    return build_proposal_source(
        tf.PROPOSALS,
        tf.SAM,
        tf.GROUNDING_DINO,
        device=cfg.MODEL.DEVICE,
        key="MODEL.TRAINING_FREE.PROPOSALS",
    )


@META_ARCH_REGISTRY.register()
class TrainingFreeRetCLIP(nn.Module):
    """Proposals classified by a frozen CLIP ViT, retrieval, or both (see the module docstring).

    The vocabulary is the test dataset's (DATASETS.TEST[0]) unless :meth:`set_vocabulary` sets
    one. Inference only: in training mode ``forward`` raises.
    """

    @configurable
    def __init__(
        self,
        *,
        segment_embedding: ViTSegmentEmbedding,
        proposal_source: ProposalSource,
        retrieval_head: Optional[RetrievalScorer],
        mode: str,
        gamma: float,
        test_metadata: Any,
        semantic_on: bool,
        panoptic_on: bool,
        instance_on: bool,
        object_score_threshold: float,
        overlap_threshold: float,
        test_topk_per_image: int,
        score_with_proposal_confidence: bool = False,
        restrict_to_detected_classes: bool = False,
        allow_recipe_mismatch: bool = False,
    ) -> None:
        """
        Args:
            segment_embedding: the recipe of the segment embeddings (resize, mean/std, dense
                map, pooling) over the dense CLIP ViT (image and text towers), shared with the
                database builder.
            proposal_source: called as ``source(image, class_names, dataset_dict)``.
            retrieval_head: databases to search; required by modes "retrieval" and "retclip".
            mode: a name in :data:`retclip.ensemble.TRAINING_FREE_MODES`.
            gamma: retrieval weight of mode "retclip" (MODEL.ENSEMBLE.GAMMA).
            test_metadata: detectron2 metadata of the evaluated dataset (or None).
            semantic_on, panoptic_on, instance_on: which outputs to produce.
            object_score_threshold: panoptic drops proposals scoring at most this.
            overlap_threshold: panoptic drops a proposal keeping less than this of its area.
            test_topk_per_image: instance detections kept per image.
            score_with_proposal_confidence: multiply class scores by proposal confidences.
            restrict_to_detected_classes: zero the scores of classes that no proposal of the
                image carries as its class hint (text-prompted sources only).
            allow_recipe_mismatch: search databases embedded another way, with a warning.
        """
        super().__init__()
        TRAINING_FREE_MODES.get(mode)  # an unknown mode fails here, listing the valid ones
        if mode != "clip" and retrieval_head is None:
            raise ValueError(
                f"MODEL.TRAINING_FREE.MODE {mode!r} needs a feature database: "
                "set MODEL.RETCLIP.DATABASE"
            )
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"MODEL.ENSEMBLE.GAMMA must lie in [0, 1], got {gamma}")
        self.segment_embedding = segment_embedding
        self.clip = segment_embedding.clip
        self.proposal_source = proposal_source
        self.retrieval_head = retrieval_head
        if retrieval_head is not None:
            retrieval_head.embed_texts = self._embed_class_texts
        self.mode = mode
        self.gamma = float(gamma)
        self.test_metadata = test_metadata
        self.semantic_on, self.panoptic_on, self.instance_on = semantic_on, panoptic_on, instance_on
        self.object_score_threshold = object_score_threshold
        self.overlap_threshold = overlap_threshold
        self.test_topk_per_image = test_topk_per_image
        self.score_with_proposal_confidence = score_with_proposal_confidence
        self.restrict_to_detected_classes = restrict_to_detected_classes
        self.text_cache = TextEmbeddingCache(self.clip.text_encoder)
        #: Refuses databases whose embedding recipe differs from the retrieval keys'.
        self.recipe_check = DatabaseRecipeCheck(
            segment_embedding, retrieval_head, allow_recipe_mismatch
        )
        self._register_load_state_dict_pre_hook(self.recipe_check.reset)
        self._vocabulary: Optional[Vocabulary] = None
        self._fallback_logged: set = set()

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        tf, test = cfg.MODEL.TRAINING_FREE, cfg.MODEL.MASK_FORMER.TEST
        clip = DenseCLIPViT.from_config(cfg)
        retrieval = RetrievalConfig.from_cfg(cfg, device=cfg.MODEL.DEVICE)
        head = None
        if retrieval.database_paths() and tf.MODE != "clip":
            head = RetrievalScorer.from_config(retrieval, None, report_dir=cfg.OUTPUT_DIR or None)
        return {
            "segment_embedding": ViTSegmentEmbedding.from_config(cfg, clip),
            "proposal_source": build_training_free_proposals(cfg),
            "retrieval_head": head,
            "mode": tf.MODE,
            "gamma": cfg.MODEL.ENSEMBLE.GAMMA,
            "test_metadata": (
                MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
            ),
            "semantic_on": test.SEMANTIC_ON,
            "panoptic_on": test.PANOPTIC_ON,
            "instance_on": test.INSTANCE_ON,
            "object_score_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "score_with_proposal_confidence": tf.SCORE_WITH_PROPOSAL_CONFIDENCE,
            "restrict_to_detected_classes": tf.RESTRICT_TO_DETECTED_CLASSES,
            "allow_recipe_mismatch": cfg.MODEL.RETCLIP.ALLOW_RECIPE_MISMATCH,
        }

    @property
    def device(self) -> torch.device:
        return self.clip.device

    # ---------------------------------------------------------------- vocabulary
    @property
    def vocabulary(self) -> Vocabulary:
        """The classes scored: set by :meth:`set_vocabulary`, else the test dataset's."""
        if self._vocabulary is None:
            if self.test_metadata is None:
                raise KeyError("DATASETS.TEST is empty: call set_vocabulary(class_names) first")
            self._vocabulary = make_vocabulary(
                class_names_from_metadata(self.test_metadata),
                thing_ids=sorted(thing_ids_from_metadata(self.test_metadata)),
                allow_duplicates=True,
                source=f"dataset {getattr(self.test_metadata, 'name', '<unnamed>')!r}",
            )
        return self._vocabulary

    def set_vocabulary(
        self, class_names: Sequence[str], thing_classes: Optional[Sequence[str]] = None
    ) -> Vocabulary:
        """Score these classes from now on (synonyms comma-separated); things default to all."""
        names = list(class_names) if not isinstance(class_names, str) else class_names
        thing_ids = thing_ids_of(names, thing_classes)
        self._vocabulary = make_vocabulary(names, thing_ids=thing_ids)
        return self._vocabulary

    def _embed_class_texts(self, texts: List[str]) -> torch.Tensor:
        """Template-averaged CLIP text embeddings of single names, for label matching."""
        with torch.no_grad():
            return encode_vocabulary(self.clip.text_encoder, texts)[0]

    # ---------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """detectron2's inference contract.

        Args:
            batched_inputs: one dict per image with "image" (3, H, W) RGB 0-255 tensor, optional
                "height"/"width" (output size, default the input size) and, for ground-truth
                proposals, the dataset dict's "pan_seg_file_name" and "segments_info".
        Returns:
            One dict per image with, as configured, "sem_seg" (K, height, width) float scores,
            "panoptic_seg" ((height, width) int32 ids, segments_info) and "instances"
            (pred_masks, pred_boxes, scores, pred_classes), plus "num_proposals" (the number of
            proposals).
        Raises:
            RuntimeError: in training mode (nothing to train).
            ValueError: a proposal source returned masks of another size than the image.
        """
        if self.training:
            raise RuntimeError(
                "TrainingFreeRetCLIP has nothing to train; run tools/train_net.py with --eval-only"
            )
        check_batched_inputs(batched_inputs, training=False)
        return [self.inference_one(x) for x in batched_inputs]

    def _output_image(self, x: Dict[str, Any]) -> Tuple[np.ndarray, torch.Tensor]:
        """(H x W x 3 uint8 numpy at the output size, 3 x h x w float tensor as fed in)."""
        image = x["image"].to(self.device).float()
        height, width = int(x.get("height", image.shape[1])), int(x.get("width", image.shape[2]))
        full = image
        if (height, width) != tuple(image.shape[1:]):
            full = F.interpolate(
                image[None], size=(height, width), mode="bilinear", align_corners=False
            )[0]
        array = full.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return np.ascontiguousarray(array), image

    def _proposals(self, x: Dict[str, Any], array: np.ndarray) -> Proposals:
        source = self.proposal_source
        names = (
            list(self.vocabulary.class_names)
            if getattr(source, "needs_class_names", False)
            else None
        )
        proposals = source(array, class_names=names, dataset_dict=x)
        expected = tuple(array.shape[:2])
        if tuple(proposals.masks.shape[-2:]) != expected:
            what = x.get("file_name") or x.get("image_id") or "image"
            raise ValueError(
                f"{type(source).__name__} returned masks of size "
                f"{tuple(proposals.masks.shape[-2:])} for "
                f"{what} of size {expected}; proposal masks must match the image"
            )
        return proposals

    def segment_embeddings(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """N x D mask-pooled dense CLIP features (not normalised) of one image: the recipe the
        database builder uses for its rows.

        Args:
            image: 3 x H x W RGB 0-255; masks: N x H' x W' bool over the same extent.
        """
        return self.segment_embedding.embed_image(image, masks)

    def classify(self, embeddings: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """N x K class scores of segment embeddings by the configured mode (0 where not valid)."""
        names = list(self.vocabulary.class_names)
        text, num_synonyms = self.text_cache.get(names, self.device)
        classifier = torch.cat(
            [text, text.new_zeros((1, text.shape[1]))]
        )  # no void: a dummy row, dropped
        logits = get_classification_logits(
            embeddings, classifier, self.clip.logit_scale, num_synonyms
        )[:, :-1]
        retrieval_scores = available = None
        if self.retrieval_head is not None:
            self.recipe_check()
            retrieved = self.retrieval_head(embeddings, names, usable=valid)
            available = retrieved.available.to(self.device)
            self._log_fallback(names, available)
            retrieval_scores = retrieved.scores.to(self.device)
        scores = training_free_scores(logits, retrieval_scores, self.mode, self.gamma, available)
        return torch.where(valid[:, None], scores, torch.zeros_like(scores))

    def _log_fallback(self, names: List[str], available: torch.Tensor) -> None:
        key = tuple(names)
        if key in self._fallback_logged or bool(available.all()):
            return
        self._fallback_logged.add(key)
        missing = [names[i] for i in torch.nonzero(~available).flatten().tolist()]
        logger.warning(
            "mode %r: %d of %d classes are in no feature database and fall back to CLIP: %s",
            self.mode,
            len(missing),
            len(names),
            missing,
        )

    def _keep_detected_classes(self, probs: torch.Tensor, proposals: Proposals) -> torch.Tensor:
        """Zero the classes no proposal was detected for (text-prompted sources only: a ground
        truth source's hints are the answers and must not be used)."""
        if proposals.labels is None or not getattr(
            self.proposal_source, "needs_class_names", False
        ):
            return probs
        detected = torch.zeros(probs.shape[1], dtype=torch.bool, device=probs.device)
        detected[proposals.labels.to(probs.device)] = True
        return probs * detected

    def inference_one(self, x: Dict[str, Any]) -> Dict[str, Any]:
        """Outputs of one image (see :meth:`forward`)."""
        array, image = self._output_image(x)
        proposals = self._proposals(x, array)
        masks = proposals.masks.to(self.device)
        valid = self.segment_embedding.valid(masks)
        if len(proposals):
            with torch.no_grad():
                probs = self.classify(self.segment_embeddings(image, masks), valid)
        else:
            probs = torch.zeros((0, len(self.vocabulary)), device=self.device)
        if self.restrict_to_detected_classes:
            probs = self._keep_detected_classes(probs, proposals)
        confidence = (
            proposals.scores.to(self.device) if self.score_with_proposal_confidence else None
        )
        things = self.vocabulary.thing_ids
        result: Dict[str, Any] = {"num_proposals": len(proposals)}
        if self.semantic_on:
            result["sem_seg"] = proposal_semantic(masks, probs)
        if self.panoptic_on:
            result["panoptic_seg"] = proposal_panoptic(
                masks,
                probs,
                thing_ids=things,
                overlap_threshold=self.overlap_threshold,
                object_score_threshold=self.object_score_threshold,
                confidence=confidence,
            )
        if self.instance_on:
            result["instances"] = proposal_instances(
                masks,
                probs,
                topk=self.test_topk_per_image,
                thing_ids=things,
                things_only=self.panoptic_on,
                confidence=confidence,
            )
        return result
