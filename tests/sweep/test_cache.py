"""Score cache and sweep runner on hand-made ensemble inputs (no network): exact round trip,
float16 storage, stale caches refused naming what differs, partial caches used and reported,
grid values checked, resumable and parallel sweeps."""

import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from retclip.modeling.vocabulary import thing_ids_from_metadata
from retclip.sweep.cache import ScoreCache, StaleCacheError
from retclip.sweep.writer import ScoreCacheWriter
from retclip.sweep.grid import GridPoint, load_grid_file, make_grid, parse_values
from retclip.sweep.runner import SweepRunner, read_rows
from retclip.testing.synthetic import make_and_register_synthetic

FINGERPRINT = {
    "model": "abc",
    "databases": {"primary": "db1"},
    "vocabulary": "v1",
    "ensemble_mode": "arithmetic",
}
POSTPROCESS = {
    "semantic_on": True,
    "panoptic_on": True,
    "instance_on": True,
    "object_mask_threshold": 0.0,
    "overlap_threshold": 0.8,
    "sem_seg_postprocess_before_inference": True,
    "topk": 20,
}


def _model_manifest(dataset):
    """What RetCLIP.score_cache_manifest gives for a model whose vocabulary is the dataset's."""
    meta = MetadataCatalog.get(dataset)
    thing_ids = sorted(thing_ids_from_metadata(meta))
    return {
        "ensemble_mode": "arithmetic",
        "weights": {"alpha": 0.4, "beta": 0.7, "gamma": 0.3},
        "class_names": list(meta.stuff_classes),
        "postprocess": dict(POSTPROCESS, thing_ids=thing_ids),
    }
Q = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sweep_cache"))
    return make_and_register_synthetic(root, prefix="sweepcache", num_train=1, num_test=4, seed=2)[
        1
    ]


