"""Re-ranking without the network equals a full inference at the same weights (RetCLIP and
FC-CLIP), is driven by the sliders' weights, and explains segments from the database."""
import numpy as np
import pytest
import torch

from retclip.reranking import EnsembleWeights, model_input, predict_queries, rerank
from retclip.retrieval import FeatureDatabase
from retclip.segment_explanations import SegmentExplainer
from retclip.vocabulary_syntax import split_kinds
from retclip.web_demo.tiny_example import example_photo

from .conftest import SIZES, VOCABULARY, build_tiny_model

pytestmark = pytest.mark.slow

GRID = [EnsembleWeights(a, b, g) for a, b, g in ((0.4, 0.7, 0.3), (0.0, 0.2, 0.0), (1.0, 1.0, 1.0), (0.6, 0.5, 0.8))]


def _vocabulary(model):
    classes, things = split_kinds([c.strip() for c in VOCABULARY.split(",")])
    model.set_vocabulary(classes, seen=[False] * len(classes),
                         thing_classes=[c for c, t in zip(classes, things) if t])
    return classes, things


def _full_inference(model, x, w):
    names = ("alpha", "beta", "gamma") if hasattr(model, "gamma") else ("geometric_ensemble_alpha", "geometric_ensemble_beta")
    saved = [getattr(model, n) for n in names]
    for n, v in zip(names, (w.alpha, w.beta, w.gamma)):
        setattr(model, n, v)
    try:
        with torch.no_grad():
            return model([x])[0]
    finally:
        for n, v in zip(names, saved):
            setattr(model, n, v)


@pytest.mark.parametrize("meta", ["RetCLIP", "FCCLIP"])
def test_rerank_equals_full_inference(tiny_example, meta):
    model = build_tiny_model(tiny_example, meta, database=meta == "RetCLIP")
    _vocabulary(model)
    x = model_input(example_photo("chelsea"), *SIZES)
    queries = predict_queries(model, x)
    labels_seen = set()
    for w in GRID:
        fast = rerank(model, queries, w)["panoptic_seg"]
        full = _full_inference(model, x, w)["panoptic_seg"]
        assert torch.equal(fast[0], full[0]), w
        assert fast[1] == full[1], w
        labels_seen.add(tuple(s["category_id"] for s in full[1]))
    assert any(len(labels) > 0 for labels in labels_seen)  # the example shows segments


def test_gamma_changes_a_label(tiny_retclip):
    """The tiny example is built so that retrieval matters: some γ relabels a segment."""
    _vocabulary(tiny_retclip)
    queries = predict_queries(tiny_retclip, model_input(example_photo("chelsea"), *SIZES))
    labels = [
        [s["category_id"] for s in rerank(tiny_retclip, queries, EnsembleWeights(0.4, 0.7, g))["panoptic_seg"][1]]
        for g in (0.0, 1.0)
    ]
    assert labels[0] != labels[1]


def test_explanations_name_database_classes(tiny_example, tiny_retclip):
    classes, things = _vocabulary(tiny_retclip)
    queries = predict_queries(tiny_retclip, model_input(example_photo("astronaut"), *SIZES))
    result = rerank(tiny_retclip, queries, EnsembleWeights(0.4, 0.7, 1.0))
    segments = SegmentExplainer(tiny_retclip, top_neighbours=3).explain(queries, result)
    assert segments
    rows = FeatureDatabase.open(tiny_example["database"]).load_all()
    db_names = FeatureDatabase.open(tiny_example["database"]).class_names
    s_iv = queries.outputs["pred_logits"][0].softmax(-1)
    for s in segments:
        assert s["isthing"] == things[classes.index(s["class"])]
        assert s["s_iv"] == pytest.approx(float(s_iv[s["query"], s["category_id"]]), abs=1e-6)
        if not s["retrieval_usable"]:
            assert s["neighbours"] == []
            continue
        assert s["s_ret"] > 0 and 1 <= len(s["neighbours"]) <= 3
        for n in s["neighbours"]:
            assert n["database_class"] == db_names[rows.labels[n["row"]]]
            assert n["mapped_class"] == s["class"] and n["mapping"]["method"] == "synonym"
            assert n["source"] == rows.sources[n["row"]] and n["has_mask"]


def test_unusable_query_lists_no_neighbours(tiny_retclip):
    """A query whose mask is empty has s_ret 0 and must show no neighbours (no weight 1.0)."""
    _vocabulary(tiny_retclip)
    queries = predict_queries(tiny_retclip, model_input(example_photo("coffee"), *SIZES))
    result = rerank(tiny_retclip, queries, EnsembleWeights(0.4, 0.7, 1.0))
    queries.outputs["valid"][:] = False  # as if every mask were empty at CLIP resolution
    segments = SegmentExplainer(tiny_retclip).explain(queries, result)
    assert segments and all(s["neighbours"] == [] and not s["retrieval_usable"] for s in segments)


def test_cli_demo_json_and_picture(tiny_example, tmp_path):
    """tools/demo.py on the example: ':stuff' makes wall a stuff class, every segment has its
    scores, neighbours name their database class, and the picture carries a legend."""
    import importlib.util
    import json
    from pathlib import Path

    from PIL import Image

    from .conftest import overrides

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("retclip_tools_demo", root / "tools" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = tmp_path / "out"
    assert demo.main(["--config-file", str(root / "configs/tests/tiny_retclip_convnext.yaml"),
                      "--input", str(Path(tiny_example["photos"]) / "chelsea.png"), "--vocabulary", VOCABULARY,
                      "--output", str(out), *overrides(tiny_example, database=False),
                      "MODEL.RETCLIP.DATABASE", tiny_example["database"], "MODEL.ENSEMBLE.GAMMA", "0.95"]) == 0
    payload = json.loads((out / "chelsea_segments.json").read_text())
    assert payload["weights"]["gamma"] == pytest.approx(0.95)
    classes = [s["class"] for s in payload["segments"]]
    assert "wall" in classes  # γ 0.95 shows the wall (see the browser test)
    for s in payload["segments"]:
        assert s["isthing"] == (s["class"] != "wall")
        assert 0 < s["score"] <= 1 and s["s_iv"] is not None and s["s_clip"] is not None
        for n in s["neighbours"]:
            assert n["database_class"] and n["mapped_class"] == s["class"]
    image = Image.open(Path(tiny_example["photos"]) / "chelsea.png")
    assert Image.open(out / "chelsea_panoptic.png").width > image.width
