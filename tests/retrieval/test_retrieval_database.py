"""Feature database: round trip, provenance, bad input (NaN/zero rows, encoder, corrupt shards)."""
import hashlib
import json

import numpy as np
import pytest

from retclip.retrieval.database import CorruptShardError, FeatureDatabase
from retclip.retrieval.fingerprint import EncoderFingerprint

FP = EncoderFingerprint("retclip-tiny-convnext", "random", 16)
VOCAB = ["cat, kitty", ["dog", "puppy"], "sofa"]


def _rows(n, seed=0, dim=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32), rng.integers(0, 3, n)


def test_fingerprint_from_open_clip(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"some weights")
    assert EncoderFingerprint.from_open_clip("RN50", "", 1024).weights == "random"
    assert EncoderFingerprint.from_open_clip("RN50", "openai", 1024).weights == "openai"
    local = EncoderFingerprint.from_open_clip("RN50", str(weights), 1024)
    assert local.weights == "sha256:" + hashlib.sha256(b"some weights").hexdigest()
    assert EncoderFingerprint.from_dict(local.to_dict()) == local


def test_round_trip_and_describe(tmp_path):
    db = FeatureDatabase.create(tmp_path / "db", FP, VOCAB, source="synthetic", dtype="float32",
                                build_args={"k": 1})
    x, y = _rows(20)
    boxes = np.arange(80, dtype=np.float32).reshape(20, 4)
    db.append(x, y, [f"im{i // 4}" for i in range(20)], boxes=boxes)
    x2, y2 = _rows(5, seed=1)
    db.append(x2, y2, list(range(5)))
    again = FeatureDatabase.open(tmp_path / "db", expected_fingerprint=FP)
    rows = again.load_all()
    ref = np.concatenate([x, x2])
    ref = ref / np.sqrt((ref.astype(np.float64) ** 2).sum(1, keepdims=True))
    np.testing.assert_allclose(rows.features, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(rows.labels, np.concatenate([y, y2]))
    assert rows.image_ids[:5] == ["im0"] * 4 + ["im1"] and rows.image_ids[-1] == "4"
    np.testing.assert_array_equal(rows.boxes[:20], boxes)
    assert np.isnan(rows.boxes[20:]).all() and np.isnan(rows.scores).all()
    info = again.describe()
    counts = np.bincount(np.concatenate([y, y2]), minlength=3)
    assert info["class_counts"] == {"cat": counts[0], "dog": counts[1], "sofa": counts[2]}
    assert info["num_vectors"] == 25 and info["embed_dim"] == 16 and info["source"] == "synthetic"
    assert info["disk_bytes"] > 25 * 16 * 4
    assert again.vocabulary[0] == ["cat", "kitty"]
    assert again.shard_names == ["shard-000000", "shard-000001"]
    assert not list((tmp_path / "db").rglob("*.tmp"))


def test_float16_storage(tmp_path):
    db = FeatureDatabase.create(tmp_path / "db", FP, VOCAB)
    x, y = _rows(10)
    db.append(x, y, ["a"] * 10)
    feats = db.load_all().features
    assert feats.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_parallel_writers_and_resume(tmp_path):
    db = FeatureDatabase.create(tmp_path / "db", FP, VOCAB)
    for rank in (1, 0):
        x, y = _rows(6, seed=rank)
        db.append(x, y, [f"r{rank}_{i}" for i in range(6)], shard_prefix=f"rank{rank}",
                  update_manifest=False)
    x, y = _rows(3, seed=5)
    db.append(x, y, ["r0_extra"] * 3, shard_prefix="rank0", update_manifest=False)
    # a chunk whose images gave no segments still writes a (0-row) shard, marking it done
    db.append(np.zeros((0, 16)), np.zeros(0), [], shard_prefix="rank2", update_manifest=False)
    assert len(FeatureDatabase.open(tmp_path / "db")) == 0  # not listed yet
    assert db.image_ids() == {f"r{r}_{i}" for r in (0, 1) for i in range(6)} | {"r0_extra"}
    db.refresh_manifest()
    again = FeatureDatabase.open(tmp_path / "db")
    assert again.shard_names == ["rank0-000000", "rank0-000001", "rank1-000000", "rank2-000000"]
    assert len(again) == 15 and sum(again.class_counts) == 15
    # resuming a build opens the same database when encoder and vocabulary agree
    assert len(FeatureDatabase.create(tmp_path / "db", FP, VOCAB, exist_ok=True)) == 15
    with pytest.raises(FileExistsError):
        FeatureDatabase.create(tmp_path / "db", FP, VOCAB)


def test_nan_and_zero_rows_rejected_naming_rows(tmp_path):
    db = FeatureDatabase.create(tmp_path / "db", FP, VOCAB)
    x, y = _rows(10)
    x[3, 0] = np.nan
    x[7, 5] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinite features at rows \[3, 7\]"):
        db.append(x, y, ["a"] * 10)
    x, y = _rows(10)
    x[4] = 0.0
    with pytest.raises(ValueError, match=r"zero-norm features at rows \[4\]"):
        db.append(x, y, ["a"] * 10)
    with pytest.raises(ValueError, match=r"labels outside \[0, 3\) at rows \[0\]"):
        db.append(_rows(2)[0], np.array([5, 0]), ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        db.append(np.ones((2, 8)), np.array([0, 1]), ["a", "b"])
    assert db.shard_names == [] and not list((tmp_path / "db" / "shards").iterdir())


def test_other_encoder_is_an_error_naming_both(tmp_path):
    FeatureDatabase.create(tmp_path / "db", FP, VOCAB)
    other = EncoderFingerprint("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup", 16)
    with pytest.raises(ValueError) as err:
        FeatureDatabase.open(tmp_path / "db", expected_fingerprint=other)
    assert "retclip-tiny-convnext/random" in str(err.value)
    assert "convnext_large_d_320/laion2b_s29b_b131k_ft_soup" in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_shard_error_names_it(tmp_path, damage):
    db = FeatureDatabase.create(tmp_path / "db", FP, VOCAB)
    x, y = _rows(30)
    name = db.append(x, y, ["a"] * 30)
    path = tmp_path / "db" / "shards" / f"{name}.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match=name):
        db.load_all()
    if damage == "truncate":  # unverified reads (resume scan) still detect a truncated file
        with pytest.raises(CorruptShardError, match=name):
            db.image_ids()


def test_merge_and_remove_classes(tmp_path):
    a = FeatureDatabase.create(tmp_path / "a", FP, VOCAB, source="ade")
    a.append(*_rows(8), ["a"] * 8)
    b = FeatureDatabase.create(tmp_path / "b", FP, ["lamp", "Sofa, couch"], source="oi")
    b.append(_rows(4, seed=3)[0], np.array([0, 1, 1, 0]), ["b"] * 4)
    m = a.merge(b, tmp_path / "m")
    assert m.class_names == ["cat", "dog", "sofa", "lamp"]
    assert m.vocabulary[2] == ["sofa", "couch"]
    labels = m.load_all().labels
    np.testing.assert_array_equal(labels[8:], [3, 2, 2, 3])
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["source"] == "ade + oi"
    r = m.remove_classes(["dog", 3], tmp_path / "r")
    assert r.class_names == ["cat", "sofa"]
    rows = r.load_all()
    keep = (labels == 0) | (labels == 2)
    np.testing.assert_array_equal(rows.labels, np.where(labels[keep] == 2, 1, 0))
    with pytest.raises(KeyError, match="giraffe"):
        m.remove_classes(["giraffe"], tmp_path / "r2")
    with pytest.raises(ValueError, match="encoder"):
        a.merge(FeatureDatabase.create(tmp_path / "c", EncoderFingerprint("x", "y", 16), VOCAB),
                tmp_path / "m2")
