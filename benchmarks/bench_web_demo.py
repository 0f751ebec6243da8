"""Cost of a web-demo slider move (ensemble + post-processing on kept network outputs) against
a full inference (the model's ``forward``) of the same image, at the tiny example's size.

    python benchmarks/bench_web_demo.py [--example /tmp/retclip_try_demo] [--repeats 10]

Uses (or builds) the tiny example of ``scripts/try_demo.sh``: tiny RetCLIP with its database of
the bundled photos. Prints per photo the median forward time, the median slider-move time and
their ratio (the target is under 5%), for scikit-image's photos as they come (up to 512x600)
and for the 256-pixel copies the tiny example uploads.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import retclip.modeling  # noqa: E402,F401  (compat steps, then registration, before detectron2)
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from retclip.checkpoint import RetCLIPCheckpointer  # noqa: E402
from retclip.config_file import load_config  # noqa: E402
from retclip.reranking import EnsembleWeights, model_input, predict_queries, rerank  # noqa: E402
from retclip.web_demo.tiny_example import (  # noqa: E402
    EXAMPLE_PHOTOS, TINY_MAX_SIZE, TINY_MIN_SIZE, TINY_MODEL_CONFIG, example_photo, model_overrides,
    prepare_tiny_example,
)


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", default="/tmp/retclip_try_demo")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    paths = prepare_tiny_example(args.example)
    cfg = load_config(
        str(TINY_MODEL_CONFIG),
        model_overrides(paths["clip"]) + ["MODEL.RETCLIP.DATABASE", paths["database"]],
    )
    model = build_model(cfg).eval()
    RetCLIPCheckpointer(model).load(paths["weights"])
    classes = ["cat", "cup", "table", "person", "flag", "wall"]
    model.set_vocabulary(classes, seen=[False] * len(classes), thing_classes=classes[:-1])
    print(f"torch threads: {torch.get_num_threads()}")
    from retclip.utils.image_io import read_image

    for source in ("original", "example"):
        ratios = []
        for name in EXAMPLE_PHOTOS:
            # original: scikit-image's photo as it comes; example: the 256-pixel copy that
            # scripts/try_demo.sh and the browser tests upload
            photo = example_photo(name) if source == "original" else read_image(f"{paths['photos']}/{name}.png")
            x = model_input(photo, TINY_MIN_SIZE, TINY_MAX_SIZE)
            queries = predict_queries(model, x)
            with torch.no_grad():
                forward = _median_seconds(lambda: model([x]), args.repeats)
            grid = iter([EnsembleWeights(0.4, 0.7, g / 20) for g in range(21)] * (args.repeats + 1))
            move = _median_seconds(lambda: rerank(model, queries, next(grid)), args.repeats)
            ratios.append(move / forward)
            print(f"{source:8s} {name} {tuple(x['image'].shape[1:])} -> {x['height']}x{x['width']}: "
                  f"forward {forward * 1000:.1f} ms, slider move {move * 1000:.1f} ms, move/forward {move / forward:.3f}")
        print(f"{source} photos: slider move / forward: median {statistics.median(ratios):.3f}, "
              f"max {max(ratios):.3f} (target < 0.05)")

if __name__ == "__main__":
    main()
