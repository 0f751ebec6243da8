"""What the web demo does, without the web: analyse an image once, re-rank at slider weights,
explain a segment. Kept apart from Gradio so it is tested directly and the page stays thin.

One model serves every browser tab; a lock serialises its use, and each tab keeps its own
:class:`ImageState` (the network outputs of its image), so moving a slider never runs the network.
"""
from __future__ import annotations

import dataclasses
import html
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.categories import ade20k_150_categories, coco_panoptic_categories
from ..reranking import EnsembleWeights, QueryOutputs, model_input, model_weights, predict_queries, rerank
from ..segment_explanations import SegmentExplainer
from ..utils.cli import UserError
from ..visualization import class_colour, draw_panoptic
from ..vocabulary_syntax import split_kinds

logger = logging.getLogger(__name__)

__all__ = ["ImageState", "PRESETS", "WebDemoSession", "preset_vocabulary", "read_upload"]

PRESETS = ("ADE-150", "COCO-133")


def preset_vocabulary(name: str) -> str:
    """A preset as vocabulary-box text: synonyms joined by ';', stuff classes marked ':stuff'."""
    categories = {"ADE-150": ade20k_150_categories, "COCO-133": coco_panoptic_categories}
    if name not in categories:
        raise UserError(f"unknown preset {name!r}; valid: {list(categories)}")
    return ", ".join(
        c["name"].replace(",", ";") + ("" if c["isthing"] else ":stuff") for c in categories[name]()
    )


def read_upload(data: Any) -> np.ndarray:
    """An uploaded image (array, PIL image, path or bytes) -> (H, W, 3) uint8 RGB.

    Raises:
        UserError: nothing uploaded, or not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    if data is None:
        raise UserError("no image: upload a photo or pick an example")
    if isinstance(data, np.ndarray):
        array = data
    elif isinstance(data, Image.Image):
        array = np.asarray(data.convert("RGB"))
    else:
        try:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
                array = np.asarray(img.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise UserError(f"cannot read the uploaded file as an image: {e}") from e
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise UserError(f"the upload is not an RGB image (array of shape {array.shape})")
    return np.ascontiguousarray(array[..., :3]).astype(np.uint8)


@dataclass
class ImageState:
    """One tab's analysed image: its classes and the network outputs re-ranking needs."""

    image: np.ndarray
    classes: List[str]
    things: List[bool]
    queries: QueryOutputs
    segments: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    panoptic: Optional[np.ndarray] = None


