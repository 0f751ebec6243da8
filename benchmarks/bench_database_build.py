#!/usr/bin/env python
"""Images/s and forwards per model of the database build on this machine (random weights).

    python benchmarks/bench_database_build.py [--skip-real] [--batch-sizes 1,4] [--real-images 2]

tiny: tiny Grounding DINO + tiny SAM + tiny ConvNeXt CLIP on 8 synthetic 96x128 images (CLIP
input 128 px). real: Grounding DINO-T (Swin-T + BERT-base, 800 px), SAM ViT-B (1024 px) and CLIP
RN50 (512 px) on skimage's astronaut (512x512) and its mirror images, 4 boxes kept per image.
Each pipeline runs once per DATABASE_BUILD.BATCH_SIZE in --batch-sizes; the last line gives the
images/s of each batch size relative to the first, measured in this run.
"""
import argparse
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import retclip.modeling  # noqa: E402,F401  (compat steps, then registration, before detectron2)
from retclip.database_builder import (
    ConvSegmentEmbedding,
    DatabaseBuilder,
    FolderSource,
    ForwardCounter,
    watch_models,
)  # noqa: E402
from retclip.proposals import (
    GroundingDinoDetector,
    GroundingDinoSamProposals,
    SamBoxSegmenter,
)  # noqa: E402
from retclip.proposals import testing as T  # noqa: E402
from retclip.testing.synthetic import TRAIN_CLASSES, make_synthetic_panoptic  # noqa: E402


def run(name, encoder, gdino, sam, images, labels, workdir, batch_size, **det_kwargs):
    det = GroundingDinoDetector(*gdino, max_images_per_batch=batch_size, **det_kwargs)
    segmenter = SamBoxSegmenter(sam, max_images_per_batch=batch_size)
    proposals = GroundingDinoSamProposals(detector=det, segmenter=segmenter)
    counter = ForwardCounter()
    watch_models(counter, encoder, proposals)
    (workdir / f"{name}.json").write_text(json.dumps(labels))
    builder = DatabaseBuilder(
        encoder=encoder,
        proposals=proposals,
        output_dir=str(workdir / f"db_{name}_b{batch_size}"),
        shard_size=8,
        batch_size=batch_size,
        counter=counter,
        progress=False,
    )
    report = builder.build(FolderSource(images, str(workdir / f"{name}.json")))
    print(
        json.dumps(
            {
                "pipeline": name,
                "batch_size": batch_size,
                "images": report["images"]["ok"],
                "vectors": report["vectors"],
                "images_per_second": round(report["images_per_second"], 3),
                "forwards": report["forwards"],
                "calls": report["calls"],
                "model_seconds": report["model_seconds"],
            }
        )
    )
    counter.close()
    return report["images_per_second"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--batch-sizes", default="1,4", help="DATABASE_BUILD.BATCH_SIZE values to compare")
    p.add_argument("--real-images", type=int, default=2, help="astronaut + mirrored copies")
    args = p.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from pathlib import Path

    work = Path(tempfile.mkdtemp(prefix="bench_db_"))
    split = make_synthetic_panoptic(str(work), "train", TRAIN_CLASSES, num_images=8, seed=0)
    names = [c["name"].split(",")[0] for c in TRAIN_CLASSES]
    labels = {f: names[:4] for f in sorted(os.listdir(split.image_dir))}
    speeds = {}
    for b in batch_sizes:
        speeds[("tiny", b)] = run(
            "tiny",
            ConvSegmentEmbedding.from_names("retclip-tiny-convnext", "", min_size=128, max_size=400),
            T.build_tiny_grounding_dino(),
            T.build_tiny_sam(),
            split.image_dir,
            labels,
            work,
            b,
            box_threshold=0.3,
            text_threshold=0.0,
            max_detections=10,
        )
    if not args.skip_real:
        import skimage.data

        real_dir = work / "real"
        real_dir.mkdir()
        astronaut = skimage.data.astronaut()
        real_labels = {}
        for i in range(args.real_images):
            flipped = astronaut[:, ::-1] if i % 2 else astronaut
            Image.fromarray(np.ascontiguousarray(flipped)).save(real_dir / f"astronaut{i}.png")
            real_labels[f"astronaut{i}.png"] = ["person", "flag", "rocket"]
        gdino, sam = T.build_grounding_dino_random(), T.build_sam_vit_b_random()
        for b in batch_sizes:
            speeds[("real_size", b)] = run(
                "real_size",
                ConvSegmentEmbedding.from_names("RN50", "", min_size=512, max_size=1333),
                gdino,
                sam,
                str(real_dir),
                real_labels,
                work,
                b,
                box_threshold=0.0,
                text_threshold=0.0,
                max_detections=4,
            )
    ratios = {
        f"{name} batch {b} / batch {batch_sizes[0]}": round(v / speeds[(name, batch_sizes[0])], 3)
        for (name, b), v in speeds.items()
        if b != batch_sizes[0]
    }
    print(json.dumps({"images_per_second_ratio": ratios}))


if __name__ == "__main__":
    main()
