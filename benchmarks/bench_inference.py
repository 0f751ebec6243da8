"""Per-stage CPU profile of one real-size RetCLIP inference (random weights), first call and warm.

The ConvNeXt-L RetCLIP of Table 1 (configs/retclip/retclip_convnext_large_ade20k.yaml, random
weights, no download) with a random feature database of ``--db-size`` x 768 rows over the 150 ADE
classes, on one ADE-sized image (640 x 853 by default), ADE-150 vocabulary (5,642 prompts).

The model's own ``forward`` runs unchanged; each stage is timed by wrapping the method that
implements it on this instance (backbone, text embeddings, pixel decoder, transformer decoder,
CLIP pooling = mask pooling + CLIP head, retrieval = index search + scoring, ensemble,
post-processing); "other" is the rest of the call (preprocessing, classification logits, glue).

Text-cache state: the on-disk text-embedding cache ($RETCLIP_CACHE) is pointed at an empty temp
dir, so the first call encodes the vocabulary (truncated text path); warm calls hit the in-memory
cache; a last line times a disk-cache hit (what a second process pays).

    python benchmarks/bench_inference.py                     # CPU; 150 classes: ~400 CPU-s of text
    python benchmarks/bench_inference.py --num-classes 30 --db-size 50000 --warm-calls 1

Closing note (2 cores shared with other jobs, 30 classes, 50k rows): warm, the ConvNeXt-L
backbone is ~45% of the call, pixel decoder ~23%, transformer decoder ~18%, post-processing
~12%, retrieval + ensemble ~1.5%. The backbone is a 200M-parameter fp32 convnet over a 640x853
image, pure compute; what would shrink it is lower precision (bf16/int8 on CPUs that support
it), channels-last layout / a compiled graph, or a GPU - not retrieval-side work.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import retclip.modeling  # noqa: E402,I001,F401  (compat steps, registration, before detectron2)
from detectron2.modeling import build_model  # noqa: E402
from retclip.data.categories import ade20k_150_categories  # noqa: E402
from retclip.retrieval import EncoderFingerprint, FeatureDatabase  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "retclip", "retclip_convnext_large_ade20k.yaml")


class StageTimer:
    """Accumulates wall seconds per stage name; :meth:`wrap` times any callable as a stage."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: Dict[str, float] = OrderedDict()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        return timed


class _TimedScorer:
    """Stands in for the retrieval head (a plain object: ``__call__`` cannot be patched)."""

    def __init__(self, scorer: Any, timer: StageTimer) -> None:
        self._scorer, self._call = scorer, timer.wrap("retrieval", scorer.__call__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)


def instrument(model, timer: StageTimer) -> None:
    """Time the methods that implement each stage, on this model instance only."""
    head = model.sem_seg_head
    model.backbone.forward = timer.wrap("backbone", model.backbone.forward)
    model.get_text_classifier = timer.wrap("text embeddings", model.get_text_classifier)
    head.pixel_decoder.forward_features = timer.wrap(
        "pixel decoder", head.pixel_decoder.forward_features
    )
    head.predictor.forward = timer.wrap("transformer decoder", head.predictor.forward)
    model._clip_embeddings = timer.wrap("CLIP pooling", model._clip_embeddings)
    if model.retrieval_head is not None:
        model.retrieval_head = _TimedScorer(model.retrieval_head, timer)
    model._combine_scores = timer.wrap("ensemble", model._combine_scores)
    model._postprocess = timer.wrap("post-processing", model._postprocess)


def random_database(path: str, names: List[str], rows: int, model_name: str, dim: int) -> None:
    fingerprint = EncoderFingerprint.from_open_clip(model_name, "", dim)
    db = FeatureDatabase.create(path, fingerprint, names, dtype="float16")
    rng = np.random.default_rng(0)
    for start in range(0, rows, 50_000):
        n = min(50_000, rows - start)
        feats = rng.standard_normal((n, dim), dtype=np.float32)
        db.append(feats, rng.integers(0, len(names), n), [str(i) for i in range(start, start + n)])


