"""Per-stage time of training-free RetCLIP on one image at real model sizes (random weights).

Stages, each timed on its own (one warm-up call first unless noted):

* Grounding DINO (Hugging Face, Swin-B + BERT-base = grounding-dino-base layout, or Swin-T with
  ``--gdino tiny``) on the 150 ADE20k class names, prompts chunked at 256 tokens. The tokenizer
  is BERT-style with one token per word of the class names (real BERT splits a few rare words
  further), so the chunk count is close to the released model's.
* SAM ViT-B: image encoder, then box-prompt decoding of ``--boxes`` boxes (one batch);
* SAM ViT-B automatic mask generator on a 32 x 32 point grid (the "Grid + SAM" rows);
* dense CLIP ViT-B/16 (and ViT-L/14 with ``--vit-large``): one image at short side 448,
  448 px windows, stride 224 (the configs' setting);
* mask pooling of the proposals, CLIP classification (text embeddings cached), retrieval
  (exact search over a random ``--db-size`` x D database, k = 10, max aggregation);
* text encoding of the 150-class vocabulary (403 synonyms x 14 templates): a one-time cost per
  vocabulary, reported apart;
* post-processing (panoptic + semantic + instance) at the image size.

    python benchmarks/bench_training_free.py                       # CPU, 2 threads
    python benchmarks/bench_training_free.py --gdino tiny --skip-grid
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import retclip.modeling  # noqa: E402,F401  (compat steps, then registration, before detectron2)
from retclip.data.categories import ade20k_150_categories  # noqa: E402
from retclip.modeling.mask_pooling import get_classification_logits  # noqa: E402
from retclip.modeling.proposal_postprocessing import (  # noqa: E402
    proposal_instances,
    proposal_panoptic,
    proposal_semantic,
)
from retclip.modeling.text_classifier import encode_vocabulary  # noqa: E402
from retclip.modeling.vit_dense import DenseCLIPViT, clip_input_size, mask_pool_dense  # noqa: E402
from retclip.proposals import GroundingDinoDetector, SamBoxSegmenter, SamGridProposals  # noqa: E402
from retclip.proposals.testing import build_grounding_dino_random, build_sam_vit_b_random  # noqa: E402
from retclip.retrieval import IndexConfig, build_index, retrieval_scores  # noqa: E402

CLIP_MEAN = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(3, 1, 1)
CLIP_STD = torch.tensor([68.5005327, 66.6321579, 70.32316305]).view(3, 1, 1)


#: Process CPU seconds of the last :func:`timed` call (all threads): on a machine whose cores
#: are shared with other jobs, CPU / threads estimates the uncontended wall time better than the
#: wall time itself does.
LAST_CPU = [0.0]


def timed(fn: Callable[[], object], warmup: bool = True) -> float:
    """Wall seconds of one call of ``fn`` (after one warm-up call); CPU seconds in LAST_CPU."""
    if warmup:
        fn()
    cpu, start = time.process_time(), time.perf_counter()
    fn()
    LAST_CPU[0] = time.process_time() - cpu
    return time.perf_counter() - start


class Stages(dict):
    """Stage name -> wall seconds; each entry is printed, with its CPU time, as it is measured."""

    cpu: Dict[str, float]

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        self.cpu = getattr(self, "cpu", {})
        self.cpu[key] = LAST_CPU[0]
        print(f"  measured {key}: wall {value:.2f} s, CPU {LAST_CPU[0]:.2f} s", flush=True)


def build_grounding_dino(kind: str, names: List[str]):
    """Random-weight GroundingDinoForObjectDetection at real size (Swin-B for "base", Swin-T for
    "tiny"), with the class names' words as whole tokens."""
    words = {w for n in names for w in n.lower().replace(",", " ").split() if w.isascii()}
    model, processor = build_grounding_dino_random("B" if kind == "base" else "T", words=words)
    return GroundingDinoDetector(model, processor, box_threshold=0.0, text_threshold=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=683)
    parser.add_argument("--gdino", choices=("base", "tiny"), default="base")
    parser.add_argument("--boxes", type=int, default=20, help="box prompts decoded by SAM")
    parser.add_argument("--db-size", type=int, default=100_000)
    parser.add_argument("--skip-grid", action="store_true", help="skip SAM's 32x32 point grid")
    parser.add_argument("--vit-large", action="store_true", help="also time dense ViT-L/14")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--text-classes", type=int, default=150, help="classes in the (one-time) text encoding"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(args.height, args.width, 3), dtype=np.uint8)
    names = [c["name"] for c in ade20k_150_categories()]
    times: Dict[str, float] = Stages()

    detector = build_grounding_dino(args.gdino, names)
    chunks = len(detector.chunk(names))
    times[f"Grounding DINO ({args.gdino}, {chunks} prompt chunks)"] = timed(
        lambda: detector(image, names)
    )

    sam = build_sam_vit_b_random()
    segmenter = SamBoxSegmenter(sam)
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)  # times the image encoder alone
    torch.manual_seed(0)
    xy = torch.rand(args.boxes, 2) * torch.tensor([args.width * 0.7, args.height * 0.7])
    boxes = torch.cat([xy, xy + torch.tensor([args.width * 0.3, args.height * 0.3])], dim=1)
    times["SAM ViT-B image encoder"] = timed(
        lambda: predictor.set_image(image), warmup=False
    )
    encoder_cpu = LAST_CPU[0]
    total_sam = timed(lambda: segmenter(image, boxes), warmup=False)
    LAST_CPU[0] = max(LAST_CPU[0] - encoder_cpu, 0.0)
    times[f"SAM ViT-B decode {args.boxes} boxes"] = max(
        total_sam - times["SAM ViT-B image encoder"], 0.0
    )
    if not args.skip_grid:
        grid = SamGridProposals(sam=sam, points_per_side=32)
        times["SAM ViT-B 32x32 grid (encoder + decoder)"] = timed(lambda: grid(image), warmup=False)

    clips = [("ViT-B-16", "ViT-B/16")] + ([("ViT-L-14", "ViT-L/14")] if args.vit_large else [])
    masks, _ = segmenter(image, boxes)
    for arch, label in clips:
        torch.manual_seed(0)
        clip = DenseCLIPViT(model_name=arch, dense_mode="value", window=448, stride=224)
        h, w = clip_input_size(args.height, args.width, 448, clip.patch_size)
        x = ((torch.from_numpy(image).permute(2, 0, 1).float() - CLIP_MEAN) / CLIP_STD)[None]
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        dense = clip(x)
        times[f"dense CLIP {label} at {h}x{w} (448 windows)"] = timed(lambda: clip(x))
        encoded = {}
        text_names = names[: args.text_classes]
        times[f"text encoding {label}, {len(text_names)} classes (one-time)"] = timed(
            lambda: encoded.update(result=encode_vocabulary(clip.encode_prompts, text_names)),
            warmup=False,
        )
        text, num_syn = encoded["result"]
        emb = mask_pool_dense(dense[0], masks)
        times[f"mask pooling {len(masks)} masks ({label})"] = timed(
            lambda: mask_pool_dense(dense[0], masks)
        )
        classifier = torch.cat([text, text.new_zeros((1, text.shape[1]))])
        times[f"CLIP classification ({label})"] = timed(
            lambda: get_classification_logits(emb, classifier, clip.logit_scale, num_syn)
        )
        index = build_index(IndexConfig(type="exact"), clip.embed_dim)
        index.add(torch.nn.functional.normalize(torch.randn(args.db_size, clip.embed_dim), dim=1))
        labels = torch.randint(0, len(text_names), (args.db_size,))

        def search() -> None:
            sims, ids = index.search(torch.nn.functional.normalize(emb, dim=1), 10)
            retrieval_scores(sims, labels[ids], len(text_names), "max")

        times[f"retrieval, {args.db_size} x {clip.embed_dim} exact, k=10 ({label})"] = timed(search)

    probs = torch.rand(len(masks), 150).softmax(1)
    things = set(range(100))

    def post() -> None:
        proposal_panoptic(masks, probs, thing_ids=things, overlap_threshold=0.8)
        proposal_semantic(masks, probs)
        proposal_instances(masks, probs, topk=100, thing_ids=things, things_only=True)

    times["post-processing (panoptic + semantic + instance)"] = timed(post)

    once = {k: v for k, v in times.items() if "one-time" in k}
    print(
        f"\nTraining-free RetCLIP, one {args.height}x{args.width} image, CPU, "
        f"{args.threads} threads, random weights"
    )
    print(f"  {'stage':<58} {'wall s':>8} {'CPU s':>8}")
    for key, value in times.items():
        print(f"  {key:<58} {value:8.2f} {times.cpu[key]:8.2f}")
    per_image = sum(
        v for k, v in times.items() if k not in once and "grid" not in k and "ViT-L" not in k
    )
    per_image_cpu = sum(
        times.cpu[k] for k in times if k not in once and "grid" not in k and "ViT-L" not in k
    )
    label = "per image, Grounding DINO + SAM + ViT-B/16 (cached text)"
    print(f"  {label:<58} {per_image:8.2f} {per_image_cpu:8.2f}")


if __name__ == "__main__":
    main()
