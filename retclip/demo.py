"""Panoptic predictions for a few images with a custom vocabulary, pictures and explanations.

Used by ``tools/demo.py``. For every image it writes ``<stem>_panoptic.png`` (detectron2's
Visualizer) and ``<stem>_segments.json``: each segment's class, score, area and, with a database,
the retrieved neighbours that voted for the class (database row, source image, similarity).
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
import torch.nn.functional as F
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.utils.visualizer import ColorMode, Visualizer

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
        self.resize = T.ResizeShortestEdge(min_size, max_size)
        self.top_neighbours = top_neighbours
        self.metadata = None

    def set_vocabulary(self, classes: Sequence[str]) -> None:
        seen = None
        if getattr(self.model, "train_metadata", None) is None:
            logger.warning("DATASETS.TRAIN is empty: every class is treated as unseen (beta weights)")
            seen = [False] * len(classes)
        vocab = self.model.set_vocabulary(list(classes), seen=seen)
        name = f"__retclip_demo_{abs(hash(tuple(classes)))}"
        meta = MetadataCatalog.get(name)
        if not hasattr(meta, "stuff_classes"):
            # Contiguous ids index the full list for things and stuff alike (FC-CLIP's layout).
            meta.set(stuff_classes=list(vocab.class_names), thing_classes=list(vocab.class_names))
        self.metadata = meta
        logger.info("vocabulary: %d classes, %d seen in training", len(vocab.class_names), int(vocab.seen.sum()))

    def __call__(self, image_path: Path) -> Dict[str, Any]:
        if self.metadata is None:
            raise RuntimeError("call set_vocabulary(classes) before predicting")
        image = read_image(image_path, format="RGB")
        height, width = image.shape[:2]
        transform = self.resize.get_transform(image)
        check_resized_shape(image_path, (height, width), (transform.new_h, transform.new_w))
        resized = transform.apply_image(image)
        x = {"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": height, "width": width}
        has_retrieval = getattr(self.model, "retrieval_head", None) is not None
        if has_retrieval:
            self.model.return_ensemble_inputs = True
            self.model.return_retrieval_votes = True
        try:
            with torch.no_grad():
                output = self.model([x])[0]
        finally:
            if has_retrieval:
                self.model.return_ensemble_inputs = False
                self.model.return_retrieval_votes = False
        return {"image": image, "output": output}

    def explain(self, prediction: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Per panoptic segment: class, area, score and (with retrieval) the voting neighbours."""
        output = prediction["output"]
        seg, infos = output["panoptic_seg"]
        names = self.metadata.stuff_classes
        extra = output.get("ensemble_inputs")
        votes = output.get("retrieval_votes")
        query_masks = probs = None
        if extra is not None and votes is not None:
            query_masks = F.interpolate(extra["mask_logits"][None], size=extra["output_size"], mode="bilinear",
                                        align_corners=False)[0] > 0
            probs = votes["mask_cls"].softmax(-1)
        retriever_rows = self._database_rows()
        segments = []
        for info in infos:
            mask = (seg == info["id"]).cpu()
            entry = {"id": info["id"], "category_id": info["category_id"], "class": names[info["category_id"]],
                     "isthing": info["isthing"], "area": int(mask.sum())}
            if query_masks is not None:
                q = self._best_query(mask, query_masks, probs, info["category_id"])
                entry["score"] = float(probs[q, info["category_id"]])
                entry["query"] = q
                entry["neighbours"] = self._neighbours(votes["votes"][q].get(info["category_id"], []), retriever_rows)
            segments.append(entry)
        return segments

    @staticmethod
    def _best_query(mask: torch.Tensor, query_masks: torch.Tensor, probs: torch.Tensor, category: int) -> int:
        """The query of this class whose mask overlaps the segment most (IoU)."""
        inter = (query_masks & mask).flatten(1).sum(1).float()
        union = (query_masks | mask).flatten(1).sum(1).float().clamp_min(1)
        iou = inter / union
        of_class = probs[:, :-1].argmax(1) == category
        iou = torch.where(of_class, iou, iou - 2.0)
        return int(iou.argmax())

    def _database_rows(self) -> List[Any]:
        head = getattr(self.model, "retrieval_head", None)
        return [] if head is None else [r.image_ids for r in head.retrievers]

    def _neighbours(self, entries: List[Dict[str, Any]], rows: List[Any]) -> List[Dict[str, Any]]:
        entries = sorted(entries, key=lambda e: -e["similarity"])[: self.top_neighbours]
        out = []
        for e in entries:
            d = int(e.get("database", 0))
            image_id = str(rows[d][e["id"]]) if d < len(rows) and 0 <= e["id"] < len(rows[d]) else None
            out.append({"database": d, "row": int(e["id"]), "image_id": image_id,
                        "similarity": round(float(e["similarity"]), 6), "weight": round(float(e["weight"]), 6)})
        return out

    def save(self, prediction: Dict[str, Any], segments: List[Dict[str, Any]], output_dir: Path, stem: str) -> Dict[str, Path]:
        """Write the panoptic picture and the segments JSON (atomically). ``stem`` may hold
        sub-folders (the input's relative path, see :func:`retclip.demo_inputs.output_stems`)."""
        (output_dir / stem).parent.mkdir(parents=True, exist_ok=True)
        seg, infos = prediction["output"]["panoptic_seg"]
        visualizer = Visualizer(prediction["image"], self.metadata, instance_mode=ColorMode.IMAGE)
        picture = visualizer.draw_panoptic_seg(seg.cpu(), [dict(i) for i in infos]).get_image()
        paths = {"picture": output_dir / f"{stem}_panoptic.png", "segments": output_dir / f"{stem}_segments.json"}
        from PIL import Image

        tmp = paths["picture"].with_suffix(".tmp.png")
        Image.fromarray(picture).save(tmp)
        os.replace(tmp, paths["picture"])
        tmp_json = paths["segments"].with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps({"segments": segments}, indent=1))
        os.replace(tmp_json, paths["segments"])
        return paths
