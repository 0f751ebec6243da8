"""The web demo in a real headless Chromium (OS package), driven by Playwright: upload, run,
legend rows; γ relabels a segment exactly as a full inference at that γ; a click shows labelled
neighbour thumbnails; an empty vocabulary shows an error in the page. Screenshots are kept
(see the ``screenshots`` fixture; the path is printed)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retclip.reranking import EnsembleWeights, model_input, predict_queries, rerank
from retclip.segment_explanations import SegmentExplainer
from retclip.visualization import label_positions
from retclip.vocabulary_syntax import split_kinds

from .conftest import SIZES, VOCABULARY, overrides

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PHOTO = "chelsea.png"
START_TIMEOUT_S = 300


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine: install the OS package (apt-get install -y chromium); "
                ".ci/run does so when run as root")


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (requirements/lock.txt) is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_example, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("web_demo") / "server.log"
    cmd = [sys.executable, str(ROOT / "tools" / "web_demo.py"), "--config-file",
           str(ROOT / "configs" / "tests" / "tiny_retclip_convnext.yaml"), "--port", str(port),
           "--examples-dir", str(log.parent / "examples"), *overrides(tiny_example)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"web demo did not start (exit {proc.poll()}): {log.read_text()[-3000:]}")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def screenshots():
    """Screenshots go to $RETCLIP_TEST_ARTIFACTS/web_demo, default output/test_artifacts/web_demo
    (ignored by git; pytest's own temporary folders are pruned after three runs)."""
    root = os.environ.get("RETCLIP_TEST_ARTIFACTS") or str(ROOT / "output" / "test_artifacts")
    folder = Path(root) / "web_demo"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nweb demo screenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def reference(tiny_example, tiny_retclip):
    """In-process predictions of the same tiny model, per γ (the page must show these)."""
    classes, things = split_kinds([c.strip() for c in VOCABULARY.split(",")])
    tiny_retclip.set_vocabulary(classes, seen=[False] * len(classes),
                                thing_classes=[c for c, t in zip(classes, things) if t])
    image = np.asarray(Image.open(Path(tiny_example["photos"]) / PHOTO).convert("RGB"))
    x = model_input(image, *SIZES)
    queries = predict_queries(tiny_retclip, x)
    return {"model": tiny_retclip, "x": x, "queries": queries}


def _analyse(browser, server, photo, vocabulary):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(server)
    page.wait_for_selector("#run", timeout=120_000)
    page.set_input_files("#photo input[type=file]", photo)
    page.wait_for_selector("#photo img", timeout=60_000)
    page.fill("#vocabulary textarea", vocabulary)
    page.click("#run")
    return page


def _legend_classes(page):
    return [c.strip() for c in page.locator("#legend .legend-class").all_inner_texts()]


def test_upload_run_shows_overlay_and_one_legend_row_per_segment(browser, server, tiny_example, reference, screenshots):
    page = _analyse(browser, server, str(Path(tiny_example["photos"]) / PHOTO), VOCABULARY)
    page.wait_for_selector("#legend .legend-row", timeout=180_000)
    expected = rerank(reference["model"], reference["queries"])["panoptic_seg"][1]
    assert page.locator("#overlay img").count() == 1
    assert page.locator("#legend .legend-row").count() == len(expected) > 0
    names = reference["model"].vocabulary.class_names
    assert _legend_classes(page) == [names[s["category_id"]] for s in expected]
    page.screenshot(path=str(screenshots / "after_run.png"), full_page=True)
    page.close()


def _gamma_that_relabels(model, queries, base):
    """The first γ on the slider's grid whose segments carry another set of classes than at
    ``base`` (else, one whose segment list differs at all)."""
    def labels(g):
        w = EnsembleWeights(base.alpha, base.beta, float(g))
        return [s["category_id"] for s in rerank(model, queries, w)["panoptic_seg"][1]]

    before = labels(base.gamma)
    grid = [float(g) for g in np.round(np.arange(0, 1.0001, 0.05), 2)]
    for g in grid:
        if set(labels(g)) != set(before):
            return g
    for g in grid:
        if labels(g) != before:
            return g
    raise AssertionError("no γ relabels a segment of the tiny example")


def test_gamma_slider_relabels_as_full_inference(browser, server, tiny_example, reference, screenshots):
    model, queries = reference["model"], reference["queries"]
    base = EnsembleWeights(model.alpha, model.beta, model.gamma)
    gamma = _gamma_that_relabels(model, queries, base)
    saved = model.gamma
    model.gamma = gamma
    try:
        with torch.no_grad():
            full = model([reference["x"]])[0]["panoptic_seg"][1]
    finally:
        model.gamma = saved
    expected = [model.vocabulary.class_names[s["category_id"]] for s in full]
    page = _analyse(browser, server, str(Path(tiny_example["photos"]) / PHOTO), VOCABULARY)
    page.wait_for_selector("#legend .legend-row", timeout=180_000)
    before = _legend_classes(page)
    assert before != expected
    box = page.locator("#gamma input[type=number]")
    box.fill(str(gamma))
    box.press("Enter")
    page.wait_for_function(
        "exp => JSON.stringify([...document.querySelectorAll('#legend .legend-class')].map(e => e.innerText.trim())) === exp",
        arg=json.dumps(expected, separators=(",", ":")), timeout=120_000,
    )
    assert _legend_classes(page) == expected
    page.screenshot(path=str(screenshots / "after_gamma.png"), full_page=True)
    page.close()


def test_click_on_segment_shows_labelled_neighbours(browser, server, tiny_example, reference, screenshots):
    model, queries = reference["model"], reference["queries"]
    result = rerank(model, queries)
    segments = SegmentExplainer(model).explain(queries, result)
    panoptic = result["panoptic_seg"][0].numpy()
    usable = [s for s in segments if s["neighbours"]]
    assert usable, "the tiny example must have a segment with neighbours"
    target = usable[0]
    x, y = label_positions(panoptic, [target["id"]], min_area_fraction=0.0)[target["id"]]
    page = _analyse(browser, server, str(Path(tiny_example["photos"]) / PHOTO), VOCABULARY)
    page.wait_for_selector("#legend .legend-row", timeout=180_000)
    img = page.locator("#overlay img")
    box = img.bounding_box()
    natural = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / natural[0], box["y"] + (y + 0.5) * box["height"] / natural[1])
    page.wait_for_selector("#neighbours img", timeout=120_000)
    assert page.locator("#neighbours img").count() >= 1
    text = page.inner_text("#neighbours")
    first = target["neighbours"][0]
    assert f"{first['database_class']} -> {first['mapped_class']}" in text
    assert "s_ret" in page.inner_text("#scores") and target["class"] in page.inner_text("#scores")
    page.screenshot(path=str(screenshots / "neighbours.png"), full_page=True)
    page.close()


def test_empty_vocabulary_is_reported_in_the_page(browser, server, tiny_example, screenshots):
    page = _analyse(browser, server, str(Path(tiny_example["photos"]) / PHOTO), "  ")
    page.wait_for_selector("#status .demo-error", timeout=120_000)
    assert "vocabulary is empty" in page.inner_text("#status")
    assert "Traceback" not in page.content()
    page.screenshot(path=str(screenshots / "empty_vocabulary.png"), full_page=True)
    page.close()
