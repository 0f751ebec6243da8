"""Text encoding of FC-CLIP's ADE-150 vocabulary: truncated vs 77-token path, and the disk cache.

At real size (open_clip ``convnext_large_d_320``, FC-CLIP's CLIP, random weights), in one run:

1. the 5,642 prompts (403 synonyms x 14 templates) with the truncated path (each batch of 128
   runs only up to its longest prompt), written to a fresh on-disk cache;
2. a seeded random subset of ``--subset`` prompts with both paths (the full 77-token path on all
   5,642 takes ~12 min on 2 shared cores, so it is measured on the subset and extrapolated
   linearly: the full path's cost per prompt does not depend on the prompt);
3. a second process with the same model and vocabulary, counting its text-transformer calls.

    python benchmarks/bench_text_encoding.py                # ~5 min on 2 cores
    python benchmarks/bench_text_encoding.py --subset 200 --model ViT-B-16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from retclip.data.categories import ade20k_150_categories  # noqa: E402
from retclip.modeling.backbone.clip import create_clip_model  # noqa: E402
from retclip.modeling.text_classifier import build_prompts, encode_vocabulary  # noqa: E402
from retclip.modeling.text_encoder import CLIPTextEncoder  # noqa: E402


def build_encoder(model_name: str) -> CLIPTextEncoder:
    torch.manual_seed(0)  # same random weights in both processes
    model = create_clip_model(model_name, "").eval()
    return CLIPTextEncoder(model, open_clip.get_tokenizer(model_name), model_name)


def ade_names() -> List[str]:
    return [c["name"] for c in ade20k_150_categories()]


def full_path(encoder: CLIPTextEncoder, prompts: List[str]) -> torch.Tensor:
    """open_clip's encode_text on all 77 tokens, in the encoder's batch size."""
    tokens = encoder.tokenize(prompts)
    with torch.no_grad():
        return torch.cat(
            [
                encoder.encode_tokens(tokens[i : i + encoder.batch_size])
                for i in range(0, len(prompts), encoder.batch_size)
            ]
        )


#: Process CPU seconds (all threads) of the last :func:`timed` call: on cores shared with other
#: jobs, CPU time is the steadier measure of work; wall time is printed too.
LAST_CPU = [0.0]


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    LAST_CPU[0] = time.process_time() - c
    return out, time.perf_counter() - t


def child(model_name: str) -> None:
    """Second process: build the same model, encode the vocabulary, report text-tower calls."""
    encoder = build_encoder(model_name)
    calls = []
    encoder.clip_model.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    (emb, _), seconds = timed(lambda: encode_vocabulary(encoder, ade_names()))
    print(json.dumps({"calls": len(calls), "seconds": seconds, "rows": emb.shape[0]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="convnext_large_d_320")
    parser.add_argument("--subset", type=int, default=500, help="prompts timed on both paths")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args.model)

    os.environ["RETCLIP_CACHE"] = tempfile.mkdtemp(prefix="retclip-bench-text-")
    try:
        run(args)
    finally:
        shutil.rmtree(os.environ["RETCLIP_CACHE"])


def run(args: argparse.Namespace) -> None:
    encoder, build_s = timed(lambda: build_encoder(args.model))
    names = ade_names()
    prompts, _ = build_prompts(names)
    lengths = encoder.token_lengths(encoder.tokenize(prompts)).float()
    print(
        f"{args.model} (random weights) built in {build_s:.1f} s, {torch.get_num_threads()} "
        f"threads; truncation exact and used: {encoder.truncates}\n"
        f"ADE-150: {len(names)} classes, {len(prompts)} prompts, tokens per prompt incl. "
        f"SOT/EOT: mean {lengths.mean():.1f}, max {lengths.max():.0f} (of 77)"
    )
    _, digest_s = timed(encoder.weights_digest)
    print(f"text-tower weights hash: {digest_s:.2f} s (once per model)")

    (emb, _), trunc_all_s = timed(lambda: encode_vocabulary(encoder, names))
    trunc_all_cpu = LAST_CPU[0]
    print(
        f"truncated path, all {len(prompts)} prompts (+ cache write): {trunc_all_s:.1f} s wall, "
        f"{trunc_all_cpu:.1f} s CPU"
    )

    subset = random.Random(0).sample(prompts, min(args.subset, len(prompts)))
    fast, trunc_sub_s = timed(lambda: encoder(subset))
    trunc_sub_cpu = LAST_CPU[0]
    ref, full_sub_s = timed(lambda: full_path(encoder, subset))
    full_sub_cpu = LAST_CPU[0]
    diff = (F.normalize(fast.float(), dim=-1) - F.normalize(ref.float(), dim=-1)).abs().max()
    scale = len(prompts) / len(subset)
    print(
        f"subset of {len(subset)} prompts (seed 0): 77-token path {full_sub_s:.1f} s wall / "
        f"{full_sub_cpu:.1f} s CPU, truncated {trunc_sub_s:.1f} s / {trunc_sub_cpu:.1f} s -> "
        f"{full_sub_s / trunc_sub_s:.1f}x wall, {full_sub_cpu / trunc_sub_cpu:.1f}x CPU; "
        f"max |diff| of unit vectors {diff:.2e}"
    )
    print(
        f"ADE-150 vocabulary: 77-token path {full_sub_s * scale:.0f} s wall / "
        f"{full_sub_cpu * scale:.0f} s CPU (extrapolated from the subset), truncated "
        f"{trunc_all_s:.1f} s / {trunc_all_cpu:.1f} s (measured) -> "
        f"{full_sub_s * scale / trunc_all_s:.1f}x wall, "
        f"{full_sub_cpu * scale / trunc_all_cpu:.1f}x CPU faster"
    )

    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out, child_s = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, check=True))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"second process, same model and vocabulary: {result['calls']} text-tower calls, "
        f"vocabulary in {result['seconds']:.2f} s (process total {child_s:.1f} s incl. build)"
    )


if __name__ == "__main__":
    main()
