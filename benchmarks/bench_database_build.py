#!/usr/bin/env python
"""Images/s and forwards per model of the database build on this machine (random weights).

    python benchmarks/bench_database_build.py [--skip-real]

tiny: tiny Grounding DINO + tiny SAM + tiny ConvNeXt CLIP on 8 synthetic 96x128 images (CLIP
input 128 px). real: Grounding DINO-T (Swin-T + BERT-base, 800 px), SAM ViT-B (1024 px) and CLIP
RN50 (512 px) on skimage's astronaut (512x512), 4 boxes kept.
"""
import argparse
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import retclip  # noqa: E402,F401
from retclip.database_builder import (
    ClipSegmentEncoder,
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


def run(name, encoder, gdino, sam, images, labels, workdir, **det_kwargs):
    det = GroundingDinoDetector(*gdino, **det_kwargs)
    proposals = GroundingDinoSamProposals(detector=det, segmenter=SamBoxSegmenter(sam))
    counter = ForwardCounter()
    watch_models(counter, encoder, proposals)
    (workdir / f"{name}.json").write_text(json.dumps(labels))
    builder = DatabaseBuilder(
        encoder=encoder,
        proposals=proposals,
        output_dir=str(workdir / f"db_{name}"),
        shard_size=4,
        counter=counter,
        progress=False,
    )
    report = builder.build(FolderSource(images, str(workdir / f"{name}.json")))
    print(
        json.dumps(
            {
                "pipeline": name,
                "images": report["images"]["ok"],
                "vectors": report["vectors"],
                "images_per_second": round(report["images_per_second"], 3),
                "forwards": report["forwards"],
                "model_seconds": report["model_seconds"],
            }
        )
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--skip-real", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from pathlib import Path

    work = Path(tempfile.mkdtemp(prefix="bench_db_"))
    split = make_synthetic_panoptic(str(work), "train", TRAIN_CLASSES, num_images=8, seed=0)
    names = [c["name"].split(",")[0] for c in TRAIN_CLASSES]
    labels = {f: names[:4] for f in sorted(os.listdir(split.image_dir))}
    run(
        "tiny",
        ClipSegmentEncoder.from_names("retclip-tiny-convnext", "", min_size=128, max_size=400),
        T.build_tiny_grounding_dino(),
        T.build_tiny_sam(),
        split.image_dir,
        labels,
        work,
        box_threshold=0.3,
        text_threshold=0.0,
        max_detections=10,
    )
    if not args.skip_real:
        import skimage.data

        real_dir = work / "real"
        real_dir.mkdir()
        Image.fromarray(skimage.data.astronaut()).save(real_dir / "astronaut.png")
        run(
            "real_size",
            ClipSegmentEncoder.from_names("RN50", "", min_size=512, max_size=1333),
            T.build_grounding_dino_t_random(),
            T.build_sam_vit_b_random(),
            str(real_dir),
            {"astronaut.png": ["person", "flag", "rocket"]},
            work,
            box_threshold=0.0,
            text_threshold=0.0,
            max_detections=4,
        )


if __name__ == "__main__":
    main()