def _pairs(dataset):
    g = torch.Generator().manual_seed(0)
    out = []
    for record in DatasetCatalog.get(dataset):
        h, w = record["height"], record["width"]
        k = 8
        ens = {
            "in_vocab_logits": torch.randn(Q, k + 1, generator=g) * 3,
            "clip_logits": torch.randn(Q, k + 1, generator=g) * 3,
            "retrieval_scores": torch.rand(Q, k, generator=g),
            "retrieval_available": torch.rand(k, generator=g) > 0.3,
            "seen": torch.tensor([True, True, True, True, False, True, False, False]),
            "valid": None,
            "mask_logits": torch.randn(Q, (h + 31) // 32 * 8, (w + 31) // 32 * 8, generator=g) * 4,
            "padded_size": ((h + 31) // 32 * 32, (w + 31) // 32 * 32),
            "image_size": (h, w),
            "output_size": (h, w),
        }
        out.append(
            (
                {"file_name": record["file_name"], "image_id": record["image_id"]},
                {"ensemble_inputs": ens},
            )
        )
    return out


def _writer(cache_dir, dataset, fingerprint=FINGERPRINT, **kw):
    kw.setdefault("max_images_per_shard", 2)
    return ScoreCacheWriter(
        str(cache_dir),
        dataset_name=dataset,
        fingerprint=fingerprint,
        model_manifest=_model_manifest(dataset),
        **kw,
    )


def _write(cache_dir, dataset, pairs, finish=True, **kw):
    writer = _writer(cache_dir, dataset, **kw)
    writer.reset()
    for inp, out in pairs:
        writer.process([inp], [out])
    if finish:
        writer.evaluate()
    return writer


@pytest.fixture(scope="module")
def full_cache(dataset, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache_full")
    pairs = _pairs(dataset)
    _write(cache_dir, dataset, pairs)
    return str(cache_dir), pairs


def test_round_trip_is_exact_and_sharded(full_cache):
    cache_dir, pairs = full_cache
    cache = ScoreCache(cache_dir, expected_fingerprint=FINGERPRINT)
    assert len(cache) == 4 and cache.manifest["complete"] is True and not cache.missing_image_ids
    assert len(os.listdir(os.path.join(cache_dir, "shards"))) == 2  # 2 images per shard
    by_id = {img.info["image_id"]: img for img in cache}
    for inp, out in pairs:
        img = by_id[inp["image_id"]]
        for key, value in out["ensemble_inputs"].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(img.tensors[key], value), key
        assert "valid" not in img.tensors
        assert img.evaluator_input["file_name"] == inp["file_name"]


def test_float16_masks_halve_the_size(dataset, full_cache, tmp_path):
    cache_dir, pairs = full_cache
    _write(tmp_path, dataset, pairs, mask_dtype="float16")
    size = lambda d: sum(
        os.path.getsize(os.path.join(d, "shards", f)) for f in os.listdir(os.path.join(d, "shards"))
    )
    # the mask logits take half the bytes; the rest of the cache (scores, mask summaries) is alike
    mask_bytes = sum(
        p[1]["ensemble_inputs"]["mask_logits"].numel() * 4 for p in pairs
    )
    assert size(cache_dir) - size(str(tmp_path)) >= 0.45 * mask_bytes
    img = ScoreCache(str(tmp_path)).load(pairs[0][0]["image_id"])
    ref = pairs[0][1]["ensemble_inputs"]["mask_logits"]
    assert img.tensors["mask_logits"].dtype == torch.float32
    assert torch.equal(img.tensors["mask_logits"], ref.half().float())
    assert not torch.equal(img.tensors["mask_logits"], ref)


@pytest.mark.parametrize(
    "change,named",
    [
        ({"model": "other"}, "model"),
        ({"databases": {"primary": "db2"}}, "databases"),
        ({"vocabulary": "v2"}, "vocabulary"),
    ],
)
def test_stale_cache_is_refused_naming_what_differs(full_cache, change, named):
    cache_dir, _ = full_cache
    with pytest.raises(StaleCacheError, match=rf"{named}: cached .*, now"):
        ScoreCache(cache_dir, expected_fingerprint={**FINGERPRINT, **change})


def test_writer_refuses_to_extend_a_cache_of_another_model(dataset, full_cache):
    cache_dir, _ = full_cache
    writer = _writer(cache_dir, dataset, fingerprint={**FINGERPRINT, "vocabulary": "v2"})
    with pytest.raises(StaleCacheError, match="fingerprint.vocabulary"):
        writer.reset()


def test_missing_ensemble_inputs_and_bad_mask_size_are_errors(dataset, tmp_path):
    writer = _writer(tmp_path, dataset)
    writer.reset()
    inp, out = _pairs(dataset)[0]
    with pytest.raises(KeyError, match="return_ensemble_inputs"):
        writer.process([inp], [{}])
    bad = dict(out["ensemble_inputs"], image_size=(10_000, 10))
    with pytest.raises(ValueError, match="padded input at least as large as the image"):
        writer.process([inp], [{"ensemble_inputs": bad}])
    no_pad = {k: v for k, v in out["ensemble_inputs"].items() if k != "padded_size"}
    with pytest.raises(KeyError, match="padded_size"):
        writer.process([inp], [{"ensemble_inputs": no_pad}])


def test_partial_cache_uses_finished_images_and_reports_the_rest(dataset, tmp_path):
    pairs = _pairs(dataset)
    # A run killed after 3 images: one shard of 2 is on disk, the third image was pending, and a
    # shard being written at the kill left its temporary file.
    _write(tmp_path, dataset, pairs[:3], finish=False)
    (tmp_path / "shards" / ".r0-00001.safetensors.tmp").write_bytes(b"\0" * 10)
    cache = ScoreCache(str(tmp_path))
    expected = [inp["image_id"] for inp, _ in pairs]
    assert sorted(cache.image_ids) == sorted(expected[:2])
    assert cache.missing_image_ids == expected[2:]
    summary = cache.summary()
    assert "2 of 4 images" in summary and str(expected[3]) in summary and ".tmp" in summary
    rows = SweepRunner(str(tmp_path), str(tmp_path / "out"), mode="arithmetic").run(
        [GridPoint(0.4, 0.7, 0.3)]
    )
    assert rows[0]["num_images"] == 2 and rows[0]["PQ"] >= 0
    with pytest.raises(ValueError, match="partial"):
        SweepRunner(
            str(tmp_path),
            str(tmp_path / "out2"),
            mode="arithmetic",
            backend="reference",
            cfg=object(),
        )


def test_grid_values_outside_unit_interval_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"beta value 1.5 is outside \[0, 1\]"):
        parse_values("0.7,1.5", "beta")
    with pytest.raises(ValueError, match=r"gamma value -0.1 is outside"):
        make_grid("0.4", "0.7", "0.3,-0.1")
    with pytest.raises(ValueError, match="alpha value"):
        GridPoint(1.2, 0.5, 0.5)
    grid = tmp_path / "grid.yaml"
    grid.write_text("points:\n  - [0.4, 0.7, 0.3]\n  - [0.4, 2.0, 0.3]\n")
    with pytest.raises(ValueError, match=r"points\[1\]\.b value 2.0"):
        load_grid_file(str(grid))
    grid.write_text(
        "alpha: [0.3, 0.4]\nbeta: [0.7]\ngamma: [0.0, 0.3]\npoints:\n  - [1.0, 1.0, 0.3]\n"
    )
    assert len(load_grid_file(str(grid))) == 5
    assert len(make_grid("0.3,0.4", "0.7", "0.0,0.3", str(grid))) == 5  # duplicates merged


def test_sweep_resumes_and_refuses_other_backends_results(full_cache, tmp_path):
    cache_dir, _ = full_cache
    out = str(tmp_path / "out")
    first = SweepRunner(cache_dir, out, mode="arithmetic").run(
        [GridPoint(0.4, 0.7, 0.3), GridPoint(1.0, 1.0, 0.0)]
    )
    assert len(first) == 2
    second = SweepRunner(cache_dir, out, mode="arithmetic").run(
        [GridPoint(0.4, 0.7, 0.3), GridPoint(1.0, 1.0, 0.0), GridPoint(0.0, 0.0, 0.5)]
    )
    dump = lambda rows: json.dumps(rows, sort_keys=True)  # NaN-safe comparison
    assert len(second) == 3 and dump(second[:2]) == dump(
        first
    )  # read back (same seconds), not re-run
    assert len(read_rows(os.path.join(out, "sweep.jsonl"))) == 3
    with open(os.path.join(out, "sweep.csv")) as f:
        assert len(f.read().strip().splitlines()) == 4
    # Different points give different metrics: alpha = beta = 0 is the in-vocabulary classifier alone.
    assert dump(second[2]["results"]) != dump(second[0]["results"])
    with pytest.raises(StaleCacheError, match="backend"):
        SweepRunner(cache_dir, out, mode="arithmetic", backend="reference", cfg=object()).run(
            [GridPoint(0.4, 0.7, 0.3)]
        )
    meta = json.load(open(os.path.join(out, "sweep_meta.json")))
    assert meta["fingerprint"] == FINGERPRINT


@pytest.mark.slow  # spawned workers import detectron2 and retclip (~30 s each on a busy 2-core machine)
def test_parallel_workers_give_the_same_rows(full_cache, tmp_path):
    cache_dir, _ = full_cache
    points = [GridPoint(0.4, 0.7, 0.3), GridPoint(0.2, 0.9, 0.6)]
    serial = SweepRunner(cache_dir, str(tmp_path / "a"), mode="geometric").run(points)  # one pass
    parallel = SweepRunner(
        cache_dir, str(tmp_path / "b"), mode="geometric", workers=2, points_per_pass=1
    ).run(points)
    key = lambda r: (r["alpha"], r["beta"], r["gamma"])
    for a, b in zip(sorted(serial, key=key), sorted(parallel, key=key)):
        assert json.dumps(a["results"], sort_keys=True) == json.dumps(b["results"], sort_keys=True)


def test_stored_mask_summaries_equal_what_the_sweep_computes(full_cache):
    """The writer stores per-query values derived from the full-resolution masks (own areas, tile
    bounds, mean probability inside the instance masks, the instance masks' RLEs); each equals
    what the sweep computes from the cached logits when they are absent, bit for bit (the RLEs
    decoded with pycocotools against the binarised masks)."""
    from pycocotools import mask as mask_utils

    from retclip.sweep.cache import SUMMARY_TENSOR_FIELDS, CachedImage
    from retclip.sweep.recombine import instance_rles, postprocess_settings, prepare_masks

    cache_dir, _ = full_cache
    cache = ScoreCache(cache_dir)
    settings = postprocess_settings(cache.manifest)
    for image in cache:
        assert set(SUMMARY_TENSOR_FIELDS) <= set(image.tensors)
        info = image.info
        bare = {k: v for k, v in image.tensors.items() if k not in SUMMARY_TENSOR_FIELDS}
        fresh = prepare_masks(CachedImage(info=info, tensors=bare), settings)  # computes all
        restored = prepare_masks(image, settings)
        # taken from the cache, not computed: already there before first use
        assert {"own_area", "tile_bounds"} <= set(vars(restored)) and restored._inside
        assert torch.equal(restored.own_area, fresh.own_area)
        assert torch.equal(image.tensors["mask_own_area"], fresh.own_area)
        for got, want in zip(restored.tile_bounds, fresh.tile_bounds):
            assert torch.equal(got, want)
        queries = torch.arange(Q)
        assert torch.equal(restored.inside(queries), fresh.inside(queries))
        assert torch.equal(image.tensors["mask_inside"], fresh.inside(queries))
        rles = instance_rles(image, restored)(list(range(Q)))
        decoded = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
        assert decoded.shape == (Q, info["height"], info["width"])
        assert torch.equal(torch.from_numpy(decoded), fresh.logits > 0)


def test_cache_without_mask_summaries_sweeps_to_the_same_rows(full_cache, tmp_path):
    """A cache written before the summaries existed (or stripped of them) is still read; the
    sweep computes them and its rows equal those from the cache that stores them."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from retclip.sweep.cache import SUMMARY_TENSOR_FIELDS

    cache_dir, _ = full_cache
    bare = tmp_path / "bare"
    shutil.copytree(cache_dir, bare)
    for name in os.listdir(bare / "shards"):
        path = str(bare / "shards" / name)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
            kept = {
                k: f.get_tensor(k)
                for k in f.keys()
                if k.split(".", 1)[1] not in SUMMARY_TENSOR_FIELDS
            }
        save_file(kept, path, metadata=metadata)
    assert not set(SUMMARY_TENSOR_FIELDS) & set(next(iter(ScoreCache(str(bare)))).tensors)
    points = [GridPoint(0.3, 0.6, 0.2), GridPoint(0.8, 0.1, 0.9)]
    rows = {}
    for label, directory in (("stored", cache_dir), ("bare", str(bare))):
        runner = SweepRunner(directory, str(tmp_path / label), mode="arithmetic")
        rows[label] = [r["results"] for r in runner.run(points)]
    # (as JSON: classes without ground truth are NaN on both sides)
    assert json.dumps(rows["stored"], sort_keys=True) == json.dumps(rows["bare"], sort_keys=True)
    assert any(r["segm"] for r in rows["stored"])  # instance masks were scored


def test_damaged_mask_summaries_are_named(full_cache):
    """A stored summary of the wrong shape, or RLE offsets that do not index the stored bytes,
    is an error naming the image and the field, not masks silently taken from elsewhere."""
    from retclip.sweep.recombine import instance_rles, postprocess_settings, prepare_masks
    from retclip.utils.errors import BadFileError

    cache_dir, _ = full_cache
    cache = ScoreCache(cache_dir)
    settings = postprocess_settings(cache.manifest)
    image = next(iter(cache))
    image_id = image.info["image_id"]
    wrong = dict(image.tensors, mask_own_area=image.tensors["mask_own_area"][:-1])
    with pytest.raises(ValueError, match=rf"image {image_id}: own_area has shape"):
        prepare_masks(type(image)(info=image.info, tensors=wrong), settings)
    prepared = prepare_masks(image, settings)
    offsets = image.tensors["mask_rle_offsets"].clone()
    offsets[-1] += 5
    torn = type(image)(info=image.info, tensors=dict(image.tensors, mask_rle_offsets=offsets))
    with pytest.raises(BadFileError, match=rf"image {image_id}: instance mask RLE offsets"):
        instance_rles(torn, prepared)
