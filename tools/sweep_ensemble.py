#!/usr/bin/env python
"""Sweep the ensemble weights (alpha, beta, gamma) on a score cache, without running the network.

First write the cache with one evaluation (any RetCLIP config; the cache goes to
TEST.SCORE_CACHE_DIR/<dataset>):

    python tools/train_net.py --eval-only --config-file configs/retclip/retclip_convnext_large_ade20k.yaml \\
        MODEL.WEIGHTS fcclip_cocopan.pth TEST.SCORE_CACHE_DIR cache/

then sweep (one row per point in OUTPUT/sweep.jsonl and sweep.csv; re-running skips finished points):

    python tools/sweep_ensemble.py --cache cache/openvocab_ade20k_panoptic_val --output-dir sweep/ \\
        --alpha 0.3,0.4,0.5 --beta 0.7,0.8 --gamma 0.0,0.3 --workers 4
    python tools/sweep_ensemble.py --cache ... --output-dir ... --grid configs/sweep/table4.yaml

``--metrics-backend reference`` uses the evaluators of the full run (panopticapi, pycocotools) and
needs ``--config-file`` (the evaluation config); the default ``hotcoco`` gives the same numbers
(see tests/sweep/test_metrics_equivalence.py), faster.
"""

import argparse
import json
import logging
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retclip.utils.cli import UserError, int_at_least, run_tool  # noqa: E402  (light --help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--cache", required=True, help="score cache directory (TEST.SCORE_CACHE_DIR/<dataset>)"
    )
    p.add_argument("--output-dir", required=True, help="where sweep.jsonl / sweep.csv are written")
    p.add_argument("--alpha", help="comma-separated alpha values (seen classes)")
    p.add_argument("--beta", help="comma-separated beta values (unseen classes)")
    p.add_argument("--gamma", help="comma-separated gamma values (retrieval weight)")
    p.add_argument("--grid", help="YAML/JSON grid file (alpha/beta/gamma lists and/or points)")
    # Choices are checked after parsing (listing the valid ones), so --help imports no torch.
    p.add_argument("--mode", help="ensemble form (default: the mode of the model that wrote the cache)")
    p.add_argument(
        "--metrics-backend", default="hotcoco", help="hotcoco (fast) or reference (panopticapi, pycocotools)"
    )
    p.add_argument(
        "--workers", type=int_at_least(1), default=1, help="grid points evaluated in parallel processes"
    )
    p.add_argument(
        "--points-per-pass",
        type=int_at_least(1),
        default=4,
        help="grid points per pass over the cache (each cached image is read once per pass)",
    )
    p.add_argument(
        "--threads",
        type=int_at_least(1),
        default=1,
        help="torch threads per process (1 is fastest for small masks and with --workers)",
    )
    p.add_argument(
        "--config-file", help="evaluation config (needed by --metrics-backend reference)"
    )
    p.add_argument(
        "--expect-fingerprint",
        help="JSON file with model.ensemble_fingerprint(); a cache that differs is refused",
    )
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config KEY VALUE overrides for --config-file"
    )
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    from retclip.sweep.grid import make_grid  # retclip.sweep applies compat before detectron2
    from retclip.sweep.metrics import METRICS_BACKENDS
    from retclip.ensemble import ENSEMBLE_MODES
    from retclip.sweep.cache import StaleCacheError
    from retclip.sweep.runner import SweepRunner
    from detectron2.utils.logger import setup_logger

    for flag, value, valid in (("--mode", args.mode, list(ENSEMBLE_MODES.names())),
                               ("--metrics-backend", args.metrics_backend, list(METRICS_BACKENDS))):
        if value is not None and value not in valid:
            parser.error(f"{flag} {value!r}: choose one of {', '.join(valid)}")
    setup_logger(name="retclip")
    logging.getLogger("retclip").setLevel(logging.INFO)
    try:
        points = make_grid(args.alpha, args.beta, args.gamma, args.grid)
    except ValueError as e:  # a value outside [0, 1], a malformed list or grid file
        parser.error(str(e))
    torch.set_num_threads(max(1, args.threads))
    from retclip.utils.tool_config import load_tool_config

    cfg = load_tool_config(args.config_file, args.opts or []) if args.config_file else None
    if args.opts and cfg is None:
        raise UserError(f"config overrides {' '.join(args.opts)} need --config-file")
    expected = None
    if args.expect_fingerprint:
        with open(args.expect_fingerprint) as f:
            try:
                expected = json.load(f)
            except json.JSONDecodeError as e:
                raise UserError(f"--expect-fingerprint {args.expect_fingerprint} is not JSON: {e}") from e
    if not os.path.isdir(os.path.expanduser(args.cache)):
        raise UserError(f"--cache {args.cache}: no such folder")
    try:  # checks the mode, backend and cache (manifest, fingerprint, shards) before any work
        runner = SweepRunner(
            args.cache,
            args.output_dir,
            mode=args.mode,
            backend=args.metrics_backend,
            cfg=cfg,
            expected_fingerprint=expected,
            workers=args.workers,
            points_per_pass=args.points_per_pass,
        )
    except ValueError as e:
        raise UserError(str(e)) from e
    try:
        rows = runner.run(points)
    except StaleCacheError as e:  # results in --output-dir from another cache or backend
        raise UserError(str(e)) from e
    keys = {p.key(runner.mode) for p in points}
    rows = [r for r in rows if (r["mode"], r["alpha"], r["beta"], r["gamma"]) in keys]
    print(
        f"{'alpha':>6}{'beta':>6}{'gamma':>6}{'PQ':>8}{'mAP':>8}{'mIoU':>8}{'PQ_seen':>9}{'PQ_unseen':>10}"
    )
    for r in sorted(rows, key=lambda r: (r["alpha"], r["beta"], r["gamma"])):
        print(
            f"{r['alpha']:>6.2f}{r['beta']:>6.2f}{r['gamma']:>6.2f}{r['PQ']:>8.2f}{r['mAP']:>8.2f}"
            f"{r['mIoU']:>8.2f}{r['PQ_seen']:>9.2f}{r['PQ_unseen']:>10.2f}"
        )
    finite = [r for r in rows if not math.isnan(r["PQ"])]
    if finite:
        best = max(finite, key=lambda r: r["PQ"])
        print(
            f"best PQ {best['PQ']:.2f} at alpha {best['alpha']}, beta {best['beta']}, gamma {best['gamma']}"
        )
    if runner.missing_image_ids:
        print(
            f"note: {len(runner.missing_image_ids)} images of the dataset are missing from the cache"
        )
    print(f"results: {runner.jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
