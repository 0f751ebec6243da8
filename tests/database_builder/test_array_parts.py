"""Array-job parts joined equal a single build; a rerun job touches only its own part; the
webdataset source gives the rows a folder source gives."""
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from retclip.testing.database import TINY_BUILD_CONFIG, tiny_build_cfg
from retclip.database_builder import (
    FolderSource,
    WebDatasetSource,
    build_database_builder,
    build_source,
    finalize_parts,
)
from retclip.retrieval import FeatureDatabase
from retclip.retrieval.labels import LABELS_FILE

REPO = Path(__file__).resolve().parents[2]
CONFIG = TINY_BUILD_CONFIG


def _cfg(out, clip_file, **extra):
    opts = {
        "DATABASE_BUILD.OUTPUT_DIR": str(out),
        "DATABASE_BUILD.SOURCE.DATASET": "retclip_synthetic_train",
        "MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS": clip_file,
        "INPUT.MIN_SIZE_TEST": "96",
        "DATABASE_BUILD.SOURCE.MAX_IMAGES": "7",
        "DATABASE_BUILD.SHARD_SIZE": "1",
    }
    opts.update({k: str(v) for k, v in extra.items()})
    return tiny_build_cfg([x for kv in opts.items() for x in kv])


def _build(cfg):
    return build_database_builder(cfg, progress=False).build(build_source(cfg))


def _files(folder: Path):
    """path -> (inode, mtime_ns, bytes) of every file under ``folder``."""
    return {
        p: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_clip_file):
    out = tmp_path_factory.mktemp("single") / "db"
    _build(_cfg(out, tiny_clip_file))
    return FeatureDatabase.open(out)


@pytest.mark.slow
def test_three_parts_joined_equal_a_single_build(tmp_path, tiny_clip_file, single):
    out = tmp_path / "db"
    for k in (2, 0, 1):  # finish order must not matter
        part = _build(_cfg(out, tiny_clip_file, **{
            "DATABASE_BUILD.ARRAY_JOB.SHARD_ID": k, "DATABASE_BUILD.ARRAY_JOB.NUM_SHARDS": 3}))
        assert part is not None  # each part finishes on its own
    assert sorted(p.name for p in (out / "parts").iterdir()) == [
        "part-00000-of-00003", "part-00001-of-00003", "part-00002-of-00003"]
    joined = finalize_parts(str(out))
    a, b = joined.load_all(), single.load_all()
    assert joined.shard_names == single.shard_names
    assert a.features.tobytes() == b.features.tobytes() and a.features.shape == b.features.shape
    assert a.labels.tobytes() == b.labels.tobytes()
    assert a.image_ids == b.image_ids
    for name in single.shard_names:  # shard files byte for byte
        rel = Path("shards") / f"{name}.safetensors"
        assert (out / rel).read_bytes() == (single.path / rel).read_bytes()
    np.testing.assert_array_equal(np.load(out / LABELS_FILE), b.labels)
    report = json.loads((out / "build" / "report.json").read_text())
    assert report["images"]["ok"] == 7 and report["vectors"] == len(single)
    with pytest.raises(ValueError, match="already holds a joined database"):
        finalize_parts(str(out))


@pytest.mark.slow
def test_killed_job_rerun_rewrites_only_its_own_part(tmp_path, tiny_clip_file):
    out = tmp_path / "db"
    job = {"DATABASE_BUILD.ARRAY_JOB.NUM_SHARDS": 3}
    for k in (0, 2):
        _build(_cfg(out, tiny_clip_file, **job, **{"DATABASE_BUILD.ARRAY_JOB.SHARD_ID": k}))
    # job 1 "killed" after its first shard (MAX_SHARDS_PER_RUN stops it as a kill would)
    stopped = _build(_cfg(out, tiny_clip_file, **job, **{
        "DATABASE_BUILD.ARRAY_JOB.SHARD_ID": 1, "DATABASE_BUILD.MAX_SHARDS_PER_RUN": 1}))
    assert stopped is None
    with pytest.raises(ValueError, match="unfinished"):
        finalize_parts(str(out))
    parts = out / "parts"
    others = {k: _files(parts / f"part-0000{k}-of-00003") for k in (0, 2)}
    first_shard = parts / "part-00001-of-00003" / "shards" / "part000001-000000.safetensors"
    before = (first_shard.stat().st_ino, first_shard.stat().st_mtime_ns)
    _build(_cfg(out, tiny_clip_file, **job, **{"DATABASE_BUILD.ARRAY_JOB.SHARD_ID": 1}))
    for k in (0, 2):
        assert _files(parts / f"part-0000{k}-of-00003") == others[k]
    assert (first_shard.stat().st_ino, first_shard.stat().st_mtime_ns) == before
    assert len(finalize_parts(str(out))) > 0


