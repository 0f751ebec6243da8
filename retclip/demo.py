"""Panoptic predictions for a few images with a custom vocabulary, pictures and explanations.

Used by ``tools/demo.py``. For every image it writes ``<stem>_panoptic.png`` (segments in
colours fixed per class name, labels inside large segments, a legend with class, score and
thing/stuff: :mod:`retclip.visualization`) and ``<stem>_segments.json``: each segment's class,
score and the scores behind it, and with a database the neighbours that voted for the class
(:mod:`retclip.segment_explanations`).
"""
from __future__ import annotations

from retclip import compat as _compat

_compat.apply_all()  # before detectron2 is first imported

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import transforms as T

from .reranking import model_input, model_weights, predict_queries, rerank
from .segment_explanations import SegmentExplainer
from .visualization import draw_panoptic

from retclip.demo_inputs import list_images, output_stems, parse_vocabulary  # noqa: F401  (re-exported)
from retclip.utils.image_io import check_resized_shape, read_image

logger = logging.getLogger(__name__)

__all__ = ["parse_vocabulary", "list_images", "output_stems", "DemoPredictor"]


class DemoPredictor:
    """Set the vocabulary once, then predict and explain image after image.

    Args:
        model: a built FCCLIP/RetCLIP model with weights loaded, in eval mode.
        min_size, max_size: test-time resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST).
        top_neighbours: neighbours listed per segment in the JSON.
    """

    def __init__(self, model: torch.nn.Module, min_size: int, max_size: int, top_neighbours: int = 5) -> None:
        self.model = model.eval()
        self.min_size, self.max_size = min_size, max_size
        self.explainer = SegmentExplainer(self.model, top_neighbours)
        self.classes: Optional[List[str]] = None

    def set_vocabulary(self, classes: Sequence[str], things: Optional[Sequence[bool]] = None) -> None:
        """Classes (synonyms comma-joined) and which are things (default: all; see
        :func:`retclip.vocabulary_syntax.split_kinds` for the ``:stuff`` syntax)."""
        seen = None
        if getattr(self.model, "train_metadata", None) is None:
            logger.warning("DATASETS.TRAIN is empty: every class is treated as unseen (beta weights)")
            seen = [False] * len(classes)
        things = [True] * len(classes) if things is None else list(things)
        thing_classes = [c for c, t in zip(classes, things) if t]
        vocab = self.model.set_vocabulary(list(classes), seen=seen, thing_classes=thing_classes)
        self.classes = list(vocab.class_names)
        logger.info("vocabulary: %d classes (%d things), %d seen in training", len(self.classes),
                    len(thing_classes), int(vocab.seen.sum()))

    def __call__(self, image_path: Path) -> Dict[str, Any]:
        """The network once, then the model's own ensemble and post-processing (equal to its
        ``forward``; the kept outputs give every segment's scores, FC-CLIP models included)."""
        if self.classes is None:
            raise RuntimeError("call set_vocabulary(classes) before predicting")
        image = read_image(image_path, format="RGB")
        height, width = image.shape[:2]
        resized = T.ResizeShortestEdge.get_output_shape(height, width, self.min_size, self.max_size)
        check_resized_shape(image_path, (height, width), resized)
        queries = predict_queries(self.model, model_input(image, self.min_size, self.max_size))
        return {"image": image, "queries": queries, "output": rerank(self.model, queries)}

    def explain(self, prediction: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Per panoptic segment: class, thing/stuff, area, score, s_iv / s_clip / s_ret and (with
        a usable retrieval query) the neighbours with their database class and its mapping."""
        return self.explainer.explain(prediction["queries"], prediction["output"])

    def save(self, prediction: Dict[str, Any], segments: List[Dict[str, Any]], output_dir: Path, stem: str) -> Dict[str, Path]:
        """Write the panoptic picture (with its legend) and the segments JSON (atomically).
        ``stem`` may hold sub-folders (the input's relative path, see
        :func:`retclip.demo_inputs.output_stems`)."""
        (output_dir / stem).parent.mkdir(parents=True, exist_ok=True)
        panoptic = prediction["output"]["panoptic_seg"][0].cpu().numpy()
        picture = draw_panoptic(prediction["image"], panoptic, segments)
        paths = {"picture": output_dir / f"{stem}_panoptic.png", "segments": output_dir / f"{stem}_segments.json"}
        from PIL import Image

        tmp = paths["picture"].with_suffix(".tmp.png")
        Image.fromarray(picture).save(tmp)
        os.replace(tmp, paths["picture"])
        weights = model_weights(self.model)
        payload = {"weights": {"alpha": weights.alpha, "beta": weights.beta, "gamma": weights.gamma},
                   "classes": self.classes, "segments": segments}
        tmp_json = paths["segments"].with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps(payload, indent=1))
        os.replace(tmp_json, paths["segments"])
        return paths
