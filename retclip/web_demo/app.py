"""The Gradio page of the web demo (``tools/web_demo.py``); the logic is in :mod:`.session`.

Gradio is imported here only (and by tools/web_demo.py), so the rest of RetCLIP never needs it.
"""
from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import gradio as gr

from ..reranking import EnsembleWeights
from ..utils.cli import UserError
from .session import PRESETS, ImageState, WebDemoSession, preset_vocabulary
from .tiny_example import EXAMPLE_PHOTOS, example_photo

logger = logging.getLogger(__name__)

__all__ = ["build_app", "write_example_photos"]

#: Errors shown in the page as a message (user mistakes and unreadable files).
_PAGE_ERRORS = (UserError, ValueError, OSError)


def write_example_photos(folder: Optional[str] = None) -> List[str]:
    """scikit-image's public-domain photos as PNG files the page can offer as examples."""
    from PIL import Image

    root = Path(folder or tempfile.mkdtemp(prefix="retclip_examples_"))
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in EXAMPLE_PHOTOS:
        path = root / f"{name}.png"
        if not path.is_file():
            Image.fromarray(example_photo(name)).save(path)
        paths.append(str(path))
    return paths


def _error(message: str) -> str:
    return f'<div class="demo-error" style="color:#b00020;font-weight:bold">⚠ {message}</div>'


def _shown(handler: Callable[..., Tuple]) -> Callable[..., Tuple]:
    """Run a page handler; a user mistake becomes a message in the status box (the first output),
    the other outputs unchanged, never a traceback in the page."""

    @functools.wraps(handler)
    def wrapped(*args: Any) -> Tuple:
        try:
            return handler(*args)
        except _PAGE_ERRORS as e:
            logger.info("shown in the page: %s", e)
            outputs = getattr(wrapped, "num_outputs", 1)
            return (_error(str(e)),) + tuple(gr.skip() for _ in range(outputs - 1))

    return wrapped


def _segment_choices(state: ImageState) -> List[Tuple[str, int]]:
    return [(f"{i + 1}. {s['class'].split(',')[0]} ({s['score']:.2f})", i) for i, s in enumerate(state.segments)]


def build_app(session: WebDemoSession, example_paths: List[str]) -> Any:
    """The page: inputs on the left, overlay + legend + neighbours on the right."""
    w = session.default_weights
    with gr.Blocks(title="RetCLIP demo") as app:
        gr.Markdown("# RetCLIP: open-vocabulary panoptic segmentation with retrieval\n"
                    "Classes separated by commas, synonyms by `;`, stuff classes end in `:stuff` "
                    "(`cat, sofa;couch, sky:stuff`). Sliders re-rank without running the network.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="photo", type="numpy", sources=["upload"], elem_id="photo")
                gr.Examples(examples=[[p] for p in example_paths], inputs=[image], label="example photos")
                vocabulary = gr.Textbox(label="vocabulary", lines=3, elem_id="vocabulary",
                                        placeholder="cat, sofa;couch, lamp, wall:stuff")
                preset = gr.Dropdown(choices=list(PRESETS), value=None, label="preset vocabulary")
                database = gr.Textbox(label="feature database (folder)", value=session.database_path(),
                                      elem_id="database", visible=session.retrieval_config is not None)
                run = gr.Button("Segment", variant="primary", elem_id="run")
                alpha = gr.Slider(0, 1, value=w.alpha, step=0.05, label="α (seen classes)", elem_id="alpha")
                beta = gr.Slider(0, 1, value=w.beta, step=0.05, label="β (unseen classes)", elem_id="beta")
                gamma = gr.Slider(0, 1, value=w.gamma, step=0.05, label="γ (retrieval share)", elem_id="gamma",
                                  interactive=session.has_retrieval or session.retrieval_config is not None)
            with gr.Column(scale=2):
                status = gr.HTML(elem_id="status")
                overlay = gr.Image(label="panoptic segments (click one)", type="numpy", interactive=False,
                                   elem_id="overlay")
                legend = gr.HTML(elem_id="legend")
                segment = gr.Dropdown(choices=[], label="segment (or click it in the picture)", elem_id="segment")
                scores = gr.HTML(elem_id="scores")
                gallery = gr.Gallery(label="retrieved neighbours", columns=5, height="auto", object_fit="contain",
                                     elem_id="neighbours")  # contain: captions under the crops stay whole
        _wire(session, state, image, vocabulary, preset, database, run, (alpha, beta, gamma),
              status, overlay, legend, segment, scores, gallery)
    return app


def _wire(session: WebDemoSession, state, image, vocabulary, preset, database, run, sliders,
          status, overlay, legend, segment, scores, gallery) -> None:
    """Connect the events (see :func:`build_app` for the components)."""
    def weights(a: float, b: float, g: float) -> EnsembleWeights:
        return EnsembleWeights(float(a), float(b), float(g))

    def on_run(img, vocab, db, a, b, g):
        message = ""
        if session.retrieval_config is not None and (db or "").strip() != session.database_path():
            message = session.use_database(db)
        analysed = session.analyse(img, vocab)
        picture, table = session.view(analysed, weights(a, b, g))
        message += f" {len(analysed.segments)} segments."
        return (f'<div class="demo-ok">{message.strip()}</div>', picture, table, analysed,
                gr.Dropdown(choices=_segment_choices(analysed), value=None), [], "")

    def on_slider(st, a, b, g):
        if st is None:
            return ("", gr.skip(), gr.skip(), gr.skip())
        picture, table = session.view(st, weights(a, b, g))
        return ("", picture, table, gr.Dropdown(choices=_segment_choices(st), value=None))

    def show(st, index):
        if st is None or index is None or not 0 <= int(index) < len(st.segments):
            return ("", [], "")
        thumbs, summary = session.neighbours(st, int(index))
        return ("", thumbs, summary)

    def show_at(st, x, y):
        if st is None:
            return ("", [], "")
        index = session.segment_at(st, int(x), int(y))
        if index is None:
            return ("", [], "<p>No segment at that point.</p>")
        return show(st, index)

    handlers: Dict[str, Callable] = {}
    for name, fn, n in (("run", on_run, 7), ("slider", on_slider, 4), ("show", show, 3), ("at", show_at, 3)):
        handlers[name] = _shown(fn)
        handlers[name].num_outputs = n

    def on_click(st, evt: gr.SelectData):
        # Gradio passes the click's (x, y) in image pixels through the SelectData annotation.
        return handlers["at"](st, evt.index[0], evt.index[1])

    run.click(handlers["run"], [image, vocabulary, database, *sliders],
              [status, overlay, legend, state, segment, gallery, scores])
    for slider in sliders:
        slider.change(handlers["slider"], [state, *sliders], [status, overlay, legend, segment])
    segment.change(handlers["show"], [state, segment], [status, gallery, scores])
    overlay.select(on_click, [state], [status, gallery, scores])
    preset.change(lambda name: preset_vocabulary(name) if name else gr.skip(), [preset], [vocabulary])
