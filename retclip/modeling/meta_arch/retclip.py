"""RetCLIP (Sadeq et al.): FC-CLIP plus a retrieval classifier and a three-way ensemble.

The retrieval key of each query is the same mask-pooled CLIP embedding that FC-CLIP's
out-of-vocabulary classifier uses (one backbone pass, no second encoder). Its neighbours in a
feature database give s_ret (:class:`retclip.retrieval.RetrievalScorer`), and
``MODEL.ENSEMBLE.MODE`` (a name in :data:`retclip.ensemble.ENSEMBLE_MODES`) chooses how s_iv,
s_clip and s_ret combine, with ``MODEL.ENSEMBLE.ALPHA/BETA/GAMMA``:

* "arithmetic", the paper's form: s_oov = γ s_ret + (1 − γ) s_clip; s = α s_oov + (1 − α) s_iv
  for classes seen in training, β instead of α for unseen ones;
* "geometric", FC-CLIP's form with retrieval folded into the CLIP probability; with γ = 0 the
  outputs are FC-CLIP's exactly.

Post-processing is FC-CLIP's. With ``return_ensemble_inputs`` set, every output also carries what
the ensemble and post-processing need, so sweeps over α, β, γ need no new forward pass.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList

from ...retrieval import RetrievalConfig, RetrievalScorer
from ..segment_embedding import DatabaseRecipeCheck
from ..text_classifier import encode_vocabulary
from .fcclip import FCCLIP

logger = logging.getLogger(__name__)

#: Ensemble inputs that are per class (K,), not per image.
_PER_CLASS = ("seen", "retrieval_available")

@META_ARCH_REGISTRY.register()
class RetCLIP(FCCLIP):
    """FC-CLIP with retrieval augmentation. Same inputs and outputs as :class:`FCCLIP`.

    Without a database (``MODEL.RETCLIP.DATABASE ""``) s_ret is absent and every class uses
    CLIP alone for its out-of-vocabulary score (γ = 0 for all), which makes the arithmetic form
    an ablation and the geometric form FC-CLIP itself.
    """

    @configurable
    def __init__(
        self,
        *,
        retrieval_head: Optional[RetrievalScorer],
        gamma: float,
        allow_recipe_mismatch: bool = False,
        **fcclip_kwargs: Any,
    ) -> None:
        super().__init__(**fcclip_kwargs)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"MODEL.ENSEMBLE.GAMMA must lie in [0, 1], got {gamma}")
        self.retrieval_head = retrieval_head
        self.gamma = float(gamma)
        #: Attach "ensemble_inputs" to every output (score cache for sweeps).
        self.return_ensemble_inputs = False
        #: Attach per-segment retrieval votes (for the demo); costs a little Python per query.
        self.return_retrieval_votes = False
        if retrieval_head is not None:
            retrieval_head.embed_texts = self._embed_class_texts
        #: Refuses databases whose embedding recipe differs from the retrieval keys'.
        self.recipe_check = DatabaseRecipeCheck(
            self.segment_embedding, retrieval_head, allow_recipe_mismatch
        )
        self._register_load_state_dict_pre_hook(self.recipe_check.reset)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        args = super().from_config(cfg)
        retrieval = RetrievalConfig.from_cfg(cfg, device=cfg.MODEL.DEVICE)
        head = None
        if retrieval.database_paths():
            # The databases' recipes are checked against the model's by ``recipe_check``.
            head = RetrievalScorer.from_config(retrieval, None, report_dir=cfg.OUTPUT_DIR or None)
        else:
            logger.info("MODEL.RETCLIP.DATABASE is empty: no retrieval, CLIP alone out of vocabulary")
        args.update(
            retrieval_head=head, gamma=cfg.MODEL.ENSEMBLE.GAMMA,
            allow_recipe_mismatch=cfg.MODEL.RETCLIP.ALLOW_RECIPE_MISMATCH,
        )
        return args

    def _embed_class_texts(self, texts: List[str]) -> torch.Tensor:
        """Template-averaged CLIP text embeddings of single names, for label matching."""
        with torch.no_grad():
            return encode_vocabulary(self.backbone.text_encoder, texts)[0]

    # ---------------------------------------------------------------- inference steps
    def forward(self, batched_inputs: List[Dict[str, Any]]) -> Any:
        """As :meth:`FCCLIP.forward`; at inference optionally adds "ensemble_inputs" and
        "retrieval_votes" per image (see ``return_ensemble_inputs``/``return_retrieval_votes``)."""
        if self.training:
            return super().forward(batched_inputs)
        from .inputs import check_batched_inputs

        check_batched_inputs(batched_inputs, training=False)
        images = self._preprocess(batched_inputs)
        outputs = self._predict_queries(images)
        mask_cls = self._combine_scores(outputs)
        results = self._postprocess(mask_cls, outputs["pred_masks"], batched_inputs, images)
        if self.return_ensemble_inputs:
            for i, inputs in enumerate(self._ensemble_inputs(outputs, batched_inputs, images)):
                results[i]["ensemble_inputs"] = inputs
        if self.return_retrieval_votes and outputs.get("retrieval_votes") is not None:
            for i, votes in enumerate(outputs["retrieval_votes"]):
                results[i]["retrieval_votes"] = {"votes": votes, "mask_cls": mask_cls[i].cpu()}
        return results

    def _predict_queries(self, images: ImageList) -> Dict[str, Any]:
        outputs = super()._predict_queries(images)
        batch, queries, _ = outputs["clip_embeddings"].shape
        num_classes = outputs["pred_logits"].shape[-1] - 1
        outputs["retrieval_scores"] = None
        outputs["retrieval_available"] = torch.zeros(num_classes, dtype=torch.bool, device=self.device)
        outputs["retrieval_votes"] = None
        if self.retrieval_head is None:
            return outputs
        self.recipe_check()
        flat = outputs["clip_embeddings"].reshape(batch * queries, -1)
        retrieved = self.retrieval_head(
            flat, self.vocabulary.class_names, usable=outputs["valid"].reshape(-1),
            return_votes=self.return_retrieval_votes,
        )
        outputs["retrieval_scores"] = retrieved.scores.reshape(batch, queries, num_classes).to(self.device)
        outputs["retrieval_available"] = retrieved.available.to(self.device)
        if retrieved.votes is not None:
            outputs["retrieval_votes"] = [retrieved.votes[b * queries : (b + 1) * queries] for b in range(batch)]
        return outputs

    def _ensemble_inputs(
        self, outputs: Dict[str, Any], batched_inputs: List[Dict[str, Any]], images: ImageList
    ) -> List[Dict[str, Any]]:
        """Per image, CPU tensors of everything the ensemble and post-processing need.

        Mask logits stay at the decoder's resolution (H/4 x W/4 of the padded batch, 16x smaller
        than upsampled); post-processing upsamples them to ``padded_size`` first, as here.
        """
        padded_size = (int(images.tensor.shape[-2]), int(images.tensor.shape[-1]))
        ensemble = self.ensemble_inputs(outputs)
        per_image = []
        for b, (x, size) in enumerate(zip(batched_inputs, images.image_sizes)):
            cached = {
                key: None if value is None else (value if key in _PER_CLASS else value[b]).cpu()
                for key, value in ensemble.items()
            }
            cached.update(
                mask_logits=outputs["pred_masks"][b].float().cpu(),
                padded_size=padded_size,
                image_size=(int(size[0]), int(size[1])),
                output_size=(int(x.get("height", size[0])), int(x.get("width", size[1]))),
            )
            per_image.append(cached)
        return per_image

    def score_cache_manifest(self) -> Dict[str, Any]:
        """What a sweep of this model's score cache needs besides the per-image tensors, taken
        from the model itself: its ensemble mode and weights, its vocabulary, and the
        post-processing settings (thresholds, outputs, thing ids) its forward uses."""
        return {
            "ensemble_mode": self.ensemble_mode,
            "weights": {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma},
            "class_names": list(self.vocabulary.class_names),
            "postprocess": self.postprocess_settings().to_dict(),
        }

    def ensemble_fingerprint(self) -> Dict[str, Any]:
        """Identity of what the cached ensemble inputs depend on (model, databases, vocabulary)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            if name.startswith("backbone.clip_model.") and "visual" not in name:
                continue  # the text tower only shapes the vocabulary, hashed below
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
            digest.update(str(tuple(tensor.shape)).encode())
        vocabulary = json.dumps(self.vocabulary.class_names)
        return {
            "model": digest.hexdigest(),
            "databases": self.retrieval_head.fingerprint() if self.retrieval_head is not None else None,
            "vocabulary": hashlib.sha256(vocabulary.encode()).hexdigest(),
            "ensemble_mode": self.ensemble_mode,
            "ensemble_on_valid_mask": bool(self.ensemble_on_valid_mask),
        }
