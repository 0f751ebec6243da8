"""Time and peak memory of each FC-CLIP inference stage at real size (random weights).

Stages: backbone, pixel decoder, transformer decoder, text encoding (first call = cache miss,
then cached), out-of-vocabulary branch (mask pooling + CLIP head + classification), ensemble,
post-processing (semantic + panoptic + instance). Each stage's share is of the per-image total
with cached text; the first text call is a one-time cost and is shown against the same total.

Peak memory: on CUDA, ``max_memory_allocated`` above the stage's starting allocation; on CPU,
the process RSS sampled every 2 ms above its value at the stage start (an estimate).

    python benchmarks/bench_inference.py --device cpu --num-classes 30
    python benchmarks/bench_inference.py --device cuda            # all 150 ADE classes
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import retclip.modeling  # noqa: E402  (compat steps, then registration, before detectron2)
from retclip.modeling.mask_pooling import get_classification_logits  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "fcclip", "fcclip_convnext_large_eval_ade20k.yaml")


class PeakRSS:
    """Samples this process's resident set size in a thread (CPU peak-memory estimate)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def measure(device: torch.device, fn: Callable[[], object]) -> Tuple[object, float, float]:
    """Run fn once; return (result, seconds, peak extra MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        return out, seconds, (torch.cuda.max_memory_allocated() - base) / 2**20
    with PeakRSS() as mem:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    return out, seconds, (mem.peak - mem.start) / 2**20


def run_image(
    model,
    height: int,
    width: int,
    class_names: List[str],
    device: torch.device,
    cold_text: bool = True,
) -> Dict[str, Tuple[float, float]]:
    g = torch.Generator().manual_seed(height)
    inp = {
        "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g),
        "height": height,
        "width": width,
    }
    stats: Dict[str, Tuple[float, float]] = {}

    def stage(name: str, fn: Callable[[], object]) -> object:
        out, seconds, mib = measure(device, fn)
        stats[name] = (seconds, mib)
        return out

    images = model._preprocess([inp])
    feats = stage("backbone", lambda: model.backbone(images.tensor))
    if cold_text:
        model.text_cache.clear()
    stage("text encoding (first call)", lambda: model.get_text_classifier(class_names))
    text, counts = stage("text encoding (cached)", lambda: model.get_text_classifier(class_names))
    head = model.sem_seg_head
    mask_features, _, multi_scale = stage(
        "pixel decoder", lambda: head.pixel_decoder.forward_features(feats)
    )
    outputs = stage(
        "transformer decoder",
        lambda: head.predictor(
            multi_scale, mask_features, None, text_classifier=text, num_templates=counts
        ),
    )

    def out_of_vocab():
        emb, valid = model._clip_embeddings(feats["clip_vis_dense"], outputs["pred_masks"])
        logits = get_classification_logits(emb, text, model.backbone.clip_model.logit_scale, counts)
        return logits, valid

    clip_logits, valid = stage("out-of-vocabulary pooling", out_of_vocab)
    scores = {"pred_logits": outputs["pred_logits"], "clip_logits": clip_logits, "valid": valid}
    mask_cls = stage("ensemble", lambda: model._combine_scores(scores))
    stage(
        "post-processing",
        lambda: model._postprocess(mask_cls, outputs["pred_masks"], [inp], images),
    )
    return stats


def report(size: Tuple[int, int], stats: Dict[str, Tuple[float, float]]) -> None:
    total = sum(s for name, (s, _) in stats.items() if name != "text encoding (first call)")
    print(f"\nimage {size[0]}x{size[1]} (HxW): total {total:.2f} s per image with cached text")
    print(f"{'stage':<30}{'time (s)':>10}{'share':>9}{'peak extra (MiB)':>19}")
    for name, (seconds, mib) in stats.items():
        note = " (one-time)" if name == "text encoding (first call)" else ""
        print(f"{name:<30}{seconds:>10.3f}{100 * seconds / total:>8.1f}%{mib:>19.0f}{note}")


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-classes", type=int, default=150, help="first N ADE20K-150 classes")
    parser.add_argument(
        "--sizes", default="640x853,1024x1365", help="HxW list; short sides 640 and 1024"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch default)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    cfg = get_cfg()
    retclip.add_retclip_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS = ""
    cfg.MODEL.DEVICE = str(device)
    t = time.perf_counter()
    model = build_model(cfg).eval()
    print(
        f"built {cfg.MODEL.FC_CLIP.CLIP_MODEL_NAME} FC-CLIP (random weights) in {time.perf_counter() - t:.1f} s "
        f"on {device} ({torch.get_num_threads()} CPU threads)"
    )
    names = list(model.test_metadata.stuff_classes)[: args.num_classes]
    thing_ids = model.vocabulary.thing_ids
    model.set_vocabulary(names, thing_classes=[n for i, n in enumerate(names) if i in thing_ids])
    synonyms = sum(len(n.replace(", ", ",").split(",")) for n in names)
    print(f"vocabulary: {len(names)} classes, {synonyms} synonyms, {14 * synonyms} prompts")

    with torch.no_grad():
        model.get_text_classifier(names)
        run_image(model, 256, 320, names, device, cold_text=False)  # warm-up (allocator, kernels)
        for size in args.sizes.split(","):
            h, w = (int(v) for v in size.split("x"))
            report((h, w), run_image(model, h, w, names, device))


if __name__ == "__main__":
    main(sys.argv[1:])
