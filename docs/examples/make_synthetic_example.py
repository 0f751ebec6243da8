#!/usr/bin/env python
"""Regenerate the committed synthetic sweep example (docs/examples/synthetic_sweep/).

SYNTHETIC: no model runs here. Per image of the synthetic ADE-like test split, the scores a model
would cache are drawn from the ground truth with noise: an in-vocabulary classifier that is
right on seen classes and confuses unseen ones with seen ones, a weaker CLIP classifier, a
retrieval score that favours the right class, and mask logits from the ground-truth segments
(plus distractor queries). The point is to show the tools (score cache -> sweep -> report) on
data where the weights matter; the numbers say nothing about RetCLIP.

    python docs/examples/make_synthetic_example.py [--workdir /tmp/sweep_example]
"""

import argparse
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import retclip  # noqa: E402,F401
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from PIL import Image  # noqa: E402

from retclip.modeling.vocabulary import thing_ids_from_metadata  # noqa: E402
from retclip.sweep.writer import ScoreCacheWriter  # noqa: E402
from retclip.testing.synthetic import make_and_register_synthetic  # noqa: E402

POSTPROCESS = {
    "semantic_on": True,
    "panoptic_on": True,
    "instance_on": True,
    "object_mask_threshold": 0.0,
    "overlap_threshold": 0.8,
    "sem_seg_postprocess_before_inference": True,
    "topk": 100,
}
SEEN = [True, True, True, True, False, True, False, False]  # the synthetic split's synonym rule


def _rgb2id(a):
    a = a.astype(np.int64)
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


def synthetic_inputs(record, num_classes, rng):
    ids = _rgb2id(np.asarray(Image.open(record["pan_seg_file_name"])))
    h, w = ids.shape
    segs = record["segments_info"]
    n_distract = 3
    q = len(segs) + n_distract
    seen = np.array(SEEN)
    iv = rng.normal(0, 1.0, (q, num_classes + 1))
    clip = rng.normal(0, 1.0, (q, num_classes + 1))
    ret = rng.uniform(0, 0.5, (q, num_classes))
    masks = rng.normal(-4, 1.0, (q, h, w))
    for i, s in enumerate(segs):
        c = s["category_id"]
        masks[i][ids == s["id"]] = rng.normal(4, 1.0, int((ids == s["id"]).sum()))
        if seen[c]:
            iv[i, c] += 4.0
        else:  # the in-vocabulary classifier mistakes unseen classes for a seen one
            iv[i, rng.choice(np.flatnonzero(seen))] += 3.5
            iv[i, c] += 1.5
        clip[i, c] += 2.0
        ret[i, c] = rng.uniform(0.55, 1.0)
        if rng.random() < 0.3:  # retrieval is sometimes confidently wrong
            ret[i, rng.integers(num_classes)] = 1.0
    for i in range(len(segs), q):  # distractors: void for the in-vocabulary classifier
        iv[i, -1] += 3.0
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 30)
        masks[i, y : y + 20, x : x + 30] = 3.0
    t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt)
    return {
        "in_vocab_logits": t(iv),
        "clip_logits": t(clip),
        "retrieval_scores": t(ret),
        "retrieval_available": torch.ones(num_classes, dtype=torch.bool),
        "seen": t(SEEN, torch.bool),
        "valid": None,
        "mask_logits": t(masks),  # full-resolution here: the padded size equals the image size
        "padded_size": (h, w),
        "image_size": (h, w),
        "output_size": (h, w),
    }


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", default=None)
    p.add_argument("--num-images", type=int, default=24)
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="sweep_example_")
    _, test = make_and_register_synthetic(
        os.path.join(work, "data"),
        prefix="retclip_example",
        num_train=1,
        num_test=args.num_images,
        seed=7,
    )
    num_classes = len(MetadataCatalog.get(test).stuff_classes)
    cache_dir = os.path.join(work, "cache")
    writer = ScoreCacheWriter(
        cache_dir,
        dataset_name=test,
        model_manifest={
            "ensemble_mode": "arithmetic",
            "weights": {"alpha": 0.4, "beta": 0.7, "gamma": 0.3},
            "class_names": list(MetadataCatalog.get(test).stuff_classes),
            "postprocess": dict(
                POSTPROCESS, thing_ids=sorted(thing_ids_from_metadata(MetadataCatalog.get(test)))
            ),
        },
        fingerprint={
            "model": "synthetic scores (no model)",
            "databases": "synthetic",
            "vocabulary": "synthetic test split",
            "ensemble_mode": "arithmetic",
        },
    )
    writer.reset()
    rng = np.random.default_rng(0)
    for record in DatasetCatalog.get(test):
        inp = {"file_name": record["file_name"], "image_id": record["image_id"]}
        writer.process([inp], [{"ensemble_inputs": synthetic_inputs(record, num_classes, rng)}])
    writer.evaluate()
    sweep_dir = os.path.join(work, "sweep")
    # The sweep tool runs in this process (the synthetic dataset is registered only here).
    sys.path.insert(0, os.path.join(REPO, "tools"))
    from sweep_ensemble import main as sweep_main

    sweep_main(
        [
            "--cache",
            cache_dir,
            "--output-dir",
            sweep_dir,
            "--alpha",
            "0.0,0.2,0.4,0.6,0.8,1.0",
            "--beta",
            "0.2,0.4,0.6,0.8,1.0",
            "--gamma",
            "0.0,0.2,0.4,0.6,0.8,1.0",
            "--mode",
            "arithmetic",
        ]
    )
    out = os.path.join(REPO, "docs", "examples", "synthetic_sweep")
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "make_report.py"),
            "sweep",
            "--sweep",
            sweep_dir,
            "--out-dir",
            out,
            "--note",
            "SYNTHETIC scores (no model), 24 images",
            "--dpi",
            "60",
        ],
        check=True,
    )


if __name__ == "__main__":
    main()
