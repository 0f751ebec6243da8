import numpy as np
import pytest
import torch

from retclip.database_builder import ConvSegmentEmbedding


def test_bilinear_reference_agrees_with_torch(numpy_bilinear):
    """Guards the numpy reference itself (used to check the encoder below)."""
    x = np.random.default_rng(0).random((7, 11))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None, None], size=(3, 5), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(numpy_bilinear(x, (3, 5)), ref[0, 0].numpy(), atol=1e-12)


@pytest.fixture(scope="module")
def encoder(tiny_clip_file):
    return ConvSegmentEmbedding.from_names(
        "retclip-tiny-convnext", tiny_clip_file, min_size=128, max_size=400
    )


def test_preprocess_resizes_normalises_pads(encoder):
    image = np.full((90, 150, 3), 128, np.uint8)
    x, (h, w) = encoder.preprocess(image)
    scale = 128 / 90
    assert (h, w) == (128, int(150 * scale + 0.5))
    assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0 and x.shape[-1] >= w
    mean = np.array([0.48145466, 0.4578275, 0.40821073]) * 255
    std = np.array([0.26862954, 0.26130258, 0.27577711]) * 255
    np.testing.assert_allclose(x[:, 5, 5].numpy(), (128 - mean) / std, rtol=1e-5)
    assert float(x[:, :, w:].abs().max()) == 0.0  # zero padding after normalisation


def test_embed_matches_numpy_pooling(encoder, numpy_embedding):
    rng = np.random.default_rng(0)
    image = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    masks = np.zeros((3, 96, 128), bool)
    masks[0, 10:70, 20:100] = True
    masks[1, 40:96, :] = True
    masks[2] = rng.random((96, 128)) > 0.3
    x, resized = encoder.preprocess(image)
    dense = encoder.dense_features(x[None])[0]
    got, valid = encoder.embed_masks(dense, torch.from_numpy(masks), resized, tuple(x.shape[-2:]))
    got = got.numpy()
    assert got.shape == (3, encoder.fingerprint.embed_dim) and bool(valid.all())
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    for i in range(3):
        ref = numpy_embedding(
            encoder, dense.double().numpy(), masks[i], resized, tuple(x.shape[-2:])
        )
        np.testing.assert_allclose(got[i], ref, atol=2e-5)
    empty = encoder.embed_masks(dense, torch.zeros(0, 96, 128, dtype=torch.bool), resized, x.shape[-2:])
    assert empty[0].shape == (0, encoder.fingerprint.embed_dim) and empty[1].shape == (0,)


def test_fingerprint_hashes_weight_file(encoder, tiny_clip_file):
    import hashlib

    digest = hashlib.sha256(open(tiny_clip_file, "rb").read()).hexdigest()
    assert encoder.fingerprint.weights == "sha256:" + digest
    assert (
        encoder.fingerprint.model_name == "retclip-tiny-convnext"
        and encoder.fingerprint.embed_dim == 32
    )


def test_resnet_encoder_is_normalised():
    enc = ConvSegmentEmbedding.from_names("retclip-tiny-resnet", "", min_size=96, max_size=200)
    x, resized = enc.preprocess(np.zeros((64, 64, 3), np.uint8))
    dense = enc.dense_features(x[None])[0]
    m = torch.zeros((2, 64, 64), dtype=torch.bool)
    m[0, :32] = True
    m[1] = True
    out, valid = enc.embed_masks(dense, m, resized, tuple(x.shape[-2:]))
    assert out.shape == (2, 32) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(out[0], out[1])
