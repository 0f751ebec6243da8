"""Time of one ensemble-sweep point (score cache -> recombine -> post-process -> metrics) against one
full re-evaluation (network forward -> post-process -> metrics), on the same images, in one run.

Random weights; synthetic COCO-panoptic images (8 classes) at the chosen size. ``--size real``
builds the ConvNeXt-L RetCLIP of Table 1 (250 queries; no database, so retrieval costs nothing in
the full evaluation: the ratio is a lower bound for RetCLIP with a database).

    python benchmarks/bench_sweep.py --size tiny --images 8
    python benchmarks/bench_sweep.py --size real --images 1 --height 800 --width 1067

Prints: the full evaluation (reference metrics, as ``--eval-only`` computes them), a sweep point
alone and a point's share of a pass of 4 points (how the sweep tool runs a grid) with the hotcoco
and with the reference metrics, the ratios full / sweep-point, how much of a point is the
per-image mask upsample and sigmoid that a pass shares between its points, the one-time cache
write and the cache size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import retclip.modeling  # noqa: E402  (compat steps, then registration, before detectron2)
import torch  # noqa: E402
from retclip.config_file import load_config  # noqa: E402
from detectron2.data import build_detection_test_loader  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from retclip.evaluation import build_evaluator  # noqa: E402
from retclip.sweep.grid import GridPoint  # noqa: E402
from retclip.sweep.hooks import add_score_cache, score_cache_dir  # noqa: E402
from retclip.sweep.recombine import prepare_masks  # noqa: E402
from retclip.sweep.runner import SweepRunner  # noqa: E402
from retclip.testing.synthetic import make_and_register_synthetic  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "tiny": os.path.join(REPO, "configs", "tests", "tiny_retclip_convnext.yaml"),
    "real": os.path.join(REPO, "configs", "retclip", "retclip_convnext_large_ade20k.yaml"),
}


def build_cfg(args, work, train, test):
    cfg = load_config(CONFIGS[args.size], freeze=False)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS = ""
    cfg.MODEL.RETCLIP.DATABASE = ""
    cfg.MODEL.RETCLIP.FALLBACK_DATABASE = ""
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (test,)
    cfg.INPUT.MIN_SIZE_TEST = min(args.height, args.width)
    cfg.INPUT.MAX_SIZE_TEST = max(args.height, args.width)
    cfg.OUTPUT_DIR = work
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.SCORE_CACHE_DIR = os.path.join(work, "cache")
    for key in ("SEMANTIC_ON", "PANOPTIC_ON", "INSTANCE_ON"):
        setattr(cfg.MODEL.MASK_FORMER.TEST, key, True)
    return cfg


#: process CPU seconds of the last ``timed`` call (on a shared machine wall time is noisy)
CPU = {}


def timed(fn, name=None):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if name is not None:
        CPU[name] = time.process_time() - cpu
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = p.parse_args()
    setup_logger(name="retclip", output=None).setLevel("WARNING")
    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="bench_sweep_")
    try:
        train, test = make_and_register_synthetic(
            os.path.join(work, "data"),
            prefix="bench_sweep",
            num_train=1,
            num_test=args.images,
            height=args.height,
            width=args.width,
        )
        cfg = build_cfg(args, work, train, test)
        # Seeded: with random weights the masks, and so how many queries compete for pixels in
        # the panoptic step (all of them when the masks are diffuse), depend on the draw.
        torch.manual_seed(args.seed)
        t_build, model = timed(lambda: build_model(cfg).eval())
        loader = build_detection_test_loader(cfg, test)
        with torch.no_grad():
            model(next(iter(loader)))  # warm-up: text embeddings are cached from here on
            t_cache, _ = timed(
                lambda: inference_on_dataset(
                    model,
                    loader,
                    add_score_cache(cfg, model, build_evaluator(cfg, test, work + "/e0"), test),
                )
            )
            model.return_ensemble_inputs = False
            t_full, _ = timed(
                lambda: inference_on_dataset(
                    model, loader, build_evaluator(cfg, test, work + "/e1")
                ),
                "full",
            )
        cache_dir = score_cache_dir(cfg, test)
        size_mb = (
            sum(
                os.path.getsize(os.path.join(cache_dir, "shards", f))
                for f in os.listdir(os.path.join(cache_dir, "shards"))
            )
            / 2**20
        )
        point = GridPoint(0.4, 0.7, 0.3)
        # A sweep evaluates points in passes (SweepRunner points_per_pass, 4 by default): each
        # image is read and its masks resized once per pass, so a point's share of a pass is
        # what a grid costs per point.
        pass_points = [GridPoint(a, b, 0.3) for a, b in ((0.3, 0.6), (0.4, 0.7), (0.5, 0.8), (0.6, 0.9))]
        sweep, per_point = {}, {}
        for backend in ("hotcoco", "reference"):
            runner = SweepRunner(
                cache_dir,
                os.path.join(work, "sweep_" + backend),
                mode="arithmetic",
                backend=backend,
                cfg=cfg,
            )
            state = runner._open()
            runner._evaluate_point(state, GridPoint(0.5, 0.5, 0.5))  # warm: ground truth read once
            sweep[backend], _ = timed(lambda: runner._evaluate_point(state, point), "point " + backend)
            t_pass, _ = timed(lambda: runner._evaluate_points(state, pass_points), "pass " + backend)
            per_point[backend] = t_pass / len(pass_points)
            CPU["pass " + backend] /= len(pass_points)
            if backend == "hotcoco":
                # the share of a point that does not depend on the weights: once per image and pass
                t_masks, _ = timed(
                    lambda: [
                        prepare_masks(image, state["settings"], state["buffers"])
                        for image in state["cache"]
                    ],
                    "masks",
                )
        q = cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
        print(
            f"RetCLIP {args.size} (Q={q}, K=8 synthetic classes, random weights), {args.images} images of "
            f"{args.height}x{args.width}, CPU, {args.threads} thread(s), weights seed {args.seed}; "
            f"model build {t_build:.1f} s"
        )
        cpu_full = CPU["full"]
        print(
            f"full re-evaluation (forward + reference metrics): {t_full:8.3f} s wall "
            f"{cpu_full:8.3f} s CPU"
        )
        for label, key, wall in (
            ("sweep point, hotcoco metrics:", "point hotcoco", sweep["hotcoco"]),
            ("sweep point, reference metrics:", "point reference", sweep["reference"]),
            (f"per point in a pass of {len(pass_points)}, hotcoco:", "pass hotcoco", per_point["hotcoco"]),
            (f"per point in a pass of {len(pass_points)}, reference:", "pass reference", per_point["reference"]),
        ):
            print(
                f"{label:50s}{wall:8.3f} s wall {CPU[key]:8.3f} s CPU   ratio "
                f"{t_full / wall:6.1f}x wall {cpu_full / CPU[key]:6.1f}x CPU"
            )
        print(
            f"{'of a point: per-image mask upsample + sigmoid:':50s}{t_masks:8.3f} s wall "
            f"{CPU['masks']:8.3f} s CPU   (once per image and pass of points)"
        )
        print(
            f"one-time cache write (evaluation + writer):        {t_cache:8.3f} s; cache {size_mb:.1f} MB "
            f"({size_mb / args.images:.1f} MB/image)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
