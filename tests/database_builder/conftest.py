"""Fixtures of the database-builder tests: tiny models, a numpy reference for mask pooling."""

import numpy as np
import open_clip
import pytest
import torch

from retclip.proposals.testing import build_tiny_grounding_dino, build_tiny_sam


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory):
    """Saved weights of the tiny ConvNeXt CLIP: a file gives a sha256 fingerprint and the same
    weights in every process (random init is not reproducible across processes)."""
    path = tmp_path_factory.mktemp("clip") / "tiny_convnext.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("retclip-tiny-convnext").state_dict(), path)
    return str(path)


def synthetic_folder_labels(root, num_images: int, seed: int):
    """A synthetic panoptic train split under ``root`` and its image-level labels (first synonym
    of every class in an image's annotation): (image dir, {file name: sorted labels})."""
    import json

    from retclip.testing.synthetic import TRAIN_CLASSES, make_synthetic_panoptic

    split = make_synthetic_panoptic(str(root), "train", TRAIN_CLASSES, num_images=num_images, seed=seed)
    with open(split.panoptic_json) as f:
        pan = json.load(f)
    names = {c["id"]: c["name"].split(",")[0] for c in TRAIN_CLASSES}
    files = {im["id"]: im["file_name"] for im in pan["images"]}
    labels = {
        files[a["image_id"]]: sorted({names[s["category_id"]] for s in a["segments_info"]})
        for a in pan["annotations"]
    }
    return split.image_dir, labels


@pytest.fixture(scope="session")
def folder_labels():
    return synthetic_folder_labels


@pytest.fixture(scope="session")
def tiny_gdino():
    return build_tiny_grounding_dino()


@pytest.fixture(scope="session")
def tiny_sam():
    return build_tiny_sam()


def bilinear_np(x: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of an H x W array, half-pixel centres (align_corners=False), in numpy."""
    h_in, w_in = x.shape
    h, w = size

    def coords(n_out, n_in):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, None)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, wy = coords(h, h_in)
    x0, x1, wx = coords(w, w_in)
    top = x[y0][:, x0] * (1 - wx) + x[y0][:, x1] * wx
    bottom = x[y1][:, x0] * (1 - wx) + x[y1][:, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def reference_embedding(
    encoder, dense: np.ndarray, mask: np.ndarray, resized, padded
) -> np.ndarray:
    """The segment embedding computed independently: +-1 mask -> bilinear to the resized image ->
    pad with -1 -> bilinear to the dense size -> > 0 -> numpy mean of dense features -> CLIP head.
    """
    logits = bilinear_np(mask.astype(np.float64) * 2 - 1, resized)
    padded_logits = -np.ones(padded)
    padded_logits[: resized[0], : resized[1]] = logits
    binary = bilinear_np(padded_logits, dense.shape[-2:]) > 0
    pooled = dense[:, binary].sum(axis=1) / (binary.sum() + 1e-8)
    visual = encoder.backbone.clip_model.visual
    with torch.no_grad():
        emb = visual.head(visual.trunk.head(torch.from_numpy(pooled).float().view(1, -1, 1, 1)))[
            0
        ].numpy()
    return emb / np.linalg.norm(emb)


@pytest.fixture(scope="session")
def numpy_bilinear():
    return bilinear_np


@pytest.fixture(scope="session")
def numpy_embedding():
    return reference_embedding