def _write_tars(image_dir: Path, labels: dict, out: Path, per_tar: int, txt: bool) -> str:
    names = sorted(labels)
    for t in range(0, len(names), per_tar):
        with tarfile.open(out / f"shard-{t // per_tar:03d}.tar", "w") as tar:
            for name in names[t : t + per_tar]:
                key = Path(name).stem
                label_bytes = (";".join(labels[name]) if txt else json.dumps(
                    {"labels": labels[name]})).encode()
                for ext, data in ((Path(name).suffix[1:], (image_dir / name).read_bytes()),
                                  ("txt" if txt else "json", label_bytes)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(out / ("shard-{000..%03d}.tar" % ((len(names) - 1) // per_tar)))


@pytest.mark.parametrize("txt", [False, True])
def test_webdataset_records_equal_the_files(tmp_path, folder_labels, txt):
    image_dir, labels = folder_labels(tmp_path / "src", num_images=5, seed=4)
    urls = _write_tars(Path(image_dir), labels, tmp_path, per_tar=2, txt=txt)
    source = WebDatasetSource(urls)
    folder = FolderSource(image_dir, str(_labels_json(tmp_path, labels)))
    assert source.vocabulary == folder.vocabulary
    chunks = source.chunks(shard_size=64)
    assert len(chunks) == 3  # one chunk per tar, whatever SHARD_SIZE
    records = [r for chunk in chunks for r in chunk]
    assert [r.image_id for r in records] == [Path(n).stem for n in sorted(labels)]
    for r, name in zip(records, sorted(labels)):
        assert r.data == (Path(image_dir) / name).read_bytes()
        assert list(r.labels) == sorted(labels[name])


def _labels_json(tmp_path, labels):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(labels))
    return path


def test_webdataset_bad_labels_name_the_tar(tmp_path):
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for name, data in (("a.jpg", b"x"), ("a.json", b'{"tags": ["cat"]}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"bad\.tar: sample a: labels json object has no 'labels'"):
        WebDatasetSource(str(tmp_path / "bad.tar"))


@pytest.mark.slow
def test_webdataset_build_equals_folder_build(tmp_path, folder_labels, tiny_gdino, tiny_sam,
                                              tiny_clip_file):
    """Streamed tar samples give the rows the same images give from files (Grounding DINO + SAM)."""
    from retclip.database_builder import DatabaseBuilder
    from retclip.modeling.segment_embedding import ConvSegmentEmbedding
    from retclip.proposals import GroundingDinoDetector, GroundingDinoSamProposals, SamBoxSegmenter

    image_dir, labels = folder_labels(tmp_path / "src", num_images=3, seed=5)
    urls = _write_tars(Path(image_dir), labels, tmp_path, per_tar=2, txt=False)
    encoder = ConvSegmentEmbedding.from_names("retclip-tiny-convnext", tiny_clip_file, min_size=128,
                                              max_size=400)
    detector = GroundingDinoDetector(*tiny_gdino, box_threshold=0.3, text_threshold=0.0,
                                     max_detections=5)
    proposals = GroundingDinoSamProposals(detector=detector, segmenter=SamBoxSegmenter(tiny_sam))
    rows = {}
    for kind, source in (("folder", FolderSource(image_dir, str(_labels_json(tmp_path, labels)))),
                         ("webdataset", WebDatasetSource(urls))):
        builder = DatabaseBuilder(encoder=encoder, proposals=proposals, shard_size=2,
                                  output_dir=str(tmp_path / kind), dtype="float32", progress=False)
        builder.build(source)
        rows[kind] = FeatureDatabase.open(tmp_path / kind).load_all()
    a, b = rows["folder"], rows["webdataset"]
    assert len(a) > 0 and a.features.tobytes() == b.features.tobytes()
    assert a.labels.tolist() == b.labels.tolist()
    assert [Path(i).stem for i in a.image_ids] == b.image_ids


@pytest.mark.slow
def test_torchrun_two_ranks_equal_a_single_build(tmp_path, tiny_clip_file, single):
    import subprocess
    import sys

    out = tmp_path / "db"
    opts = ["DATABASE_BUILD.OUTPUT_DIR", str(out), "DATABASE_BUILD.SOURCE.DATASET",
            "retclip_synthetic_train", "MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS", tiny_clip_file,
            "INPUT.MIN_SIZE_TEST", "96", "DATABASE_BUILD.SOURCE.MAX_IMAGES", "7",
            "DATABASE_BUILD.SHARD_SIZE", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "tools" / "build_database.py"), "--config-file", str(CONFIG), *opts],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((out / "build").glob("log_rank1*"))  # the second process was rank 1
    a, b = FeatureDatabase.open(out).load_all(), single.load_all()
    # same rows in the same order; features up to float rounding (another thread count here)
    assert a.image_ids == b.image_ids and a.labels.tobytes() == b.labels.tobytes()
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)