class WebDemoSession:
    """The model, its input size and the explainer, shared by the tabs of one web demo.

    Args:
        model: FC-CLIP or RetCLIP in eval mode.
        min_size, max_size: test-time resize.
        retrieval_config, encoder: how to open another database from the page (RetCLIP only).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        min_size: int,
        max_size: int,
        top_neighbours: int = 5,
        retrieval_config: Any = None,
        encoder: Any = None,
    ) -> None:
        self.model = model.eval()
        self.min_size, self.max_size = min_size, max_size
        self.explainer = SegmentExplainer(model, top_neighbours)
        self.retrieval_config = retrieval_config
        self.encoder = encoder
        self.lock = threading.Lock()

    @property
    def has_retrieval(self) -> bool:
        return getattr(self.model, "retrieval_head", None) is not None

    @property
    def default_weights(self) -> EnsembleWeights:
        return model_weights(self.model)

    def database_path(self) -> str:
        head = getattr(self.model, "retrieval_head", None)
        return "" if head is None else str(head.retrievers[0].database.path)

    def use_database(self, path: str) -> str:
        """Search another database from now on; a message for the page."""
        from ..retrieval import RetrievalScorer

        path = (path or "").strip()
        if not hasattr(self.model, "retrieval_head") or self.retrieval_config is None:
            raise UserError("this model has no retrieval head (an FC-CLIP config): databases do not apply")
        if not path:
            raise UserError("give the folder of a feature database")
        if not Path(path).expanduser().is_absolute():
            raise UserError(f"database {path!r}: give an absolute path")
        config = dataclasses.replace(self.retrieval_config, database=str(Path(path).expanduser()), fallback_database="")
        try:
            head = RetrievalScorer.from_config(config, self.encoder)
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise UserError(f"database {path}: {e}") from e
        head.embed_texts = self.model._embed_class_texts
        with self.lock:
            self.model.retrieval_head = head
            self.explainer = SegmentExplainer(self.model, self.explainer.top_neighbours)
        return f"searching {path} ({len(head.retrievers[0])} vectors)"

    def _set_vocabulary(self, classes: List[str], things: List[bool]) -> None:
        seen = None if getattr(self.model, "train_metadata", None) is not None else [False] * len(classes)
        self.model.set_vocabulary(classes, seen=seen, thing_classes=[c for c, t in zip(classes, things) if t])

    def analyse(self, image: Any, vocabulary: str) -> ImageState:
        """Run the network once for this image and vocabulary (a UserError for bad input)."""
        from ..demo import parse_vocabulary

        if not (vocabulary or "").strip():
            raise UserError("the vocabulary is empty: enter classes separated by commas (\"cat, sofa;couch, sky:stuff\")")
        try:
            classes, things = split_kinds(parse_vocabulary(vocabulary))
        except ValueError as e:
            raise UserError(f"vocabulary: {e}") from e
        array = read_upload(image)
        with self.lock:
            self._set_vocabulary(classes, things)
            queries = predict_queries(self.model, model_input(array, self.min_size, self.max_size))
        return ImageState(array, classes, things, queries)

    def view(self, state: ImageState, weights: EnsembleWeights) -> Tuple[np.ndarray, str]:
        """Re-rank ``state`` at ``weights``: (overlay picture without legend, legend HTML)."""
        with self.lock:
            self._set_vocabulary(state.classes, state.things)
            result = rerank(self.model, state.queries, weights)
            state.segments = self.explainer.explain(state.queries, result)
        state.panoptic = result["panoptic_seg"][0].cpu().numpy()
        picture = draw_panoptic(state.image, state.panoptic, state.segments, legend=False)
        return picture, legend_html(state.segments)

    def segment_at(self, state: ImageState, x: int, y: int) -> Optional[int]:
        """Index (in ``state.segments``) of the segment under pixel (x, y), None for none."""
        if state.panoptic is None or not (0 <= y < state.panoptic.shape[0] and 0 <= x < state.panoptic.shape[1]):
            return None
        sid = int(state.panoptic[y, x])
        return next((i for i, s in enumerate(state.segments) if s["id"] == sid), None)

    def neighbours(self, state: ImageState, index: int) -> Tuple[List[Tuple[np.ndarray, str]], str]:
        """Thumbnails (image, caption) of a segment's neighbours and an HTML summary of its scores."""
        segment = state.segments[index]
        with self.lock:
            thumbs = self.explainer.thumbnails(segment)
        gallery = [
            (t, f"{n['database_class']} -> {n['mapped_class']} | sim {n['similarity']:.3f} | w {n['weight']:.2f}")
            for t, n in zip(thumbs, segment["neighbours"]) if t is not None
        ]
        return gallery, segment_html(segment, has_retrieval=self.has_retrieval, missing=len(thumbs) - len(gallery))


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def legend_html(segments: Sequence[Dict[str, Any]]) -> str:
    """One table row per segment: colour, class, score, thing/stuff (row i = segment i)."""
    rows = []
    for i, s in enumerate(segments):
        r, g, b = class_colour(s["class"])
        rows.append(
            f'<tr class="legend-row" data-segment="{i}"><td><span style="display:inline-block;width:14px;'
            f'height:14px;background:rgb({r},{g},{b});border:1px solid #000"></span></td>'
            f'<td class="legend-class">{html.escape(s["class"].split(",")[0])}</td>'
            f'<td class="legend-score">{s["score"]:.3f}</td>'
            f'<td>{"thing" if s["isthing"] else "stuff"}</td></tr>'
        )
    if not rows:
        return '<p class="legend-empty">No segments: every query was void or below the thresholds.</p>'
    head = "<tr><th></th><th>class</th><th>score</th><th>kind</th></tr>"
    return f'<table class="legend">{head}{"".join(rows)}</table>'


def segment_html(segment: Dict[str, Any], has_retrieval: bool, missing: int = 0) -> str:
    """The scores that made a segment's label, and why it has no neighbours if so."""
    name = html.escape(segment["class"].split(",")[0])
    lines = [
        f'<p class="segment-scores"><b>{name}</b> ({"thing" if segment["isthing"] else "stuff"}), '
        f'score {segment["score"]:.3f}: s_iv {_fmt(segment["s_iv"])}, s_clip {_fmt(segment["s_clip"])}, '
        f's_ret {_fmt(segment["s_ret"])}</p>'
    ]
    if not has_retrieval:
        lines.append("<p>No database: FC-CLIP scores only, no neighbours.</p>")
    elif not segment["neighbours"]:
        lines.append("<p>No neighbours: this segment's query had no usable retrieval (empty mask, "
                     "class not in the database, or s_ret 0).</p>")
    if missing:
        lines.append(f"<p>{missing} neighbour(s) without a thumbnail: the database does not record "
                     "their source image (built before provenance), or the image has moved.</p>")
    return "".join(lines)
