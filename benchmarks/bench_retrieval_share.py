#!/usr/bin/env python
"""Share of retrieval + ensemble in one full-image RetCLIP inference (target: at most 3%).

Builds the real-size ConvNeXt-L RetCLIP (random weights, no download), a random feature
database of --db-size x 768 rows, and times one image end to end, then the retrieval head
(index search + scoring) and the ensemble alone on the same queries. Text embeddings are
computed once before timing (they are cached per vocabulary), with --num-classes synthetic
one-word classes to keep the CPU text tower cheap.

    .venv/bin/python benchmarks/bench_retrieval_share.py --db-size 200000 --index exact hnsw
"""
import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import retclip.modeling  # noqa: E402  (compat steps, then registration, before detectron2)
from retclip.config_file import load_config  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from retclip.retrieval import EncoderFingerprint, FeatureDatabase  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(db: str, index: str, device: str):
    cfg = load_config(os.path.join(ROOT, "configs/retclip/retclip_convnext_large_ade20k.yaml"), freeze=False)
    cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS = ""
    cfg.MODEL.RETCLIP.DATABASE = db
    cfg.MODEL.RETCLIP.FALLBACK_DATABASE = ""
    cfg.MODEL.RETCLIP.INDEX.TYPE = index
    cfg.MODEL.DEVICE = device
    cfg.DATASETS.TEST = ()
    return cfg


def _time(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db-size", type=int, default=200_000)
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--short-side", type=int, default=640)
    parser.add_argument("--index", nargs="+", default=["exact", "hnsw"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = [f"class{i}" for i in range(args.num_classes)]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        db = FeatureDatabase.create(os.path.join(tmp, "db"), EncoderFingerprint.from_open_clip(
            "convnext_large_d_320", "", 768), classes, dtype="float16")
        for start in range(0, args.db_size, 50_000):
            n = min(50_000, args.db_size - start)
            db.append(rng.standard_normal((n, 768), dtype=np.float32), rng.integers(0, len(classes), n),
                      [str(i) for i in range(start, start + n)])
        h, w = args.short_side, int(args.short_side * 4 / 3)
        image = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
        print(f"device {args.device}, threads {torch.get_num_threads()}, image {h}x{w}, "
              f"database {args.db_size} x 768, {len(classes)} classes")
        print(f"{'index':8s} {'model build s':>13s} {'full image s':>12s} {'retrieval s':>11s} "
              f"{'ensemble s':>10s} {'share %':>8s}")
        for index in args.index:
            (model, build_s) = _time(lambda: build_model(_cfg(os.path.join(tmp, "db"), index, args.device)).eval(),
                                     "cpu")
            model.set_vocabulary(classes, seen=[i % 2 == 0 for i in range(len(classes))])
            x = [{"image": image, "height": h, "width": w}]
            with torch.no_grad():
                model(x)  # warm-up: text embeddings cached, index loaded
                _, full_s = _time(lambda: model(x), args.device)
                outputs = model._predict_queries(model._preprocess(x))
                flat = outputs["clip_embeddings"].reshape(-1, outputs["clip_embeddings"].shape[-1])
                _, ret_s = _time(lambda: model.retrieval_head(flat, model.vocabulary.class_names,
                                                              usable=outputs["valid"].reshape(-1)), args.device)
                _, ens_s = _time(lambda: model._combine_scores(outputs), args.device)
            share = 100.0 * (ret_s + ens_s) / full_s
            print(f"{index:8s} {build_s:13.1f} {full_s:12.2f} {ret_s:11.3f} {ens_s:10.4f} {share:8.2f}")
            del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