def profile_call(model, timer: StageTimer, inp: Dict[str, Any]) -> Dict[str, float]:
    timer.seconds.clear()
    start = time.perf_counter()
    with torch.no_grad():
        model([inp])
    timer._sync()
    stats = OrderedDict(timer.seconds)
    stats["other"] = time.perf_counter() - start - sum(stats.values())
    stats["total"] = time.perf_counter() - start
    return stats


def report(first: Dict[str, float], warm: Dict[str, float]) -> None:
    print(f"{'stage':<22}{'first (s)':>11}{'share':>8}{'warm (s)':>11}{'share':>8}")
    for name in first:
        f, w = first[name], warm.get(name, 0.0)
        print(
            f"{name:<22}{f:>11.2f}{100 * f / first['total']:>7.1f}%"
            f"{w:>11.2f}{100 * w / warm['total']:>7.1f}%"
        )
    big = [n for n in warm if n not in ("total", "other") and warm[n] > warm["total"] / 3]
    print(f"stages over a third of the warm time: {', '.join(big) or 'none'}")


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default=CONFIG, help="a RetCLIP config (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="640x853", help="HxW of the image (ADE-sized)")
    parser.add_argument("--num-classes", type=int, default=150, help="first N ADE-150 classes")
    parser.add_argument("--db-size", type=int, default=200_000, help="random database rows")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--warm-calls", type=int, default=2, help="warm calls (best one shown)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = tempfile.mkdtemp(prefix="retclip-bench-inference-")
    os.environ["RETCLIP_CACHE"] = os.path.join(tmp, "cache")  # empty: the first call encodes
    try:
        run(args, device, tmp)
    finally:
        shutil.rmtree(tmp)


def run(args: argparse.Namespace, device: torch.device, tmp: str) -> None:
    from retclip.config import load_config

    cfg = load_config(args.config_file, freeze=False)
    cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS = ""
    cfg.MODEL.RETCLIP.FALLBACK_DATABASE = ""
    cfg.MODEL.DEVICE = str(device)
    t = time.perf_counter()
    categories = ade20k_150_categories()[: args.num_classes]
    names = [c["name"] for c in categories]
    clip_name, dim = cfg.MODEL.FC_CLIP.CLIP_MODEL_NAME, cfg.MODEL.FC_CLIP.EMBED_DIM
    random_database(os.path.join(tmp, "db"), names, args.db_size, clip_name, dim)
    cfg.MODEL.RETCLIP.DATABASE = os.path.join(tmp, "db")
    model = build_model(cfg).eval()
    things = [c["name"] for c in categories if c["isthing"]]
    try:  # seen classes by FC-CLIP's rule against the training classes
        model.set_vocabulary(names, thing_classes=things)
    except KeyError:  # training dataset not registered (tiny smoke configs): all unseen
        model.set_vocabulary(names, seen=[False] * len(names), thing_classes=things)
    print(
        f"built {clip_name} RetCLIP (random weights) + a random "
        f"{args.db_size} x {dim} database ({cfg.MODEL.RETCLIP.INDEX.TYPE} index) in "
        f"{time.perf_counter() - t:.1f} s on {device}, {torch.get_num_threads()} CPU threads; "
        f"vocabulary {len(names)} classes; text path truncated: "
        f"{model.backbone.text_encoder.truncates}"
    )
    timer = StageTimer(device)
    instrument(model, timer)
    h, w = (int(v) for v in args.size.split("x"))
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    inp = {"image": image, "height": h, "width": w}
    first = profile_call(model, timer, inp)  # text: empty disk and memory caches
    warm = min(
        (profile_call(model, timer, inp) for _ in range(max(1, args.warm_calls))),
        key=lambda stats: stats["total"],
    )  # text: in-memory cache
    print(
        f"\nimage {h}x{w} (HxW); first call: empty text caches (vocabulary encoded); warm: best "
        f"of {max(1, args.warm_calls)} later call(s), text from the in-memory cache"
    )
    report(first, warm)
    model.text_cache.clear()
    timer.seconds.clear()
    model.get_text_classifier(names)
    print(
        f"text embeddings from the on-disk cache (memory cache cleared, as in a second process): "
        f"{timer.seconds['text embeddings']:.3f} s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
