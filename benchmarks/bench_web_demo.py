"""Cost of a web-demo slider move (ensemble + post-processing on kept network outputs) against
a full inference (the model's ``forward``) of the same image, at the tiny example's size.

    python benchmarks/bench_web_demo.py [--example /tmp/retclip_try_demo] [--repeats 10]

Uses (or builds) the tiny example of ``scripts/try_demo.sh``: tiny RetCLIP with its database of
the bundled photos. Prints per photo the median forward time, the median slider-move time and
their ratio (the target is under 5%).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import retclip  # noqa: E402,F401  (compat steps before detectron2)
import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from retclip.checkpoint import RetCLIPCheckpointer  # noqa: E402
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
    cfg = get_cfg()
    retclip.add_retclip_config(cfg)
    cfg.merge_from_file(str(TINY_MODEL_CONFIG))
    cfg.merge_from_list(model_overrides(paths["clip"]) + ["MODEL.RETCLIP.DATABASE", paths["database"]])
    model = build_model(cfg).eval()
    RetCLIPCheckpointer(model).load(paths["weights"])
    classes = ["cat", "cup", "table", "person", "flag", "wall"]
    model.set_vocabulary(classes, seen=[False] * len(classes), thing_classes=classes[:-1])
    print(f"torch threads: {torch.get_num_threads()}")
    ratios = []
    for name in EXAMPLE_PHOTOS:
        x = model_input(example_photo(name), TINY_MIN_SIZE, TINY_MAX_SIZE)
        queries = predict_queries(model, x)
        with torch.no_grad():
            forward = _median_seconds(lambda: model([x]), args.repeats)
        grid = iter([EnsembleWeights(0.4, 0.7, g / 20) for g in range(21)] * (args.repeats + 1))
        move = _median_seconds(lambda: rerank(model, queries, next(grid)), args.repeats)
        ratios.append(move / forward)
        print(f"{name} {tuple(x['image'].shape[1:])} -> {x['height']}x{x['width']}: forward {forward * 1000:.1f} ms, "
              f"slider move {move * 1000:.1f} ms, move/forward {move / forward:.3f}")
    print(f"slider move / forward: median {statistics.median(ratios):.3f}, max {max(ratios):.3f} (target < 0.05)")


if __name__ == "__main__":
    main()
